"""Start-up hook that lets an unmodified ``llamafactory-cli`` find unigap.

LLaMA-Factory has no plugin discovery, so the wheel ships ``unigap.pth`` whose
single line calls :func:`install` when the interpreter starts (in every
process: the CLI, torchrun workers, notebooks).  :func:`install` only puts a
small finder at the front of ``sys.meta_path``; the finder does nothing until
one of the LLaMA-Factory modules in :data:`HOOKED` is imported.  Right after
such a module has executed, the host bridge :mod:`unigap.host.llamafactory`
registers unigap's templates, multimodal plugin, arguments and trainers with it.

This module runs in every Python process of the environment, so it imports
nothing but ``os`` and ``sys`` (both already loaded at start-up) and never
imports torch, transformers or LLaMA-Factory itself.  ``UNIGAP_DISABLE=1``
turns the whole plugin off.  (No ``from __future__ import annotations`` here:
that statement imports the ``__future__`` module, a measurable part of the
hook's start-up cost.)
"""

import os
import sys

#: LLaMA-Factory modules unigap extends, in the order the host imports them.
HOOKED = frozenset(
    {
        "llamafactory.data.mm_plugin",
        "llamafactory.data.template",
        "llamafactory.data.processor",
        "llamafactory.data.loader",
        "llamafactory.hparams.parser",
        "llamafactory.model.model_utils.visual",
        "llamafactory.model.loader",
        "llamafactory.train.sft.workflow",
        "llamafactory.train.dpo.trainer",
    }
)

_TRUE = {"1", "true", "yes", "on"}


def disabled() -> bool:
    """Whether ``UNIGAP_DISABLE`` asks for the plugin to stay out of the way."""
    return os.environ.get("UNIGAP_DISABLE", "").strip().lower() in _TRUE


class _AfterExecLoader:
    """Loader proxy: runs the real loader, then hands the module to the bridge."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _on_loaded(module)

    def __getattr__(self, name):  # get_source, get_resource_reader, ...
        return getattr(self._loader, name)


class UnigapFinder:
    """Meta-path finder that only reacts to the modules in :data:`HOOKED`."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOOKED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AfterExecLoader(spec.loader)
        return spec


def _on_loaded(module) -> None:
    try:
        from unigap.host import llamafactory as bridge
    except ImportError:  # the package was removed while the process ran
        return
    bridge.on_host_module_loaded(module)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (the ``.pth`` may run twice)."""
    if disabled() or getattr(sys, "_unigap_finder_installed", False):
        return
    sys.meta_path.insert(0, UnigapFinder())
    sys._unigap_finder_installed = True  # type: ignore[attr-defined]
