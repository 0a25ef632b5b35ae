"""Train a ShapesWorld model of either family from scratch, on CPU, reproducibly from a seed.

    .venv/bin/python scripts/train_default.py [--family janus] [--seed 0] [--out models/shapes-janus]
    .venv/bin/python scripts/train_default.py --family showo        # -> models/shapes-showo

``--family janus`` (the default) builds unigap's embedded default ``models/shapes-janus``;
``--family showo`` the embedded Show-o ``models/shapes-showo``: the same world, data, phases
and settings, only the model family (and its template) differs.

Stages (each one's result is kept in --work; a rerun skips the finished ones):

0. build the family's model (Janus: transformers' own classes; Show-o: Phi +
   MAGVIT-v2) with a BPE tokenizer trained offline on the world's texts, and
   train its VQ tokenizer by the supervised shortcut (codes = cell colours);
1. phase 1, understanding only: Yes/No questions (the self-judge's wording, exact
   answers, negatives from easy to one-attribute edits) + the captioning task,
   through ``llamafactory-cli train`` (stage sft, full fine-tuning, the family's template);
2. phase 2, joint: Yes/No + captions + image generation rows (PNG + codes), again
   through ``llamafactory-cli train``;
3. evaluate on the held-out prompts (val and test) against the exact oracle with
   unigap's own adapter, and write the checkpoint + ``eval.json`` + the prompt
   splits to --out.

Only train prompts are ever asked about or drawn during training. One thread
(torch and OpenMP) unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
)
#: per family: where it goes, its host template, how it is described, and its guided sampling for the report
FAMILIES: dict[str, dict[str, Any]] = {
    "janus": {
        "out": "shapes-janus", "work": "shapes-train", "template": "janus", "generation": {"cfg_scale": 5.0},
        "what": "A tiny Janus (transformers' `JanusForConditionalGeneration`)",
    },
    "showo": {
        "out": "shapes-showo", "work": "shapes-train-showo", "template": "showo",
        # unguided: this tiny Show-o draws best without guidance (held-out oracle accuracy, 8 images per prompt:
        # 20.7% at guidance 0, 7.1% at the released default 1.75, 4.6% at 4)
        "generation": {"guidance_scale": 0.0},
        "what": "A tiny Show-o (unigap's `ShowoForConditionalGeneration`: transformers' Phi + MAGVIT-v2 with a "
                "2-bit lookup-free quantiser)",
    },
}


def log(message: str) -> None:
    print(f"[train_default {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="janus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train / val / test prompt split")
    p.add_argument("--out", default=None, help="default: models/shapes-<family>")
    p.add_argument("--work", default=None, help="default: outputs/shapes-train (Janus), outputs/shapes-train-showo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vq-seconds", type=float, default=300.0)
    p.add_argument("--phase1-steps", type=int, default=1000)
    p.add_argument("--phase1-mix", default="yesno=64,caption=32")
    p.add_argument("--phase1-lr", type=float, default=1e-3)
    p.add_argument("--phase2-steps", type=int, default=700)
    p.add_argument("--phase2-mix", default="yesno=32,caption=16,gen=32")
    p.add_argument("--phase2-lr", type=float, default=5e-4)
    p.add_argument("--gen-loss-weight", type=float, default=0.25)
    p.add_argument("--eval-items", type=int, default=64, help="understanding items per held-out prompt")
    p.add_argument("--eval-samples", type=int, default=32, help="generated images per held-out prompt")
    p.add_argument("--gen", action="append", default=[], metavar="KEY=VALUE",
                   help="the family's sampling keys for the evaluation (default: cfg_scale=5 / guidance_scale=0)")
    args = p.parse_args(argv)
    family = FAMILIES[args.family]
    args.out = args.out or str(ROOT / "models" / family["out"])
    args.work = args.work or str(ROOT / "outputs" / family["work"])
    args.generation = dict(family["generation"])
    for item in args.gen:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--gen takes KEY=VALUE, got {item!r}")
        args.generation[key.strip()] = json.loads(value)
    return args


def _mix(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value)
    return out


def _done(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / ".done").is_file()


def _mark_done(path: Path, info: dict[str, Any]) -> None:
    from unigap.fsutil import write_text_atomic

    write_text_atomic(path / ".done", json.dumps(info, indent=2) + "\n")


def stage0(args: argparse.Namespace, work: Path) -> Path:

    out = work / "stage0"
    if _done(out):
        log(f"stage 0 already done ({out})")
        return out
    start = time.time()
    if args.family == "showo":
        from unigap.shapesworld import model_showo as world_model

        spec = world_model.world_spec(seed=args.seed)
        model, tokenizer = world_model.build_model(spec)
    else:
        from unigap.shapesworld import model as world_model

        spec = world_model.ShapesSpec(seed=args.seed)
        model, tokenizer, processor = world_model.build_model(spec)
    log(f"model built: {sum(p.numel() for p in model.parameters())} parameters, text vocab {len(tokenizer)}")
    vq = world_model.train_vq(model, seconds=args.vq_seconds, seed=args.seed, log=log)
    log(f"VQ: {vq}")
    if min(vq["scenes_exact_codes"], vq["scenes_exact_decodes"]) < 1.0 or vq["random_grids_exact_decodes"] < 0.98:
        raise SystemExit(f"the VQ tokenizer is not exact enough ({vq}); raise --vq-seconds")
    made = {"spec": world_model.spec_dict(spec), "vq": vq}
    if args.family == "showo":
        world_model.save_model(model, tokenizer, out, made)
    else:
        world_model.save_model(model, tokenizer, processor, out, made)
    _mark_done(out, {"seconds": round(time.time() - start, 1), "vq": vq})
    return out


def _yaml(config: dict[str, Any]) -> str:
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


def lf_phase(
    args: argparse.Namespace,
    work: Path,
    name: str,
    base: Path,
    steps: int,
    mix: dict[str, int],
    lr: float,
    hardness_start: float,
) -> Path:
    """Write the phase's dataset, then run the host's ``llamafactory-cli train`` on it."""
    from unigap.shapesworld.training_data import write_phase_dataset
    from unigap.shapesworld.world import make_splits

    out = work / name
    if _done(out):
        log(f"{name} already done ({out})")
        return out
    data_dir = work / "data"
    start = time.time()
    counts = write_phase_dataset(
        data_dir, name, make_splits(args.split_seed).train, steps, mix, seed=args.seed, hardness_start=hardness_start
    )
    log(f"{name}: dataset written ({counts}) in {time.time() - start:.0f}s")
    batch = sum(mix.values())
    config = {
        "model_name_or_path": str(base),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "dataset": name,
        "dataset_dir": str(data_dir),
        "template": FAMILIES[args.family]["template"],
        "cutoff_len": 256,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "plot_loss": True,
        "report_to": "none",
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": lr,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": min(100, steps // 10),
        "adam_beta2": 0.98,
        "max_grad_norm": 1.0,
        "weight_decay": 0.0,
        "disable_shuffling": True,  # rows are written in step-sized blocks, easy negatives first
        "gen_prompt_dropout": 0.1,
        "gen_loss_weight": args.gen_loss_weight,
        "bf16": False,
        "seed": args.seed,
        "data_seed": args.seed,
        "dataloader_num_workers": 0,
    }
    yaml_path = work / f"{name}.yaml"
    yaml_path.write_text(_yaml(config))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cli = Path(sys.executable).with_name("llamafactory-cli")
    log(f"{name}: {cli} train {yaml_path} ({steps} steps of {batch} rows)")
    train_start = time.time()
    with open(work / f"{name}.log", "w") as handle:
        proc = subprocess.run(
            [str(cli), "train", str(yaml_path)], check=False, stdout=handle, stderr=subprocess.STDOUT, env=env
        )
    if proc.returncode:
        raise SystemExit(
            f"llamafactory-cli train failed for {name} (exit {proc.returncode}); see {work / f'{name}.log'}"
        )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    seconds = round(time.time() - train_start, 1)
    _mark_done(out, {"seconds": seconds, "rows": counts, "last_logs": history[-3:]})
    shutil.rmtree(data_dir / name, ignore_errors=True)  # tens of thousands of PNGs, rewritable from the seed
    log(f"{name}: trained in {seconds}s; last logs {history[-2:]}")
    return out


def stage_eval(args: argparse.Namespace, model_dir: Path, work: Path, tag: str) -> dict[str, Any]:
    from unigap.fsutil import write_text_atomic
    from unigap.shapesworld.evaluate import evaluate_model
    from unigap.shapesworld.world import make_splits

    path = work / f"eval_{tag}.json"
    wanted = {
        "und_items_per_prompt": args.eval_items,
        "gen_samples_per_prompt": args.eval_samples,
        "generation": args.generation,
    }
    if path.is_file():  # reused only when it was measured with the same settings
        cached = json.loads(path.read_text())
        if all(cached.get("settings", {}).get(k) == v for k, v in wanted.items()):
            return cached
    splits = make_splits(args.split_seed)
    start = time.time()
    result = evaluate_model(
        str(model_dir),
        {"val": splits.val, "test": splits.test},
        und_items=args.eval_items,
        gen_samples=args.eval_samples,
        seed=args.seed,
        generation=args.generation,
    )
    result["settings"] = {
        **wanted,
        "temperature": 1.0,
        "judge_threshold": 0.5,
        "seconds": round(time.time() - start, 1),
    }
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    for split in ("val", "test", "held_out"):
        und, gen = result[split]["understanding"], result[split]["generation"]
        log(
            f"{tag} {split}: understanding "
            + ", ".join(f"{k} {v['accuracy']:.1%} (yes {v['yes_share']:.0%})" for k, v in und.items())
            + " | generation "
            + ", ".join(f"{k} {v['oracle_accuracy']:.1%}" for k, v in gen.items())
        )
    return result


def result_seconds(work: Path, tag: str) -> float:
    return json.loads((work / f"eval_{tag}.json").read_text())["settings"]["seconds"]


def publish(args: argparse.Namespace, model_dir: Path, work: Path, result: dict[str, Any], timings: dict) -> None:
    from unigap.fsutil import atomic_directory
    from unigap.shapesworld.data import write_prompt_files
    from unigap.shapesworld.world import make_splits

    made = json.loads((work / "stage0" / "shapesworld.json").read_text())
    for stage in ("stage0", "phase1", "phase2"):  # the stage's own time, also when a rerun skipped it
        timings[stage] = json.loads((work / stage / ".done").read_text())["seconds"]
    argv = " ".join(sys.argv[1:])
    how = {
        "made_by": f"scripts/train_default.py {argv}".strip(),
        "seed": args.seed,
        "split_seed": args.split_seed,
        "spec": made["spec"],
        "vq": made["vq"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "gen")},
        "wall_seconds": timings,
    }
    with atomic_directory(args.out, overwrite=True) as tmp:
        for name in MODEL_FILES:
            if (model_dir / name).is_file() or name in ("config.json", "model.safetensors"):
                shutil.copy2(model_dir / name, tmp / name)
        (tmp / "shapesworld.json").write_text(json.dumps(how, indent=2) + "\n")
        (tmp / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        write_prompt_files(make_splits(args.split_seed), tmp / "prompts")
        (tmp / "README.md").write_text(
            f"# {Path(args.out).name}\n\n{FAMILIES[args.family]['what']} trained from scratch on "
            "ShapesWorld (`unigap.shapesworld`) by `scripts/train_default.py` "
            f"(`{how['made_by']}`, {sum(timings.values()) / 60:.0f} min on {args.threads} CPU thread(s)): its VQ "
            "tokenizer by the "
            "supervised shortcut (codes = cell colours), its LLM by `llamafactory-cli train` with the unigap plugin "
            "(phase 1 understanding + captions, phase 2 joint with image generation). `eval.json`: measured against "
            "the exact oracle on the held-out prompts; `prompts/`: the train / val / test prompt splits.\n"
        )
        for path in tmp.rglob("*"):  # temp-file writes and copies of 0600 files: make them readable
            path.chmod(0o755 if path.is_dir() else 0o644)
    log(f"published {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from unigap.shapesworld.model import seed_everything

    seed_everything(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = stage0(args, work)
    p1 = lf_phase(args, work, "phase1", base, args.phase1_steps, _mix(args.phase1_mix), args.phase1_lr, 0.0)
    stage_eval(args, p1, work, "phase1")
    p2 = lf_phase(args, work, "phase2", p1, args.phase2_steps, _mix(args.phase2_mix), args.phase2_lr, 1.0)
    result = stage_eval(args, p2, work, "phase2")
    result["after_phase1"] = stage_eval(args, p1, work, "phase1")
    timings = {f"eval_{tag}": result_seconds(work, tag) for tag in ("phase1", "phase2")}
    publish(args, p2, work, result, timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
