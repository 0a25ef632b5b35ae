"""The start-up hook: cheap, idempotent, silent when the package is gone, wired into the host."""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, run

SITE = Path(sysconfig.get_paths()["purelib"])
#: what the editable install adds to site-packages (setup.py's EditableWheel)
EDITABLE_FILES = ["_unigap_editable.py", "unigap.pth"]
#: what its start-up may import: the editable finder, the package and the hook; nothing else
STARTUP_MODULES = {"_unigap_editable", "unigap", "unigap._bootstrap"}


def _installed() -> metadata.Distribution:
    """unigap as installed in this venv (not the unigap.egg-info a build leaves in the checkout)."""
    return next(metadata.distributions(name="unigap", path=[str(SITE)]))


def _editable() -> bool:
    """Whether this venv's unigap is an editable install (``make setup``: ``pip install -e``)."""
    direct_url = _installed().read_text("direct_url.json") or "{}"
    return bool(json.loads(direct_url).get("dir_info", {}).get("editable"))


editable_only = pytest.mark.skipif(not _editable(), reason="unigap is not installed editable in this venv")


def _py(code: str, env=None, args=()):
    return run([sys.executable, *args, "-c", code], env=env)


def test_startup_installs_the_finder_and_imports_nothing_heavy():
    proc = _py(
        "import sys, json; print(json.dumps({'mods': sorted(sys.modules), "
        "'finders': [type(f).__name__ for f in sys.meta_path]}))"
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["finders"].count("UnigapFinder") == 1
    heavy = [m for m in state["mods"] if m.split(".")[0] in {"torch", "transformers", "llamafactory", "numpy"}]
    assert heavy == [], heavy
    assert "unigap._bootstrap" in state["mods"] and "unigap.host.llamafactory" not in state["mods"]


def test_disable_env_keeps_the_finder_out():
    proc = _py(
        "import sys; print([type(f).__name__ for f in sys.meta_path].count('UnigapFinder'))",
        env={"UNIGAP_DISABLE": "1"},
    )
    assert proc.stdout.strip() == "0", proc.stderr


def test_pth_line_is_idempotent():
    line = (SITE / "unigap.pth").read_text()
    proc = _py(f"exec({line!r}); exec({line!r}); import sys; print([type(f).__name__ for f in sys.meta_path])")
    assert proc.returncode == 0 and proc.stdout.count("UnigapFinder") == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("UnigapEditableFinder") == (1 if _editable() else 0), proc.stdout


def test_removed_package_prints_nothing(tmp_path):
    """A leftover .pth whose package is gone must not print a traceback at every start."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(SITE / "unigap.pth", site_dir)
    # -S: no site-packages, so `unigap` cannot be imported; then process our site dir like site.py does
    proc = run([sys.executable, "-S", "-c", f"import site; site.addsitedir({str(site_dir)!r}); print('ok')"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"
    assert proc.stderr == "", proc.stderr


def test_hooked_modules_are_the_bridge_handlers():
    from unigap import _bootstrap
    from unigap.host import llamafactory as bridge

    assert set(_bootstrap.HOOKED) == set(bridge.HANDLERS)


@pytest.mark.e2e
def test_every_hook_fires_inside_the_host():
    code = """
import json, sys
import llamafactory.train.tuner  # imports the whole training stack, as llamafactory-cli train does
from llamafactory.data import template, mm_plugin
from llamafactory.hparams import parser
from llamafactory.model.model_utils import visual
from llamafactory.train.sft import workflow as sft
from llamafactory.train.dpo import trainer as dpo
from llamafactory.model import loader
print(json.dumps({
  "template": type(template.TEMPLATES.get("janus")).__name__,
  "plugin": mm_plugin.PLUGINS.get("unigap_janus").__name__,
  "args": [c.__name__ for c in parser._TRAIN_ARGS],
  "composite": "janus" in visual.COMPOSITE_MODELS,
  "sft": sft.CustomSeq2SeqTrainer.__name__,
  "dpo": dpo.CustomDPOTrainer.__name__,
  "loader": loader.init_adapter.__module__,
}))
"""
    proc = _py(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[unigap]" not in proc.stderr, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state.pop("loader").startswith("unigap.host.llamafactory"), state
    assert state == {
        "template": "UnifiedTemplate",
        "plugin": "UnifiedImagePlugin",
        "args": ["ModelArguments", "DataArguments", "TrainingArguments", "UnigapFinetuningArguments",
                 "GeneratingArguments"],
        "composite": True,
        "sft": "UnifiedSeq2SeqTrainer",
        "dpo": "UnifiedDPOTrainer",
    }


@pytest.mark.e2e
def test_lazily_built_host_classes_pickle_by_reference():
    """datasets' multiprocessing and dill fingerprints pickle the template and its plugin."""
    dump = "import base64, pickle, llamafactory.data.template as t; print(base64.b64encode(pickle.dumps(t.TEMPLATES['janus'])).decode())"
    proc = _py(dump)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blob = proc.stdout.strip().splitlines()[-1]
    load = f"import base64, pickle; t = pickle.loads(base64.b64decode({blob!r})); print(type(t).__module__, type(t).__name__, type(t.mm_plugin).__name__)"
    proc = _py(load)  # a fresh process: the classes are found again by their module and name
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, names = proc.stdout.split()[0], proc.stdout.split()[1:]
    assert module.startswith("unigap.host.llamafactory") and names == ["UnifiedTemplate", "UnifiedImagePlugin"]


@pytest.mark.e2e
def test_wheel_ships_the_pth_hook(tmp_path):
    """A regular (non-editable) install gets the same hook from the wheel."""
    proc = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(tmp_path.glob("unigap-*.whl"))
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(target)
    assert "unigap.pth" in names and "_unigap_editable.py" not in names
    # every package folder of the checkout is in the wheel, without a list to maintain
    for root, prefix in (("plugin", "unigap"), ("data_builders", "unigap/data_builders")):
        for init in (ROOT / root).rglob("__init__.py"):
            assert f"{prefix}/{init.relative_to(ROOT / root).as_posix()}" in names, init
    assert "unigap/host/llamafactory/__init__.py" in names and "unigap/data_builders/build.py" in names
    assert any(n.endswith("RECORD") for n in names)
    record = next(n for n in names if n.endswith("RECORD"))
    assert "unigap.pth" in (target / record).read_text(), "pip uninstall must remove the .pth too"
    proc = run(
        [sys.executable, "-S", "-c",
         f"import site; site.addsitedir({str(target)!r}); import sys, unigap; "
         "print(unigap.__file__, [type(f).__name__ for f in sys.meta_path].count('UnigapFinder'))"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    path, count = proc.stdout.split()
    assert path.startswith(str(target)) and count == "1"


# --- the editable install (`make setup`: pip install -e .) -------------------------------------------------------


def _importtime_rows(stderr: str) -> list:
    """``-X importtime`` lines as (depth, module), in the printed order (children before their parent)."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "[us]" not in line:
            name = line.split("|")[2]
            rows.append(((len(name) - len(name.lstrip(" "))) // 2, name.strip()))
    return rows


@editable_only
def test_editable_install_is_unigaps_own_finder():
    """Not setuptools' generic editable finder (a __editable__ .pth + module importing pathlib: ~12 ms a start)."""
    record = _installed().files
    at_site_root = sorted(str(f) for f in record if "/" not in str(f) and not str(f).startswith(".."))
    assert at_site_root == EDITABLE_FILES, at_site_root
    assert not [p.name for p in SITE.iterdir() if p.name.startswith("__editable__") and "unigap" in p.name]


@editable_only
def test_editable_startup_imports_nothing_heavy():
    """-X importtime: what unigap imports at start-up is unigap's own three modules, nothing under them."""
    proc = run([sys.executable, "-X", "importtime", "-c", "pass"])
    assert proc.returncode == 0, proc.stderr
    rows = _importtime_rows(proc.stderr)
    names = {name for _, name in rows}
    assert STARTUP_MODULES <= names, sorted(names)
    for i, (depth, name) in enumerate(rows):
        if "unigap" not in name:
            continue
        below, j = [], i - 1
        while j >= 0 and rows[j][0] > depth:
            below.append(rows[j][1])
            j -= 1
        assert set(below) <= STARTUP_MODULES, f"{name} imported {below} at start-up"
    heavy = {"pathlib", "importlib.util", "importlib.machinery", "importlib.metadata", "setuptools", "fnmatch", "re"}
    assert not any("__editable__" in name and "unigap" in name for name in names), sorted(names)
    # and what processing unigap's .pth adds to an interpreter started without it: exactly its three modules
    code = (
        "import site, sys\n"
        f"sys.path.append({str(SITE)!r})\n"
        "before = set(sys.modules)\n"
        f"site.addpackage({str(SITE)!r}, 'unigap.pth', set())\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    for env in (None, {"UNIGAP_DISABLE": "1"}):
        proc = run([sys.executable, "-S", "-c", code], env=env)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        added = set(proc.stdout.split())
        assert added == STARTUP_MODULES and not added & heavy, (env, sorted(added))


@editable_only
def test_editable_import_roots_are_the_checkout(tmp_path):
    """unigap -> plugin/, unigap.data_builders -> data_builders/, sub-packages through __path__; the checkout
    wins over a `unigap` folder in the working directory; UNIGAP_DISABLE=1 turns off the hook, not the package."""
    (tmp_path / "unigap").mkdir()
    (tmp_path / "unigap" / "__init__.py").write_text("raise RuntimeError('the decoy was imported')\n")
    code = (
        "import json, importlib.util, sys, unigap, unigap.host, unigap.data_builders\n"
        "print(json.dumps({'unigap': unigap.__path__, 'host': unigap.host.__file__,\n"
        "  'data_builders': unigap.data_builders.__path__,\n"
        "  'bridge': importlib.util.find_spec('unigap.host.llamafactory').origin,\n"
        "  'build': importlib.util.find_spec('unigap.data_builders.build').origin,\n"
        "  'hook': [type(f).__name__ for f in sys.meta_path].count('UnigapFinder')}))\n"
    )
    for env, hook in ((None, 1), ({"UNIGAP_DISABLE": "1"}, 0)):
        proc = run([sys.executable, "-c", code], cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "unigap": [str(ROOT / "plugin")],
            "host": str(ROOT / "plugin" / "host" / "__init__.py"),
            "data_builders": [str(ROOT / "data_builders")],
            "bridge": str(ROOT / "plugin" / "host" / "llamafactory" / "__init__.py"),
            "build": str(ROOT / "data_builders" / "build.py"),
            "hook": hook,
        }


@editable_only
def test_editable_install_with_its_checkout_gone_is_silent(tmp_path):
    """The installed files, pointing at a checkout that was deleted: no output at start, `unigap` not importable."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    for name in EDITABLE_FILES:
        text = (SITE / name).read_text()
        assert name == "unigap.pth" or str(ROOT) in text
        (site_dir / name).write_text(text.replace(str(ROOT), str(tmp_path / "gone")))
    code = (
        f"import site; site.addsitedir({str(site_dir)!r}); print('ok')\n"
        "try:\n    import unigap\nexcept ModuleNotFoundError:\n    print('gone')\n"
    )
    proc = run([sys.executable, "-S", "-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "gone"], proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr


@pytest.mark.e2e
def test_editable_build_finds_new_modules_without_reinstall(tmp_path):
    """Build the editable wheel of a copy of the project, install its files, then add a module and a
    sub-package to the copy: both import at once; with the copy gone, start-up stays silent."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project)
    for name in ("plugin", "data_builders"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(wheels)!r})"],
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    site_dir = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("unigap-*.editable-*.whl"))) as archive:
        assert sorted(n for n in archive.namelist() if "/" not in n) == EDITABLE_FILES
        archive.extractall(site_dir)
    assert "pathlib" not in (site_dir / "_unigap_editable.py").read_text()

    (project / "plugin" / "added_later.py").write_text("VALUE = 'module'\n")
    (project / "plugin" / "newpkg" / "deep").mkdir(parents=True)
    (project / "plugin" / "newpkg" / "__init__.py").write_text("")
    (project / "plugin" / "newpkg" / "deep" / "__init__.py").write_text("VALUE = 'package'\n")
    (project / "data_builders" / "added_later.py").write_text("VALUE = 'builder'\n")
    code = (
        f"import site; site.addsitedir({str(site_dir)!r})\n"
        "import sys, unigap.added_later, unigap.newpkg.deep, unigap.data_builders.added_later as b\n"
        "print(unigap.__file__, unigap.added_later.VALUE, unigap.newpkg.deep.VALUE, b.VALUE,\n"
        "      [type(f).__name__ for f in sys.meta_path].count('UnigapFinder'))\n"
    )
    proc = run([sys.executable, "-S", "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(project / "plugin" / "__init__.py"), "module", "package", "builder", "1"]

    shutil.rmtree(project)
    proc = run([sys.executable, "-S", "-c", f"import site; site.addsitedir({str(site_dir)!r}); print('ok')"],
               cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok" and proc.stderr == "", proc.stdout + proc.stderr
