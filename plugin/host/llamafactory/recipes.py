"""unigap's training recipes as LLaMA-Factory training YAML, and ``llamafactory-cli train`` on one.

The recipes (each full fine-tuning or LoRA):

* ``sft``: generation SFT on the images the model's own judge accepted (Algorithm 1),
  with ``gen_prompt_dropout`` for classifier-free guidance;
* ``csft``: the same with the easy-to-hard curriculum sampler and a replay of the
  discard pool by the model being trained (C-SFT, Algorithm 2);
* ``dpo``: most-yes against most-no image pairs, against the host's frozen reference.

:func:`train_config` turns a :class:`Recipe` into the host's YAML keys,
:func:`write_train_yaml` writes them, :func:`train_command` is the command line that
trains on the file and :func:`run_train` runs it.  Nothing here imports the host:
training runs in its own process, through the host's unmodified CLI (the plugin
loads itself there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UnigapError
from ...fsutil import write_text_atomic

KINDS = ("sft", "csft", "dpo")
FINETUNING = ("full", "lora")
#: the dataset each recipe trains on by default (the names ``unigap build sft|dpo`` is usually given)
DEFAULT_DATASET = {"sft": "gap_sft", "csft": "gap_sft", "dpo": "gap_dpo"}
DEFAULT_BATCH = {"sft": 32, "csft": 32, "dpo": 8}
#: the environment every training gets: no hub access, no version nag
TRAIN_ENV = {"HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}


class RecipeError(UnigapError):
    """A recipe that cannot be written, or a training that failed (the message names the file)."""


@dataclass
class Recipe:
    """One training run of one recipe; the defaults are the settings unigap's evidence and demo use."""

    kind: str  # sft | csft | dpo
    model: str  # model_name_or_path
    dataset_dir: str
    output_dir: str
    learning_rate: float
    epochs: float
    seed: int = 0  # seed and data_seed
    dataset: str | None = None  # default: DEFAULT_DATASET[kind]
    batch_size: int | None = None  # per device; default: DEFAULT_BATCH[kind]
    finetuning_type: str = "full"  # full | lora
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_target: str = "all"  # the LLM's linear layers and the image-generation head (never the VQ)
    template: str | None = None  # default: the model family's template
    cutoff_len: int = 256
    logging_steps: int = 5
    gen_prompt_dropout: float = 0.1  # sft / csft
    # C-SFT: the curriculum sampler and the replay of the discard pool
    replay_epochs: int | str | None = None  # required for csft ("3" or "2,4")
    replay_pool: str | None = None  # default: the dataset (its discard_pool.jsonl)
    replay_seed: int | None = None
    curriculum_difficulty: str = "label"
    curriculum_pacing: str = "linear"
    curriculum_start: float = 0.25
    curriculum_full_at: float = 0.5
    # DPO
    pref_beta: float = 0.1
    pref_loss: str = "sigmoid"
    pref_ftx: float = 0.1
    #: further host keys, written last (a key here replaces the recipe's own)
    extra: Mapping[str, Any] = field(default_factory=dict)


def model_template(model: str) -> str:
    """The host template name of the checkpoint's model family (the family's ``template``)."""
    from ...models import family_for_checkpoint

    return family_for_checkpoint(str(model)).template


def train_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the keys of a ``llamafactory-cli train`` YAML (in the order they are written)."""
    r = recipe
    if r.kind not in KINDS:
        raise RecipeError(f"unknown recipe {r.kind!r} (known: {', '.join(KINDS)})")
    if r.finetuning_type not in FINETUNING:
        raise RecipeError(f"finetuning_type must be one of {', '.join(FINETUNING)}, got {r.finetuning_type!r}")
    if r.kind == "csft" and r.replay_epochs is None:
        raise RecipeError("the csft recipe needs replay_epochs (after which epochs the discard pool is replayed)")
    config: dict[str, Any] = {"model_name_or_path": str(r.model), "do_train": True, "finetuning_type": r.finetuning_type}
    if r.finetuning_type == "lora":
        config.update(lora_rank=r.lora_rank, lora_alpha=r.lora_alpha, lora_target=r.lora_target)
    config.update({
        "template": r.template or model_template(r.model),
        "dataset_dir": str(r.dataset_dir), "cutoff_len": r.cutoff_len, "output_dir": str(r.output_dir),
        "overwrite_output_dir": True, "logging_steps": r.logging_steps, "save_strategy": "no", "report_to": "none",
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": False, "seed": r.seed, "data_seed": r.seed,
        "dataloader_num_workers": 0, "preprocessing_num_workers": 1,
    })
    dataset = r.dataset or DEFAULT_DATASET[r.kind]
    config.update(stage="dpo" if r.kind == "dpo" else "sft", dataset=dataset,
                  per_device_train_batch_size=r.batch_size or DEFAULT_BATCH[r.kind], learning_rate=r.learning_rate,
                  num_train_epochs=r.epochs)
    if r.kind == "dpo":
        config.update(pref_beta=r.pref_beta, pref_loss=r.pref_loss, pref_ftx=r.pref_ftx)
    else:
        config.update(gen_prompt_dropout=r.gen_prompt_dropout)
    if r.kind == "csft":
        config.update(curriculum_difficulty=r.curriculum_difficulty, curriculum_pacing=r.curriculum_pacing,
                      curriculum_start=r.curriculum_start, curriculum_full_at=r.curriculum_full_at,
                      replay_epochs=str(r.replay_epochs), replay_pool=r.replay_pool or dataset)
        if r.replay_seed is not None:
            config.update(replay_seed=r.replay_seed)
    config.update(r.extra)
    return config


def write_train_yaml(path: str | os.PathLike, recipe: Recipe | Mapping[str, Any]) -> Path:
    """Write a recipe (or its keys from :func:`train_config`) as a training YAML, atomically."""
    import yaml

    config = train_config(recipe) if isinstance(recipe, Recipe) else dict(recipe)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def host_cli() -> str:
    """``llamafactory-cli`` of this environment (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("llamafactory-cli")
    return str(beside) if beside.exists() else "llamafactory-cli"


def train_command(yaml_path: str | os.PathLike) -> list[str]:
    """The command line that trains on a YAML: the host's unmodified CLI."""
    return [host_cli(), "train", str(yaml_path)]


def run_train(yaml_path: str | os.PathLike, log_path: str | os.PathLike | None = None,
              cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> None:
    """Run ``llamafactory-cli train YAML`` (offline: :data:`TRAIN_ENV`); its output goes to ``log_path``
    (or this process's own output).  A failed training raises :class:`RecipeError` naming the YAML and log."""
    full_env = {**os.environ, **TRAIN_ENV, **(env or {})}
    cmd = train_command(yaml_path)
    if log_path is None:
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, check=False)
        where = ""
    else:
        with open(log_path, "w") as handle:
            proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=handle, stderr=subprocess.STDOUT, check=False)
        where = f"; see {log_path}"
    if proc.returncode:
        raise RecipeError(f"llamafactory-cli train {yaml_path} failed (exit {proc.returncode}){where}")
