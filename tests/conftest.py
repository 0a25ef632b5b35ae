"""Shared fixtures: a tiny Janus model and datasets built once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Offline and quiet for every subprocess the tests start.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DISABLE_VERSION_CHECK": "1",
    "PYTHONWARNINGS": "ignore",
}


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    full_env = {**os.environ, **ENV, **(env or {})}
    # as in an activated venv: the host's launcher runs `torchrun` from PATH
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    for key in ("UNIGAP_DISABLE", "FORCE_TORCHRUN"):
        if env is None or key not in env:
            full_env.pop(key, None)
    return subprocess.run(cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def lf_train(config: dict, workdir: Path, env: dict | None = None, expect_ok: bool = True, timeout: int = 600):
    """Run the real, unmodified ``llamafactory-cli train`` on a YAML written from ``config``."""
    yaml_path = workdir / "train.yaml"
    yaml_path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n")
    proc = run([str(BIN / "llamafactory-cli"), "train", str(yaml_path)], cwd=workdir, env=env, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"llamafactory-cli train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def one_of_each(example_data: Path, root: Path) -> Path:
    """A copy of the example data under ``root`` with a dataset ``mix``: one generation row, then one understanding
    row (at batch size 1 on 2 ranks, each step one rank generates and the other understands)."""
    import shutil

    shutil.copytree(example_data, root)
    rows = json.loads((root / "gen_sft.json").read_text())[:1] + json.loads((root / "und_sft.json").read_text())[:1]
    (root / "mix.json").write_text(json.dumps(rows))
    info = json.loads((root / "dataset_info.json").read_text())
    info["mix"] = dict(info["unigap_gen_sft"], file_name="mix.json")
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def base_config(model: Path, dataset_dir: Path, dataset: str, out: Path, **overrides) -> dict:
    config = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "janus",
        "cutoff_len": 512,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 1,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "seed": 0,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from unigap.models.janus.tiny import build_tiny_janus

    return build_tiny_janus(tmp_path_factory.mktemp("models") / "tiny-janus")


@pytest.fixture(scope="session")
def tiny_showo(tmp_path_factory) -> Path:
    """A tiny random Show-o checkpoint (built once per session)."""
    from unigap.models.showo.tiny import build_tiny_showo

    return build_tiny_showo(tmp_path_factory.mktemp("models") / "tiny-showo")


@pytest.fixture(scope="session")
def example_data(tiny_model, tmp_path_factory) -> Path:
    from unigap.shapesworld.examples import write_example_datasets

    out = tmp_path_factory.mktemp("data") / "examples"
    write_example_datasets(tiny_model, out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_model):
    """(model, tokenizer, processor) of the tiny model, loaded once, read-only."""
    from transformers import AutoProcessor, AutoTokenizer, JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(tiny_model).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model), AutoProcessor.from_pretrained(tiny_model)
