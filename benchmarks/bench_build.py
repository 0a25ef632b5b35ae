"""``unigap build dpo`` on large synthetic runs: wall time and peak memory (goal: 1M records < 60 s, flat memory).

What is measured: the real CLI, ``unigap build dpo RUN --out DS --name bench``, in
a fresh process per size, on a synthetic self-play run of N records (8 candidates
per prompt, P(yes) uniform at random, threshold 0.5, so nearly every prompt gives
one pair).  Every record has its own PNG and codes file; to keep the set-up
cheap on disk they are hard links to a few identical valid template pairs
(``tests/runfixture.py``), which the build cannot tell from distinct files.  The
build does all its usual work: it parses and validates every record, and for
every image it uses resolves the paths inside the run, verifies the PNG (chunk
CRCs) and the codes (length, range), hard-links PNG + codes into the dataset,
and writes the rows, the discard pool and the manifest, then renames the folder
and merges ``dataset_info.json``.  Writing the synthetic run is not timed.

Peak RSS is ``ru_maxrss`` of the build process (``RUSAGE_CHILDREN`` of a small
wrapper that runs only that one process).

Usage: .venv/bin/python benchmarks/bench_build.py [--sizes 100000 1000000] [--candidates 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def measure(cmd: list[str]) -> None:
    """Child mode: run ``cmd``, print its wall time and peak RSS (only child of this process)."""
    import resource

    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": peak_kb / 1024,
                      "stdout": proc.stdout, "stderr": proc.stderr[-2000:]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--workdir", help="where to write the runs (default: a temporary folder, removed after)")
    parser.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from runfixture import write_synthetic_run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unigap-bench-build-"))
    results = []
    try:
        for size in args.sizes:
            prompts = size // args.candidates
            run_dir, ds = work / f"run-{size}", work / f"ds-{size}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(ds, ignore_errors=True)
            start = time.perf_counter()
            write_synthetic_run(run_dir, prompts, args.candidates, seed=size)
            setup = time.perf_counter() - start
            cmd = [str(BIN / "unigap"), "build", "dpo", str(run_dir), "--out", str(ds), "--name", "bench"]
            out = subprocess.run([sys.executable, __file__, "--measure", *cmd], capture_output=True, text=True, check=False)
            result = json.loads(out.stdout)
            if result["rc"] != 0:
                print(result["stderr"], file=sys.stderr)
                return 1
            manifest = json.loads((ds / "bench" / "manifest.json").read_text())
            totals = manifest["counts"]["total"]
            files = manifest["image_files"]
            results.append((size, prompts, totals["pairs"], files["link"] + files["copy"], result["wall_s"],
                            result["peak_rss_mb"], setup))
            print(f"{size:>9,} records: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"(set-up {setup:.0f} s, not timed)", file=sys.stderr, flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(ds, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nunigap build dpo on synthetic runs ({args.candidates} candidates per prompt; "
          f"{os.cpu_count()} CPU cores; one fresh process per size)\n")
    print("| records | prompts | pairs written | files linked | wall s | records/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, prompts, pairs, files, wall, rss, _ in results:
        print(f"| {size:,} | {prompts:,} | {pairs:,} | {files:,} | {wall:.1f} | {size / wall:,.0f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
