"""Build hooks: the package layout, and ``unigap.pth`` so an unmodified ``llamafactory-cli`` loads the plugin.

The metadata lives in setup.cfg; this file owns what needs code:

* **Layout.**  One import root, ``unigap``, mapped from the repository's
  top-level folders (:data:`ROOTS`).  Every sub-package under them (a folder
  with an ``__init__.py``) is found by :func:`setuptools.find_packages`, so a
  new folder needs no edit here.

* **The start-up hook.**  Regular wheels ship ``unigap.pth`` at the root of
  site-packages; its single line imports ``unigap._bootstrap`` (stdlib only)
  and is guarded so that a removed package never prints a traceback at
  interpreter start.

* **A cheap editable install.**  For ``pip install -e .`` setuptools would
  install its generic editable finder (a ``__editable__.*.pth`` plus a finder
  module importing ``pathlib``, ``importlib.util`` and friends: 12 ms or more
  at *every* interpreter start in the venv).  :class:`EditableWheel` replaces
  it: the editable wheel holds ``unigap.pth`` (guarded, as above) and
  ``_unigap_editable.py``, a small module that puts a finder for the import
  roots only (``unigap`` -> ``plugin/``, ``unigap.data_builders`` ->
  ``data_builders/``) on ``sys.meta_path`` and then installs the hook.  It
  imports nothing that is not already loaded at start-up.  Everything below
  a root is found through the package's ``__path__``, so new modules and
  sub-packages work without a reinstall; only a new root (a setup.py change,
  which the Makefile's install stamp depends on) needs one.
  ``--config-settings editable_mode=strict`` keeps setuptools' link tree
  (then new files do need a reinstall).
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))

#: import root -> folder of the repository it is built from (setuptools' ``package_dir``).
ROOTS = {"unigap": "plugin", "unigap.data_builders": "data_builders"}

PTH_NAME = "unigap.pth"

# The hook, common to both installs: never raises (a removed package stays silent).
_HOOK = """\
try:
    import unigap._bootstrap as _u
    _u.install()
except Exception:
    pass
"""

#: the module the editable install adds to site-packages, imported by its ``unigap.pth``
EDITABLE_MODULE = "_unigap_editable"

# Its source.  Runs inside site.py, before anything else of unigap: only sys, os.path
# and the frozen importlib, all loaded at start-up; pip compiles it to a .pyc at install.
_EDITABLE_SOURCE = '''\
"""unigap's editable install (``pip install -e .``): imported by ``unigap.pth`` at interpreter start.

Written by unigap's setup.py.  Maps unigap's import roots onto the checkout
(``ROOTS``); everything below a root is found through the package's
``__path__``, so new modules need no reinstall.  Then installs the start-up
hook (``unigap._bootstrap``).  A checkout that is gone leaves ``unigap``
unimportable (ModuleNotFoundError), silently.
"""

import sys
from os.path import isfile

try:
    from _frozen_importlib_external import spec_from_file_location
except ImportError:  # not CPython
    from importlib.util import spec_from_file_location

ROOTS = {roots!r}


class UnigapEditableFinder:
    """Meta-path finder for the names in ROOTS only (the import roots)."""

    def find_spec(self, fullname, path=None, target=None):
        folder = ROOTS.get(fullname)
        if folder is None or not isfile(folder + "/__init__.py"):
            return None
        return spec_from_file_location(fullname, folder + "/__init__.py", submodule_search_locations=[folder])


def install():
    if not any(isinstance(finder, UnigapEditableFinder) for finder in sys.meta_path):
        # ahead of the path finder: the checkout wins, and no sys.path entry is scanned for it
        sys.meta_path.insert(0, UnigapEditableFinder())
    try:
        import unigap._bootstrap as hook
    except ImportError:
        return
    hook.install()


install()
'''


def _pth_line(code: str) -> str:
    """One ``.pth`` line (site.py executes lines that start with ``import``) running ``code``."""
    return f"import sys; exec({code!r})\n"


def hook_pth() -> str:
    return _pth_line(_HOOK)


def editable_pth() -> str:
    return _pth_line(f"try:\n    import {EDITABLE_MODULE}\nexcept Exception:\n    pass\n")


def editable_module(roots: dict) -> str:
    return _EDITABLE_SOURCE.format(roots=roots)


def discover_packages() -> list:
    """Every package under the import roots, with its dotted name (``unigap.host.llamafactory``)."""
    packages = []
    for name, folder in ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(os.path.join(HERE, folder))]
    return sorted(set(packages))


def _source_dir(package: str, package_dir: dict, project_dir: str) -> str:
    """The folder a package is built from, as setuptools resolves ``package_dir`` (longest prefix)."""
    parts = package.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return os.path.normpath(os.path.join(project_dir, package_dir[prefix], *parts[i:]))
    return os.path.normpath(os.path.join(project_dir, *parts))


def import_roots(packages, package_dir: dict, project_dir: str) -> dict:
    """The packages a finder must map: those not found as a folder of their parent package."""
    dirs = {pkg: _source_dir(pkg, package_dir, project_dir) for pkg in packages}
    roots = {}
    for pkg in sorted(dirs):
        parent, _, leaf = pkg.rpartition(".")
        if parent in dirs and dirs[pkg] == os.path.join(dirs[parent], leaf):
            continue
        roots[pkg] = dirs[pkg].replace(os.sep, "/")
    return roots


#: whether this setuptools has the (private) method EditableWheel overrides; if a future one has not,
#: editable installs fall back to setuptools' own finder plus the hook's ``unigap.pth`` (slower, but working)
OWN_EDITABLE_STRATEGY = callable(getattr(editable_wheel, "_select_strategy", None))


class BuildPyWithPth(build_py):
    """Regular builds: ``unigap.pth`` next to the package (editable ones get theirs from EditableWheel)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            dest = self.build_lib
        elif not OWN_EDITABLE_STRATEGY:  # editable wheels are assembled from the install directory
            dest = self.get_finalized_command("install").install_lib
        else:
            return
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, PTH_NAME), "w", encoding="utf-8") as handle:
            handle.write(hook_pth())

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [os.path.join(self.build_lib, PTH_NAME)]


class _EditableFiles:
    """Editable strategy (setuptools' ``EditableStrategy`` protocol): writes ``files`` into the wheel."""

    def __init__(self, files: dict, inner=None):
        self.files = files  # name at the root of site-packages -> text
        self.inner = inner  # setuptools' own strategy, kept in strict mode

    def __call__(self, wheel, files, mapping):
        if self.inner is not None:
            self.inner(wheel, files, mapping)
        for name, text in self.files.items():
            wheel.writestr(name, text.encode("utf-8"))

    def __enter__(self):
        if self.inner is not None:
            self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        if self.inner is not None:
            return self.inner.__exit__(*exc)
        return None


class EditableWheel(editable_wheel):
    """``pip install -e .``: our own cheap import-root finder instead of setuptools' generic one."""

    def _select_strategy(self, name, tag, build_lib):
        if (self.mode or "").lower() == "strict":  # link tree (new files need a reinstall) + the hook
            return _EditableFiles({PTH_NAME: hook_pth()}, inner=super()._select_strategy(name, tag, build_lib))
        dist = self.distribution
        roots = import_roots(dist.packages or [], dist.package_dir or {}, os.path.abspath(self.project_dir))
        return _EditableFiles({PTH_NAME: editable_pth(), f"{EDITABLE_MODULE}.py": editable_module(roots)})


setup(
    package_dir=dict(ROOTS),
    packages=discover_packages(),
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheel},
)
