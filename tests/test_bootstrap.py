"""The start-up hook: cheap, idempotent, silent when the package is gone, wired into the host."""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, run

SITE = Path(sysconfig.get_paths()["purelib"])


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
    assert "unigap._bootstrap" in state["mods"] and "unigap.bridge" not in state["mods"]


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
    from unigap import _bootstrap, bridge

    assert set(_bootstrap.HOOKED) == set(bridge._HANDLERS)


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
    assert state == {
        "template": "UnifiedTemplate",
        "plugin": "UnifiedImagePlugin",
        "args": ["ModelArguments", "DataArguments", "TrainingArguments", "UnigapFinetuningArguments",
                 "GeneratingArguments"],
        "composite": True,
        "sft": "UnifiedSeq2SeqTrainer",
        "dpo": "UnifiedDPOTrainer",
        "loader": "unigap.bridge",
    }


def test_lazily_built_host_classes_pickle_by_reference():
    """datasets' multiprocessing and dill fingerprints pickle the template and its plugin."""
    dump = "import base64, pickle, llamafactory.data.template as t; print(base64.b64encode(pickle.dumps(t.TEMPLATES['janus'])).decode())"
    proc = _py(dump)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blob = proc.stdout.strip().splitlines()[-1]
    load = f"import base64, pickle; t = pickle.loads(base64.b64decode({blob!r})); print(type(t).__module__, type(t).__name__, type(t.mm_plugin).__name__)"
    proc = _py(load)  # a fresh process: the classes are rebuilt through unigap.bridge.__getattr__
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["unigap.bridge", "UnifiedTemplate", "UnifiedImagePlugin"]


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
    assert "unigap.pth" in names and "unigap/bridge.py" in names and "unigap/data_builders/sharegpt.py" in names
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
