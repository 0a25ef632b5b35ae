"""Hosts: the training frameworks unigap plugs into, one folder each.

Only the folders under here import a host (``llamafactory``) or know its file
formats (``dataset_info.json``, its YAML keys).  Everything else in unigap is
host-neutral; a second host (ms-swift's ``--external_plugins``) would be a
sibling folder of ``llamafactory/``.
"""
