"""The loop's YAML (``unigap loop LOOP.yaml [key=value ...]``): keys, checks, and what decides results.

Flat keys in the host's style, ``key=value`` overrides parsed as YAML (as ``llamafactory-cli``
does).  The user's own LLaMA-Factory training YAML (``train_yaml``, one file or a list run in
order each round) is read here and kept verbatim: :func:`round_train_config` fills only
``model_name_or_path`` / ``adapter_name_or_path``, ``dataset``, ``dataset_dir``, ``output_dir``
(and ``replay_pool`` where the file replays a discard pool) and leaves every other key as written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnigapError
from ..suggest import did_you_mean

LAUNCHERS = ("plain", "torchrun", "accelerate")
BUILDS = ("sft", "dpo", "both")
#: what early stopping and the "best round" may follow: name -> +1 (higher is better) / -1
SCORES = {"oracle_accuracy": 1, "judge_accuracy": 1, "judge_agreement": 1, "oracle_agreement": 1,
          "non_unification": -1, "mean_p_yes": 1, "pass_at_n": 1}
#: keys the host trains with that the loop fills in each round (everything else is the user's)
FILLED_KEYS = ("model_name_or_path", "adapter_name_or_path", "dataset", "dataset_dir", "output_dir")
#: keys whose change never changes a finished stage's result (a loop may be extended by more rounds)
NON_RESULT_KEYS = ("output_dir", "rounds", "progress", "early_stop_patience", "early_stop_min_delta",
                   "early_stop_metric", "selfplay_launcher", "selfplay_nproc", "batch_size", "eval_batch_size")
#: self-play keys the loop passes through to ``unigap selfplay`` (train prompts and held-out prompts alike)
SELFPLAY_KEYS = ("judge_question", "judge_threshold", "device", "dtype")


class LoopConfigError(UnigapError):
    """A loop YAML that cannot be used (the message names the key or file)."""


@dataclass
class LoopConfig:
    """Keys of a loop YAML (see ``yaml_examples/loop_shapes.yaml``)."""

    # the starting model
    model_name_or_path: str = ""
    output_dir: str = ""
    # prompts (JSONL with prompt / id / difficulty / category, or .txt)
    train_prompts: str = ""
    eval_prompts: str = ""
    max_train_prompts: int | None = None
    max_eval_prompts: int | None = None
    rounds: int = 2
    # self-play on the train prompts (round r draws with seed + r)
    num_candidates: int = 4
    seed: int = 0
    batch_size: int = 64
    #: the model family's generation parameters (cfg_scale, temperature, ...): given in the YAML as plain keys
    sampling: dict[str, Any] = field(default_factory=dict)
    judge_question: str = "Does this image show {prompt}?"
    judge_threshold: float = 0.5
    device: str = "auto"
    dtype: str = "auto"
    selfplay_launcher: str = "plain"
    selfplay_nproc: int = 1
    # build
    build: str = "sft"
    sft_with_und: bool = False
    sft_best_of_n: bool = False
    sft_max_per_prompt: int | None = None
    sft_threshold: float | None = None
    dpo_min_margin: float = 0.0
    dpo_pairs: int | None = None
    dpo_all_pairs: bool = False
    dpo_any_outcome: bool = False
    dpo_threshold: float | None = None
    # training: the user's own LLaMA-Factory YAML(s), run in order each round
    train_yaml: str | list[str] = ""
    launcher: str = "plain"
    nproc_per_node: int = 1
    accelerate_config: str | None = None
    #: LoRA rounds: merge with ``llamafactory-cli export`` before the next round (else the adapter is carried on)
    merge_lora: bool = True
    export_keys: dict[str, Any] = field(default_factory=lambda: {"export_device": "cpu"})
    # evaluation on the held-out prompts (the same seed every round: rounds are paired image by image)
    eval_candidates: int = 8
    eval_seed: int = 12345
    eval_batch_size: int = 64
    #: an exact checker ``module:function(image, prompt) -> bool``; ``shapesworld`` = unigap.shapesworld.world:oracle
    oracle: str | None = None
    #: an independent judge: any transformers image-text-to-text model in a local folder (measures only)
    judge_model: str | None = None
    judge_model_answers: list[str] = field(default_factory=lambda: ["Yes", "No"])
    judge_model_threshold: float = 0.5
    # early stop
    early_stop_metric: str | None = None
    early_stop_patience: int = 1
    early_stop_min_delta: float = 0.0
    progress: bool = True

    # ------------------------------------------------------------------ derived
    @property
    def train_yamls(self) -> list[str]:
        return [self.train_yaml] if isinstance(self.train_yaml, str) else list(self.train_yaml)

    @property
    def builds(self) -> tuple[str, ...]:
        return ("sft", "dpo") if self.build == "both" else (self.build,)

    def best_metric(self) -> str:
        """The score that marks the best round (and stops early when asked)."""
        if self.early_stop_metric:
            return self.early_stop_metric
        return "oracle_accuracy" if self.oracle else "judge_accuracy" if self.judge_model else "non_unification"

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "sampling":
                out.update(self.sampling)
            else:
                out[f.name] = getattr(self, f.name)
        return out

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        for key in ("model_name_or_path", "output_dir", "train_prompts", "eval_prompts", "train_yaml"):
            if not getattr(self, key):
                raise LoopConfigError(f"{key} is required")
        for key in ("train_prompts", "eval_prompts"):
            if not Path(getattr(self, key)).is_file():
                raise LoopConfigError(f"{key}: {getattr(self, key)} does not exist")
        for key in ("rounds", "num_candidates", "eval_candidates", "batch_size", "eval_batch_size", "selfplay_nproc",
                    "nproc_per_node", "early_stop_patience"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "rounds" else 1):
                raise LoopConfigError(f"{key} must be an integer >= {0 if key == 'rounds' else 1}, got {value!r}")
        for key in ("max_train_prompts", "max_eval_prompts", "sft_max_per_prompt", "dpo_pairs"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LoopConfigError(f"{key} must be an integer >= 1 or null, got {value!r}")
        for key, allowed in (("launcher", LAUNCHERS), ("selfplay_launcher", LAUNCHERS), ("build", BUILDS)):
            if getattr(self, key) not in allowed:
                raise LoopConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                                      f"{did_you_mean(str(getattr(self, key)), list(allowed))}")
        for key in ("judge_threshold", "judge_model_threshold", "sft_threshold", "dpo_threshold", "dpo_min_margin"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= float(value) <= 1.0):
                raise LoopConfigError(f"{key} must be a number in [0, 1], got {value!r}")
        if "{prompt}" not in self.judge_question:
            raise LoopConfigError(f"judge_question must contain '{{prompt}}', got {self.judge_question!r}")
        if self.early_stop_metric is not None and self.early_stop_metric not in SCORES:
            raise LoopConfigError(f"early_stop_metric must be one of {', '.join(SCORES)}, got "
                                  f"{self.early_stop_metric!r}{did_you_mean(self.early_stop_metric, list(SCORES))}")
        metric = self.best_metric()
        if metric.startswith("oracle") and not self.oracle:
            raise LoopConfigError(f"early_stop_metric {metric} needs an oracle")
        if metric.startswith("judge_") and not self.judge_model:
            raise LoopConfigError(f"early_stop_metric {metric} needs a judge_model")
        if self.judge_model and not (Path(self.judge_model) / "config.json").is_file():
            raise LoopConfigError(f"judge_model: {self.judge_model} is not a local model folder (no config.json)")
        answers = self.judge_model_answers
        if not (isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) and a for a in answers)):
            raise LoopConfigError(f"judge_model_answers must be two words (yes, no), got {answers!r}")
        if not isinstance(self.export_keys, dict):
            raise LoopConfigError(f"export_keys must be a mapping of llamafactory-cli export keys, got {self.export_keys!r}")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise LoopConfigError(f"accelerate_config: {self.accelerate_config} does not exist")
        if not self.train_yamls:
            raise LoopConfigError("train_yaml must name at least one LLaMA-Factory training YAML")


def load_loop_config(path: str | None, overrides: Sequence[str] = ()) -> LoopConfig:
    """A loop YAML plus ``key=value`` overrides; unknown keys get a "did you mean"."""
    import yaml

    values: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise LoopConfigError(f"loop config {path} does not exist")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise LoopConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise LoopConfigError(f"{path} must hold a mapping of keys to values")
        values.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LoopConfigError(f"override {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(value) if value.strip() else None
    known = [f.name for f in dataclasses.fields(LoopConfig) if f.name != "sampling"]
    generation: set[str] = set()
    if any(key not in known for key in values):  # generation keys: only then are the families (torch) imported
        from ..models import sampling_keys

        generation = set(sampling_keys(selfplay_only=True))
    for key in values:
        if key not in known and key not in generation:
            raise LoopConfigError(f"unknown loop key '{key}'{did_you_mean(key, known + sorted(generation))}")
    sampling = {k: values.pop(k) for k in list(values) if k in generation}
    config = LoopConfig(**values, sampling=sampling)
    config.validate()
    for template in config.train_yamls:
        read_train_template(template)  # a bad training YAML fails before anything runs
    return config


# ---------------------------------------------------------------------------------- the user's training YAML
def read_train_template(path: str) -> dict[str, Any]:
    """The user's LLaMA-Factory training YAML as written (key order kept)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise LoopConfigError(f"train_yaml: {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise LoopConfigError(f"train_yaml: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise LoopConfigError(f"train_yaml: {path} must hold a mapping of LLaMA-Factory keys")
    stage = data.get("stage", "sft")
    if stage not in ("sft", "dpo"):
        raise LoopConfigError(f"train_yaml: {path}: stage must be sft or dpo for the loop, got {stage!r}")
    return data


