"""What installing unigap costs every Python process of the environment (goal: < 5 ms, no heavy imports).

unigap's ``.pth`` runs at every interpreter start (the CLI, torchrun workers,
notebooks), so its cost is paid everywhere.  Side by side, in one run:

* ``bare venv``: a fresh venv of the same base interpreter, nothing installed;
* ``wheel``: a fresh venv with only the regular wheel (``pip wheel`` +
  ``pip install --no-deps``): ``unigap.pth`` and the hook;
* ``editable (fresh venv)``: a fresh venv with only the editable wheel that
  ``pip install -e .`` builds (setuptools' PEP 660 ``build_editable``);
* ``editable (make setup)``: the venv ``make setup`` made, as users start it;
  ``UNIGAP_DISABLE=1``: the same without the hook (the import roots stay);
  ``unigap .pth skipped``: the same venv, its site-packages processed without
  unigap's ``.pth`` files, i.e. the venv's own baseline (it has other ``.pth``
  files, e.g. setuptools' ``distutils-precedence.pth``).

Columns:

* ``wall ms``: median wall time of ``python -c pass`` (interleaved runs); for
  the skipped row, ``python -S -c "<site.main() skipping unigap's .pth>"``,
  to be compared with the ``site.main()`` row, the same program skipping nothing;
* ``site ms``: median time of ``site.main()`` measured inside the process
  (``-S``, then ``import site; site.main()``): where every ``.pth`` runs, and
  much less noisy than the wall time on a busy machine;
* ``importtime us``: median of ``-X importtime``'s cumulative time of the
  outermost start-up imports whose name contains ``unigap`` (the hook, the
  editable finder), and the other modules those imports pulled in.

Usage: .venv/bin/python benchmarks/bench_bootstrap.py [--runs 60] [--also NAME=PYTHON ...]   (about 30 s)
"""

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = sysconfig.get_paths()["purelib"]

# Run with -S: what site.py does at start-up, optionally skipping the .pth files named *unigap*.
_SITE_MAIN = """\
import time
_start = time.perf_counter()
import site
if {skip}:
    _add = site.addpackage
    site.addpackage = lambda d, n, k: k if "unigap" in n else _add(d, n, k)
site.main()
{report}
"""
_REPORT = "print((time.perf_counter() - _start) * 1000)"


def _site_main(skip: bool, report: bool = False) -> str:
    return _SITE_MAIN.format(skip=skip, report=_REPORT if report else "")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("UNIGAP_DISABLE", "PYTHONDONTWRITEBYTECODE")}
    env.update(extra)
    return env


def _make_venv(path: Path) -> str:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(path)], check=True)
    return str(path / "bin" / "python")


def _install(python: str, wheel_dir: Path) -> None:
    wheel = next(wheel_dir.glob("unigap-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )


def _wheel_venv(tmp: Path) -> str:
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    python = _make_venv(tmp / "wheel-venv")
    _install(python, wheels)
    return python


def _editable_venv(tmp: Path) -> str:
    wheels = tmp / "editable-wheels"
    wheels.mkdir()
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(wheels)!r})"],
        cwd=ROOT, check=True, capture_output=True,
    )
    python = _make_venv(tmp / "editable-venv")
    _install(python, wheels)
    return python


