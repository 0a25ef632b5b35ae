"""The house rules, checked on the source: layers point down only, no import cycles, one host folder.

Layers, bottom to top (a module may import its own layer and the ones below):

0. formats and utilities: files on disk (codes, runs, row metadata, prompts, samples), errors, seeds,
   statistics, "did you mean", atomic writes
1. model families: ``unigap.models`` (one folder per family)
2. core: self-play, report, build, encode, curriculum, replay, loading, training
3. host: ``unigap.host.<name>`` (the only place that imports the host or knows its files)
4. examples: ``unigap.shapesworld`` (an example world and experiment, used like a user would) and
   ``unigap.loop`` (the loop over rounds: it runs the commands, training only through the host's CLI)
5. entry points: the command line, the start-up hook

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import root -> folder
ROOTS = {"unigap": ROOT / "plugin", "unigap.data_builders": ROOT / "data_builders"}

LAYERS: list[tuple[str, list[str]]] = [
    ("formats", [
        "unigap", "unigap.errors", "unigap.fsutil", "unigap.jsonl", "unigap.suggest", "unigap.seeds",
        "unigap.stats", "unigap.textbpe", "unigap.codes", "unigap.runs", "unigap.rowmeta", "unigap.samples",
        "unigap.prompts", "unigap.lora",
    ]),
    ("families", ["unigap.models"]),
    ("core", [
        "unigap.loading", "unigap.training", "unigap.selfplay", "unigap.report", "unigap.curriculum",
        "unigap.replay", "unigap.data_builders", "unigap.vlm_judge",
    ]),
    ("host", ["unigap.host"]),
    ("examples", ["unigap.shapesworld", "unigap.loop"]),
    ("entry points", ["unigap.cli", "unigap.__main__", "unigap._bootstrap", "unigap.data_builders.cli"]),
]


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out: dict[str, Path] = {}
    for prefix, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if prefix == "unigap" and parts and parts[0] == "data_builders":
                continue
            out[".".join([prefix, *parts])] = path
    return out


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                if prefix == "unigap" and module != "unigap":
                    continue  # the package root only names the root module itself
                best, depth = index, prefix.count(".")
    if best < 0:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS in {__file__}")
    return best


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported unigap module, line) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        for target in targets:
            # the longest known module the name refers to (``from . import x`` may name a module or a symbol)
            name = target
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and target.startswith("unigap"):
                found.append((name, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def back_imports(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    out = []
    for module, targets in edges.items():
        for target, line in targets:
            if target == "unigap":
                continue
            if layer_of(target) > layer_of(module):
                out.append(f"{module}:{line} imports {target} ({LAYERS[layer_of(module)][0]} -> "
                           f"{LAYERS[layer_of(target)][0]})")
    return sorted(set(out))


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` importing its own children excepted)."""
    adjacency = {m: sorted({t for t, _ in ts if not t.startswith(m + ".")}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in adjacency.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(adjacency):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_layers_point_down_only():
    assert back_imports(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_a_back_import_and_a_cycle():
    edges = graph()
    edges["unigap.codes"] = [*edges["unigap.codes"], ("unigap.selfplay", 1)]
    assert back_imports(edges) == ["unigap.codes:1 imports unigap.selfplay (formats -> core)"]
    edges = graph()
    edges["unigap.runs"] = [*edges["unigap.runs"], ("unigap.codes", 1)]
    edges["unigap.codes"] = [*edges["unigap.codes"], ("unigap.runs", 1)]
    assert ["unigap.codes", "unigap.runs"] in cycles(edges)


def _python_files_outside(folder: Path) -> list[Path]:
    return [p for root in ROOTS.values() for p in root.rglob("*.py") if folder not in p.parents]


def test_only_the_host_folder_imports_the_host_or_names_its_files():
    host = ROOTS["unigap"] / "host"
    offenders = []
    for path in _python_files_outside(host):
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(from|import)\s+llamafactory\b", text, re.M) or "dataset_info.json" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("family", ["janus", "showo"])
def test_only_a_family_folder_and_the_examples_name_the_family(family):
    allowed = (ROOTS["unigap"] / "models" / family, ROOTS["unigap"] / "shapesworld")
    offenders = []
    for path in _python_files_outside(allowed[0]):
        if allowed[1] in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # an embedded default model's name (models/shapes-janus) is a path, not family knowledge
            if re.search(family, re.sub(r"shapes-" + family, "", line), re.I):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert offenders == []


@pytest.mark.parametrize("module", ["unigap.cli", "unigap.selfplay", "unigap.data_builders.build"])
def test_commands_never_call_another_commands_main(module):
    path = modules()[module]
    assert "cli import main" not in path.read_text(encoding="utf-8")


def test_commands_that_need_no_model_start_without_torch():
    import subprocess
    import sys

    code = ("import sys; from unigap.cli import build_parser; build_parser('report'); build_parser('build'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