def template_dataset_kind(template: Mapping[str, Any]) -> str:
    return "dpo" if template.get("stage", "sft") == "dpo" else "sft"


def round_train_config(template: Mapping[str, Any], *, model: str, adapter: str | None, datasets: Sequence[str],
                       dataset_dir: str, output_dir: str) -> dict[str, Any]:
    """One round's training keys: the user's YAML with only the loop's keys filled in.

    Every key the user wrote keeps its value and its place (DeepSpeed, FSDP, learning rate,
    LoRA settings...); ``model_name_or_path``, ``dataset``, ``dataset_dir`` and ``output_dir``
    are set (in place when present, else appended), ``adapter_name_or_path`` is set when the
    round starts from a LoRA adapter (and dropped otherwise), and a ``replay_pool`` (C-SFT's
    discard-pool replay) names the round's SFT dataset.
    """
    config = dict(template)
    filled: dict[str, Any] = {"model_name_or_path": model, "dataset": ",".join(datasets),
                              "dataset_dir": dataset_dir, "output_dir": output_dir}
    if adapter:
        filled["adapter_name_or_path"] = adapter
    else:
        config.pop("adapter_name_or_path", None)
    if "replay_pool" in config:
        filled["replay_pool"] = datasets[0]
    for key, value in filled.items():
        config[key] = value
    return config


# ---------------------------------------------------------------------------------- what decides results
def result_settings(config: LoopConfig) -> dict[str, Any]:
    """The settings a finished stage's results depend on (the training YAMLs by content, the prompt files
    by a checksum of their bytes)."""
    out = {k: v for k, v in config.public().items() if k not in NON_RESULT_KEYS}
    out["train_yaml"] = [read_train_template(p) for p in config.train_yamls]
    for key in ("train_prompts", "eval_prompts"):
        out[key] = {"path": getattr(config, key), "sha256": _sha256(getattr(config, key))}
    if config.accelerate_config:
        out["accelerate_config"] = {"path": config.accelerate_config, "sha256": _sha256(config.accelerate_config)}
    return json.loads(json.dumps(out, default=str))


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing key, descending into mappings and lists
    (``train_yaml[0].learning_rate: 0.0001 -> 0.0002``)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += describe_changes(a, b, name + ".")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, Mapping) and isinstance(y, Mapping) for x, y in zip(a, b)):
            for i, (x, y) in enumerate(zip(a, b)):
                out += describe_changes(x, y, f"{name}[{i}].")
        else:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