def _wall_ms(cmd: list, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return (time.perf_counter() - start) * 1000


def _site_ms(python: str, env: dict, skip: bool) -> float:
    cmd = [python, "-S", "-c", _site_main(skip, report=True)]
    return float(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()[-1])


def _importtime(cmd: list, env: dict) -> tuple:
    """(cumulative us of the outermost start-up imports named *unigap*, other modules they pulled in)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip(" "))) // 2  # a leading space, then 2 per level
        rows.append((depth, int(cumulative), name.strip()))
    total, pulled = 0, set()
    for i, (depth, cumulative, name) in enumerate(rows):
        if "unigap" not in name:
            continue
        # children are listed before their parent: the parent is the next row less deep
        parent = next((row[2] for row in rows[i + 1:] if row[0] < depth), "")
        if "unigap" in parent:
            continue  # counted in the parent's cumulative time
        total += cumulative
        j = i - 1
        while j >= 0 and rows[j][0] > depth:
            if "unigap" not in rows[j][2]:
                pulled.add(rows[j][2])
            j -= 1
    return total, pulled


def _pth_imports(python: str) -> list:
    """Modules that processing unigap's .pth files adds to an interpreter started without them."""
    code = _site_main(skip=True) + (
        "import os, sys\n"
        "before = set(sys.modules)\n"
        "for d in site.getsitepackages():\n"
        "    for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:\n"
        "        if n.endswith('.pth') and 'unigap' in n:\n"
        "            _add(d, n, set())  # the real addpackage, not the skipping stand-in\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    proc = subprocess.run([python, "-S", "-c", code], env=_env(), capture_output=True, text=True, check=True)
    return proc.stdout.split()


def _fmt(values: list, digits: int) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.{digits}f} ({q[0]:.{digits}f}-{q[2]:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PYTHON",
                        help="another interpreter to measure alongside, e.g. a venv with an older install")
    args = parser.parse_args()
    if not sys.prefix.startswith(str(ROOT)):
        print(f"note: {sys.executable} is not the venv of {ROOT} (make setup); measuring it anyway", file=sys.stderr)
    unigap_files = sorted(n for n in os.listdir(SITE) if "unigap" in n)

    with tempfile.TemporaryDirectory(prefix="unigap-bench-") as tmp:
        bare, wheel, editable = _make_venv(Path(tmp, "bare-venv")), _wheel_venv(Path(tmp)), _editable_venv(Path(tmp))
        venv, off = sys.executable, _env(UNIGAP_DISABLE="1")
        # name: (python, env, skip unigap's .pth, wall-time command)
        setups = {
            "bare venv": (bare, _env(), False, [bare, "-c", "pass"]),
            "wheel (fresh venv)": (wheel, _env(), False, [wheel, "-c", "pass"]),
            "editable (fresh venv)": (editable, _env(), False, [editable, "-c", "pass"]),
            "editable (make setup)": (venv, _env(), False, [venv, "-c", "pass"]),
            "  UNIGAP_DISABLE=1": (venv, off, False, [venv, "-c", "pass"]),
            "  site.main()": (venv, _env(), False, [venv, "-S", "-c", _site_main(False)]),
            "  unigap .pth skipped": (venv, _env(), True, [venv, "-S", "-c", _site_main(True)]),
        }
        for item in args.also:
            name, _, python = item.partition("=")
            setups[name] = (python, _env(), False, [python, "-c", "pass"])
        for python, env, skip, cmd in setups.values():  # warm the caches, write the .pyc files
            subprocess.run(cmd, env=env, check=True)
            _site_ms(python, env, skip)
        wall, site_ms, imports = ({name: [] for name in setups} for _ in range(3))
        pulled = {name: set() for name in setups}
        for _ in range(args.runs):  # interleaved, so drift of the machine hits every setup alike
            for name, (python, env, skip, cmd) in setups.items():
                wall[name].append(_wall_ms(cmd, env))
                site_ms[name].append(_site_ms(python, env, skip))
                us, extra = _importtime(cmd, env)
                imports[name].append(us)
                pulled[name] |= extra
        pth_imports = {name: _pth_imports(setups[name][0]) for name in list(setups)[1:4]}

    print(f"unigap's files in {SITE}: {' '.join(unigap_files)}")
    print(f"medians of {args.runs} runs each (quartiles)")
    width = max(map(len, setups))
    header = f"{'':{width}} {'wall ms':>20} {'site ms':>18} {'importtime us':>18}"
    print(f"{header}  other modules unigap's imports pulled in")
    for name in setups:
        print(
            f"{name:{width}} {_fmt(wall[name], 2):>20} {_fmt(site_ms[name], 2):>18} "
            f"{_fmt(imports[name], 0):>18}  {' '.join(sorted(pulled[name])) or '-'}"
        )

    def diff(a: str, b: str) -> str:
        dw = statistics.median(wall[a]) - statistics.median(wall[b])
        ds = statistics.median(site_ms[a]) - statistics.median(site_ms[b])
        return f"{ds:+6.2f} ms site.main(), {dw:+6.2f} ms wall"

    print()
    print(f"wheel install, added over a bare venv:          {diff('wheel (fresh venv)', 'bare venv')}")
    print(f"editable install, added over a bare venv:       {diff('editable (fresh venv)', 'bare venv')}")
    print(f"editable, added by unigap's .pth in make setup's venv: "
          f"{diff('  site.main()', '  unigap .pth skipped')}")
    print(f"make setup's venv vs bare venv (all its .pth):  {diff('editable (make setup)', 'bare venv')}")
    print(f"make setup's venv, hook on vs UNIGAP_DISABLE=1: {diff('editable (make setup)', '  UNIGAP_DISABLE=1')}")
    for name, mods in pth_imports.items():
        print(f"modules unigap's .pth files import, {name}: {' '.join(mods) or '-'}")


if __name__ == "__main__":
    main()
