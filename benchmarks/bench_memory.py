"""Memory of the reference copy and of weight checksums, measured side by side.

1. DPO full fine-tuning through the real ``llamafactory-cli train`` on a wider tiny Janus, with
   ``gen_precompute_ref`` false (live reference) and true (reference log-probs precomputed, then
   the reference copy's storage released).  Peak RSS of each training process (a fresh process
   each), and the bytes the trainer reports freed (``unigap_reference_check.json``).  Goal: the
   precomputed run peaks lower by about one copy of the weights.
2. Transient memory of a float64 checksum of one large float32 tensor: the old whole-tensor
   ``t.double()`` (+ its square) vs ``unigap.training.checksum`` (streamed in chunks).  Peak-RSS
   growth over the tensor itself, in a fresh process per variant.  Goal: bounded by one chunk.

Usage: .venv/bin/python benchmarks/bench_memory.py [--hidden 1024 --layers 8 --elements 200000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
MiB = 1 << 20

_PEAK = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    sys.exit(proc.returncode)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""

_CHECKSUM = """
import json, resource, sys, time
import torch
from unigap.training import checksum
torch.manual_seed(0)
t = torch.randn(int(sys.argv[2]), dtype=torch.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
with torch.no_grad():
    if sys.argv[1] == "old":
        data = t.double()
        value = [float(data.sum()), float((data * data).sum())]
        del data
    else:
        value = list(checksum(t))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"transient": peak - base, "seconds": seconds, "value": value}))
"""


def _json_line(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd[:4])}...\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_dpo(root: Path, hidden: int, layers: int, steps: int) -> None:
    from unigap.models.janus.tiny import TinySpec, build_tiny_janus
    from unigap.shapesworld.examples import write_example_datasets

    model = build_tiny_janus(root / "model", TinySpec(hidden_size=hidden, num_layers=layers, num_heads=8))
    data = root / "data"
    write_example_datasets(model, data)
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"## DPO full fine-tuning, hidden {hidden}, {layers} layers: checkpoint {weights / MiB:.0f} MiB, {steps} steps")
    rows = {}
    for precompute in (False, True):
        out = root / f"out_{precompute}"
        config = {
            "model_name_or_path": str(model), "stage": "dpo", "do_train": True, "finetuning_type": "full",
            "dataset": "unigap_gen_dpo", "dataset_dir": str(data), "template": "janus", "cutoff_len": 512,
            "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 1,
            "per_device_train_batch_size": 2, "learning_rate": 1e-5, "max_steps": steps, "pref_beta": 0.1,
            "bf16": False, "report_to": "none", "save_strategy": "no", "seed": 0,
            "gen_precompute_ref": precompute,
        }
        yaml_path = root / f"train_{precompute}.yaml"
        yaml_path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n")
        peak = _json_line([sys.executable, "-c", _PEAK, str(BIN / "llamafactory-cli"), "train", str(yaml_path)])
        report = json.loads((out / "unigap_reference_check.json").read_text())
        rows[precompute] = (peak["peak_rss"], report)
    live, pre = rows[False][0], rows[True][0]
    report = rows[True][1]
    print("| gen_precompute_ref | peak RSS | freed by the trainer |\n|---|---|---|")
    print(f"| false (live reference) | {live / MiB:.0f} MiB | - |")
    print(f"| true (precomputed, released) | {pre / MiB:.0f} MiB | {report.get('released_bytes', 0) / MiB:.0f} MiB "
          f"(storages still alive: {report.get('reference_storages_alive')}, "
          f"in accelerator._models: {report.get('reference_in_accelerator_models')}) |")
    print(f"peak ratio precomputed / live: {pre / live:.3f}; saved {(live - pre) / MiB:.0f} MiB "
          f"(one weight copy: {report.get('released_bytes', 0) / MiB:.0f} MiB)\n")


def bench_checksum(elements: int) -> None:
    print(f"## float64 checksum of one float32 tensor of {elements / 1e6:.0f}M elements ({elements * 4 / MiB:.0f} MiB)")
    print("| checksum | transient peak RSS | seconds |\n|---|---|---|")
    results = {}
    for variant in ("old", "new"):
        results[variant] = _json_line([sys.executable, "-c", _CHECKSUM, variant, str(elements)])
        r = results[variant]
        label = "whole tensor .double()" if variant == "old" else "streamed (unigap.training.checksum)"
        print(f"| {label} | {r['transient'] / MiB:.0f} MiB | {r['seconds']:.2f} |")
    old, new = results["old"]["value"], results["new"]["value"]
    rel = max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(old, new))
    print(f"ratio new / old: {results['new']['transient'] / max(results['old']['transient'], 1):.3f}; "
          f"max relative difference of the values: {rel:.1e}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--elements", type=int, default=200_000_000)
    ap.add_argument("--skip-dpo", action="store_true")
    args = ap.parse_args()
    bench_checksum(args.elements)
    if not args.skip_dpo:
        with tempfile.TemporaryDirectory() as tmp:
            bench_dpo(Path(tmp), args.hidden, args.layers, args.steps)


if __name__ == "__main__":
    main()
