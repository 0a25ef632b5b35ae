"""What the curriculum sampler costs, measured side by side in one run.

1. Training step time through the real ``llamafactory-cli train`` (a tiny random Janus that the
   benchmark builds in a temp dir, CPU): the host's default sampler vs unigap's curriculum sampler
   (label difficulty, linear pacing) on the same self-play dataset, runs interleaved, median of
   ``--repeats``; the ratio of the medians of seconds per step (from the host's own ``train_runtime``).
2. The sampler alone: time to produce one epoch of indices, unigap vs ``torch.utils.data.RandomSampler``,
   for 10k / 100k / 1M rows (median of 5).
3. One-off set-up: reading the curriculum metadata of N rows and matching the training rows to it.

    python benchmarks/bench_curriculum.py [--repeats 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def _dataset(work: Path, model: Path) -> Path:
    run_dir, data = work / "run", work / "data"
    # the random model's P(yes) sits near 0.47: 0.475 accepts part of its images (the example's 0.5 is for a trained one)
    _run([str(BIN / "unigap"), "selfplay", "yaml_examples/selfplay.yaml", f"model_name_or_path={model}",
          f"output_dir={run_dir}", "progress=false", "judge_threshold=0.475"])
    _run([str(BIN / "unigap"), "build", "sft", str(run_dir), "--out", str(data), "--name", "gap"])
    return data


def _train(work: Path, model: Path, data: Path, name: str, epochs: int, curriculum: bool) -> float:
    out = work / name
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_target": "all", "dataset": "gap", "dataset_dir": str(data), "template": "janus", "cutoff_len": 512,
        "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 10, "save_strategy": "no",
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "num_train_epochs": epochs, "report_to": "none",
        "bf16": False, "seed": 0,
    }
    if curriculum:
        config.update(curriculum_difficulty="label", curriculum_pacing="linear")
    path = work / f"{name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    _run([str(BIN / "llamafactory-cli"), "train", str(path)])
    result = json.loads((out / "train_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    return float(result["train_runtime"]) / state["global_step"]


def bench_training(repeats: int, epochs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        from unigap.models.janus.tiny import build_tiny_janus

        work = Path(tmp)
        model = build_tiny_janus(work / "tiny-janus")
        data = _dataset(work, model)
        rows = sum(1 for _ in open(data / "gap" / "data.jsonl"))
        times: dict[str, list[float]] = {"host": [], "curriculum": []}
        for r in range(repeats):
            for name in ("host", "curriculum") if r % 2 == 0 else ("curriculum", "host"):
                times[name].append(_train(work, model, data, f"{name}{r}", epochs, name == "curriculum"))
        host, cur = statistics.median(times["host"]), statistics.median(times["curriculum"])
        print(f"\n1. llamafactory-cli train, tiny model, {rows} rows x {epochs} epochs, batch 4, medians of {repeats}")
        print("| sampler | s/step (runs) | median |")
        print("|---|---|---|")
        for name, values in times.items():
            print(f"| {name} | {', '.join(f'{v:.3f}' for v in values)} | {statistics.median(values):.3f} |")
        print(f"step-time ratio curriculum / host default: {cur / host:.3f}")


def bench_sampler() -> None:
    from unigap.curriculum import CurriculumSampler

    print("\n2. one epoch of indices (median of 5)")
    print("| rows | RandomSampler | unigap linear (pacing on) | unigap past full_at | ratio (pacing on) |")
    print("|---|---|---|---|---|")
    for n in (10_000, 100_000, 1_000_000):
        scores = np.random.default_rng(0).integers(0, 3, n).astype(float)
        sampler = CurriculumSampler(scores, scores.astype(int), pacing="linear", start=0.2, full_at=0.5,
                                    epoch_len=n, total_samples=4 * n, seed=0)
        rand = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(0))

        def timed(fn) -> float:
            values = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                values.append(time.perf_counter() - start)
            return statistics.median(values)

        def ours(epoch: int):
            def go():
                sampler._cache = None
                sampler.set_epoch(epoch)
                for _ in sampler:
                    pass
            return go

        host = timed(lambda: [None for _ in rand])
        early, late = timed(ours(0)), timed(ours(3))
        print(f"| {n:,} | {host * 1e3:.1f} ms | {early * 1e3:.1f} ms | {late * 1e3:.1f} ms | {early / host:.2f} |")


def bench_alignment() -> None:
    from unigap.curriculum import align
    from unigap.host.llamafactory.datasets import read_metadata

    print("\n3. set-up: read metadata + match training rows by image (once per run)")
    print("| rows | read | match | total |")
    print("|---|---|---|---|")
    for n in (10_000, 100_000):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "img").mkdir()
            lines = []
            for i in range(n):
                image = f"img/{i}.png"
                (folder / image).touch()
                meta = {"prompt_id": str(i // 4), "prompt": f"prompt {i // 4}", "image": image, "difficulty": "easy",
                        "acceptance": 0.5, "mean_p_yes": 0.5, "p_yes": 0.5}
                lines.append(json.dumps({"messages": [{"role": "user", "content": f"prompt {i // 4}"},
                                                      {"role": "assistant", "content": "<image>"}],
                                         "images": [image], "unigap": meta}))
            (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
            start = time.perf_counter()
            table, _ = read_metadata([("d", folder / "data.jsonl")], str(folder))
            mid = time.perf_counter()
            images = [[str(folder / f"img/{i}.png")] for i in np.random.default_rng(0).permutation(n)]
            got = align(images, None, table)
            end = time.perf_counter()
            assert not got.unlabeled
            print(f"| {n:,} | {mid - start:.2f} s | {end - mid:.2f} s | {end - start:.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if not args.skip_training:
        bench_training(args.repeats, args.epochs)
    bench_sampler()
    bench_alignment()


if __name__ == "__main__":
    main()
