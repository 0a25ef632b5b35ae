"""``llamafactory.hparams.parser``: unigap's YAML keys on the host's ``FinetuningArguments``, and
"did you mean" for misspelt keys.

The ``replay_<key>`` settings of C-SFT replay include every model family's
generation parameters (``replay_cfg_scale``, ...), taken from the families'
:attr:`~unigap.models.base.UnifiedAdapter.sampling` dataclasses.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from llamafactory.hparams.finetuning_args import FinetuningArguments

from ...errors import UnigapError
from ...models import adapter_classes
from ...suggest import unknown_keys_message
from .common import SUPPORTED_HOST


class ArgsError(UnigapError):
    """A unigap YAML key with a value that cannot work (the message names the key)."""


@dataclass
class _UnigapArguments(FinetuningArguments):
    gen_prompt_dropout: float = field(
        default=0.1,
        metadata={
            "help": "unigap: probability of replacing the prompt of an image-generation sample with pad tokens "
            "(trains the unconditional branch used by classifier-free guidance)."
        },
    )
    gen_loss_weight: float = field(
        default=1.0,
        metadata={"help": "unigap: weight of each image-code token relative to a text token in the SFT loss."},
    )
    gen_precompute_ref: bool = field(
        default=False,
        metadata={
            "help": "unigap DPO: compute the frozen reference's log-probs of every training/eval pair once "
            "before training, then drop the reference model (one model copy less in full fine-tuning, one "
            "forward pass less per step)."
        },
    )

    # -- curriculum sampler (unigap.curriculum)
    curriculum_difficulty: str = field(
        default="none",
        metadata={"help": "unigap curriculum: where a row's difficulty comes from: none (the host's sampler), "
                  "label (the prompt's difficulty label), acceptance or p_yes (the prompt's self-score in the "
                  "self-play run: share of accepted candidates / mean P(yes); higher = easier)."},
    )
    curriculum_pacing: str = field(
        default="linear",
        metadata={"help": "unigap curriculum: linear / sqrt (share of the easiest rows that may be drawn grows "
                  "from curriculum_start to 1 at curriculum_full_at of training), step (one difficulty stage "
                  "after another), order (every epoch easy to hard, no pacing)."},
    )
    curriculum_start: float = field(default=0.2, metadata={"help": "unigap curriculum: share open at step 0."})
    curriculum_full_at: float = field(
        default=0.5, metadata={"help": "unigap curriculum: share of training after which every row is open."}
    )
    curriculum_levels: str | None = field(
        default=None,
        metadata={"help": "unigap curriculum: order of difficulty labels, e.g. easy,medium,hard (default: easy < "
                  "medium < hard, then numbers, then alphabetical)."},
    )
    curriculum_stages: int = field(
        default=3, metadata={"help": "unigap curriculum: stages of the step pacing for acceptance / p_yes."}
    )
    curriculum_unlabeled: str = field(
        default="error",
        metadata={"help": "unigap curriculum: rows without unigap metadata: error, easiest or hardest."},
    )
    # -- curriculum replay (C-SFT, unigap.replay)
    replay_epochs: str | None = field(
        default=None,
        metadata={"help": "unigap replay: after how many epochs the current model retries the discard pool, "
                  "e.g. 10 or 5,10."},
    )
    replay_pool: str | None = field(
        default=None,
        metadata={"help": "unigap replay: the discard pool: a dataset written by `unigap build sft` (name in "
                  "dataset_dir or folder) or its discard_pool.jsonl."},
    )
    replay_num_candidates: int | None = field(default=None, metadata={"help": "unigap replay: N (default: the run's)."})
    replay_judge_threshold: float | None = field(default=None, metadata={"help": "unigap replay (default: the build's)."})
    replay_judge_question: str | None = field(default=None, metadata={"help": "unigap replay (default: the run's)."})
    replay_seed: int | None = field(
        default=None, metadata={"help": "unigap replay: base seed; epoch E draws with seed + E (default: the run's)."}
    )
    replay_batch_size: int = field(default=16, metadata={"help": "unigap replay: images drawn per batch."})

    def __post_init__(self):
        super().__post_init__()
        from ...curriculum import CurriculumConfig, parse_levels
        from ...replay import parse_epochs

        CurriculumConfig(
            difficulty=self.curriculum_difficulty, pacing=self.curriculum_pacing,
            start=float(self.curriculum_start), full_at=float(self.curriculum_full_at),
            levels=parse_levels(self.curriculum_levels), stages=int(self.curriculum_stages),
            unlabeled=self.curriculum_unlabeled,
        ).validate()
        self.replay_epochs = ",".join(str(e) for e in parse_epochs(self.replay_epochs)) or None
        if self.replay_epochs and not self.replay_pool:
            raise ArgsError("replay_epochs is set but replay_pool is not: name the discard pool to replay")
        if not 0.0 <= self.gen_prompt_dropout < 1.0:
            raise ArgsError(f"gen_prompt_dropout must be in [0, 1), got {self.gen_prompt_dropout}")
        if self.gen_loss_weight < 0:
            raise ArgsError(f"gen_loss_weight must be >= 0, got {self.gen_loss_weight}")


def _replay_sampling_fields() -> list[tuple[str, typing.Any, typing.Any]]:
    """``replay_<key>`` for every family's generation parameter (None: the self-play run's value)."""
    out, seen = [], set()
    for cls in adapter_classes():
        hints = typing.get_type_hints(cls.sampling)
        for key in cls.sampling.keys(selfplay_only=True):
            if key in seen:
                continue
            seen.add(key)
            kind = hints[key]
            help_text = f"unigap replay ({cls.family}: {cls.sampling.field_help().get(key, key)}; default: the run's)."
            out.append((f"replay_{key}", typing.Optional[kind], field(default=None, metadata={"help": help_text})))
    return out


def _build_arguments() -> type:
    cls = dataclasses.make_dataclass("UnigapFinetuningArguments", _replay_sampling_fields(), bases=(_UnigapArguments,))
    cls.__module__ = __name__
    return cls


UnigapFinetuningArguments = _build_arguments()


def replay_yaml_values(fa) -> dict[str, typing.Any]:
    """Every ``replay_<key>`` setting of the YAML, by key (None where not set)."""
    prefix = "replay_"
    return {f.name[len(prefix):]: getattr(fa, f.name) for f in dataclasses.fields(fa)
            if f.name.startswith(prefix) and f.name not in ("replay_epochs", "replay_pool", "replay_batch_size")}


def _unknown_keys_error(parser, args: dict) -> ArgsError | None:
    known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}
    unknown = sorted(set(args) - known)
    if not unknown:
        return None
    source = next((a for a in sys.argv[1:2] if a.endswith((".yaml", ".yml", ".json"))), "the arguments")
    return ArgsError(unknown_keys_message(unknown, known, source, cutoff=0.75))


def on_loaded(mod) -> None:
    for name in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS"):
        group = getattr(mod, name, None)
        if isinstance(group, list):
            group[:] = [UnigapFinetuningArguments if cls is FinetuningArguments else cls for cls in group]

    parse = mod._parse_args

    def _parse_args(parser, args=None, allow_extra_keys=False):
        args = mod.read_args(args)
        if isinstance(args, dict) and not allow_extra_keys:
            error = _unknown_keys_error(parser, args)
            if error is not None:
                raise error
        return parse(parser, args, allow_extra_keys=allow_extra_keys)

    mod._parse_args = _parse_args

    from llamafactory.extras.env import VERSION

    if VERSION not in SUPPORTED_HOST:
        print(f"[unigap] tested with llamafactory {', '.join(SUPPORTED_HOST)}; this is {VERSION}", file=sys.stderr)
