"""ShapesWorld: a seeded miniature world with an exact pixel oracle (see :mod:`.world`).

The tiny model trained on it (``scripts/train_default.py``) is unigap's embedded default.
"""
