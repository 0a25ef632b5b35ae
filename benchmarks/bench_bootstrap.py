"""What the start-up hook costs an unrelated Python process (goal: < 5 ms, no heavy imports).

Two measurements side by side:
* ``-X importtime``: the import cost of ``unigap`` + ``unigap._bootstrap``
  (median over runs), as the interpreter reports it, with the usual ``.pyc``
  cache and without one (``PYTHONDONTWRITEBYTECODE`` and no cache yet);
* wall time of ``python -c pass`` with the hook vs with ``UNIGAP_DISABLE=1``
  (interleaved runs, medians; the difference is mostly noise at this scale).

Usage: .venv/bin/python benchmarks/bench_bootstrap.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def importtime_us(bytecode: bool = True) -> int:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not bytecode:  # every start compiles the modules from source
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = "/nonexistent-unigap-bench"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, env=env)
    total = 0
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2].lstrip() in ("unigap", "unigap._bootstrap"):
            total += int(parts[0].split(":")[-1])  # self time, us
    return total


def wall_ms(disabled: bool) -> float:
    env = dict(os.environ)
    env.pop("UNIGAP_DISABLE", None)
    if disabled:
        env["UNIGAP_DISABLE"] = "1"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    importtime_us()  # writes the .pyc files
    imports = [importtime_us() for _ in range(args.runs)]
    imports_no_pyc = [importtime_us(bytecode=False) for _ in range(args.runs)]
    on, off = [], []
    for _ in range(args.runs):
        on.append(wall_ms(False))
        off.append(wall_ms(True))
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted({m.split('.')[0] for m in sys.modules} & "
         "{'torch', 'transformers', 'llamafactory', 'numpy'}))"],
        capture_output=True, text=True,
    ).stdout.strip()
    print(json.dumps({
        "import time of unigap + unigap._bootstrap, median us": statistics.median(imports),
        "same without .pyc files (compiled at every start), median us": statistics.median(imports_no_pyc),
        "python -c pass, median ms (hook on)": round(statistics.median(on), 2),
        "python -c pass, median ms (UNIGAP_DISABLE=1)": round(statistics.median(off), 2),
        "difference, ms": round(statistics.median(on) - statistics.median(off), 2),
        "heavy modules imported at start-up": heavy,
    }, indent=2))


if __name__ == "__main__":
    main()
