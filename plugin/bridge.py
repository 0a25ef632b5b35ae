"""The one module that touches LLaMA-Factory internals.

``unigap._bootstrap`` calls :func:`on_host_module_loaded` right after each
hooked LLaMA-Factory module has executed.  Each handler below extends that
module in place, so the unmodified ``llamafactory-cli`` gains:

* ``llamafactory.data.mm_plugin``: the ``unigap_janus`` multimodal plugin.  An
  ``<image>`` in a user turn is an image to *understand* (expanded to vision
  placeholders, pixels go to the vision tower); an ``<image>`` in an assistant
  turn is an image to *generate*: its exact codes are read from the PNG's
  ``.codes.npy`` sidecar and written into the token stream (see
  ``unigap.models.base``).
* ``llamafactory.data.template``: the ``janus`` template (Janus-Pro's chat format).
* ``llamafactory.data.processor``: DPO rows whose chosen and rejected answers are
  different images (the host gives both answers one shared ``images`` list),
  and a check that no generated image was cut by ``cutoff_len``.
* ``llamafactory.hparams.parser``: unigap's YAML keys (``gen_*``) and "did you
  mean" for misspelt keys.
* ``llamafactory.model.model_utils.visual`` / ``llamafactory.model.loader``: the
  host's freeze flags and LoRA targets for unified models; the VQ image
  tokenizer is always frozen.
* ``llamafactory.train.sft.workflow`` / ``llamafactory.train.dpo.trainer``:
  trainers whose loss covers image codes (generation head) and text (text head).

Host classes are subclassed lazily (the host module must have loaded first);
the module-level ``__getattr__`` rebuilds them on demand so that pickling by
reference (datasets' multiprocessing, dill fingerprints) works.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Callable

TEMPLATE_NAME = "janus"
PLUGIN_NAME = "unigap_janus"
SUPPORTED_HOST = ("0.9.5",)

#: A generated image inside a message, between the plugin and the template (never in user text).
_GEN_PREFIX = "\x00unigap-gen:"
_GEN_MARKER = re.compile(re.escape(_GEN_PREFIX) + "([0-9,]*)\x00")


def _gen_marker(codes) -> str:
    return _GEN_PREFIX + ",".join(str(int(c)) for c in codes) + "\x00"


# ----------------------------------------------------------------------------- dispatch
def on_host_module_loaded(module) -> None:
    handler = _HANDLERS.get(module.__name__)
    if handler is None:
        return
    try:
        handler(module)
    except Exception as err:  # never break the host for users who do not use unigap
        where = traceback.extract_tb(err.__traceback__)[-1]
        print(
            f"[unigap] could not extend {module.__name__}: {type(err).__name__}: {err} "
            f"({os.path.basename(where.filename)}:{where.lineno}). unigap's templates/trainers may be missing; "
            "set UNIGAP_DISABLE=1 to run LLaMA-Factory without unigap.",
            file=sys.stderr,
        )


def _logger():
    from llamafactory.extras import logging as host_logging

    return host_logging.get_logger("llamafactory.unigap")


# ----------------------------------------------------------------------------- lazily built host subclasses
_CLASSES: dict[str, type] = {}


def _get_class(name: str) -> type:
    if name not in _CLASSES:
        cls = _FACTORIES[name]()
        # building may have re-entered through an import hook; keep the first one
        _CLASSES.setdefault(name, cls)
    return _CLASSES[name]


def __getattr__(name: str) -> Any:  # PEP 562: lets pickle find the lazily built classes
    if name in _FACTORIES:
        return _get_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _named(cls: type, name: str) -> type:
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__
    return cls


# ----------------------------------------------------------------------------- the multimodal plugin
class PairImages(list):
    """The ``images`` of one DPO row, plus which of them belong to each answer."""

    def __init__(self, images, by_message: dict[int, list]):
        super().__init__(images)
        self.by_message = by_message

    def for_messages(self, messages) -> list:
        return self.by_message.get(id(messages[-1]), list(self))


def _count_images(messages) -> int:
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)


def _build_plugin() -> type:
    from llamafactory.data.data_utils import Role
    from llamafactory.data.mm_plugin import BasePlugin
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    from .codes import GenImageError, load_gen_target

    @dataclass
    class UnifiedImagePlugin(BasePlugin):
        """Images to understand (user turns) and images to generate (assistant turns)."""

        adapter_family: str = "janus"
        spec: Any = field(default=None, repr=False)

        # -- binding to a checkpoint (done by the template when the tokenizer is fixed)
        def bind(self, tokenizer) -> None:
            from transformers import AutoConfig, GenerationConfig

            from .models import adapter_class_for, supported_types

            path = tokenizer.name_or_path
            config = AutoConfig.from_pretrained(path)
            cls = adapter_class_for(config)
            if cls is None or cls.family != self.adapter_family:
                raise ValueError(
                    f"the '{TEMPLATE_NAME}' template is unigap's template for unified {self.adapter_family} models, "
                    f"but {path} is a '{getattr(config, 'model_type', '?')}' model (unigap supports: "
                    f"{', '.join(supported_types())}). Use a template that matches the model."
                )
            try:
                generation_config = GenerationConfig.from_pretrained(path)
            except OSError:
                generation_config = None
            self.spec = cls.read_spec(config, tokenizer, generation_config)
            self.adapter_cls = cls

        def _require_spec(self):
            if self.spec is None:
                raise RuntimeError(f"the '{TEMPLATE_NAME}' template was used before a tokenizer was bound to it")
            return self.spec

        # -- messages -> strings (before tokenization)
        def process_messages(self, messages, images, videos, audios, processor):
            self._validate_input(processor, images, videos, audios)
            spec = self._require_spec()
            if isinstance(images, PairImages):
                images = images.for_messages(messages)
            wanted = _count_images(messages)
            if wanted != len(images):
                raise ValueError(
                    f"{len(images)} images for {wanted} {IMAGE_PLACEHOLDER} placeholders in {_brief(messages)}"
                )
            prompt = next((m["content"] for m in messages if m["role"] == Role.USER.value), "")
            und_text = self.adapter_cls.und_image_text(spec)
            pending = iter(images)
            out = deepcopy(messages)
            for message in out:
                pieces = message["content"].split(IMAGE_PLACEHOLDER)
                text = [pieces[0]]
                for piece in pieces[1:]:
                    image = next(pending)
                    if message["role"] == Role.ASSISTANT.value:
                        try:
                            text.append(_gen_marker(load_gen_target(image, spec)))
                        except GenImageError as err:
                            raise GenImageError(f"generation row with prompt {prompt[:80]!r}: {err}") from None
                    else:
                        text.append(und_text)
                    text.append(piece)
                message["content"] = "".join(text)
            return out

        # -- runs of image tokens in a tokenized row
        def image_runs(self, ids) -> list[tuple[str, int, int]]:
            """(kind, start, length) of each understanding ('und') / generated ('gen') image."""
            import numpy as np

            spec = self._require_spec()
            ids = np.asarray(ids)
            kind = np.where(ids >= spec.gen_offset, 2, np.where(ids == spec.image_token_id, 1, 0))
            edges = np.flatnonzero(np.diff(kind, prepend=0, append=0))  # where the kind changes
            return [
                ("gen" if kind[start] == 2 else "und", int(start), int(end - start))
                for start, end in zip(edges[:-1], edges[1:])
                if kind[start]
            ]

        def check_row(self, ids, tokenizer, cutoff_len: int) -> None:
            """Fail if ``cutoff_len`` cut an image of this row (the model would learn a broken image)."""
            spec = self._require_spec()
            for kind, start, length in self.image_runs(ids):
                full = spec.num_image_tokens if kind == "gen" else spec.und_image_tokens
                if length != full:
                    head = tokenizer.decode([t for t in ids[:80] if t < spec.gen_offset], skip_special_tokens=True)
                    raise ValueError(
                        f"cutoff_len={cutoff_len} cut a{' generated' if kind == 'gen' else 'n input'} image of the "
                        f"row starting {head.strip()[:80]!r} to {length} of {full} tokens; raise cutoff_len to at "
                        f"least {start + full + 3}"
                    )

        # -- batch -> model inputs (in the collator)
        def get_mm_inputs(self, images, videos, audios, imglens, vidlens, audlens, batch_ids, processor):
            self._validate_input(processor, images, videos, audios)
            und, start = [], 0
            for count, ids in zip(imglens, batch_ids):
                sample = images[start : start + count]
                start += count
                kinds = [kind for kind, _, _ in self.image_runs(ids)]
                if len(kinds) > len(sample):
                    raise ValueError(f"a row has {len(kinds)} image token runs but only {len(sample)} images")
                und += [image for image, kind in zip(sample, kinds) if kind == "und"]
            return self._get_mm_inputs(und, videos, audios, processor)

    return _named(UnifiedImagePlugin, "UnifiedImagePlugin")


def _brief(messages) -> str:
    text = " | ".join(f"{m['role']}: {m['content'][:60]!r}" for m in messages)
    return text[:300]


# ----------------------------------------------------------------------------- the template
def _build_template() -> type:
    from llamafactory.data.data_utils import Role
    from llamafactory.data.template import Template

    @dataclass
    class UnifiedTemplate(Template):
        """Janus-Pro's chat format, with generated images written as code ids."""

        #: system prompt for rows that answer in text (image generation rows use none)
        understanding_system: str = ""

        def fix_special_tokens(self, tokenizer) -> None:
            super().fix_special_tokens(tokenizer)
            self.mm_plugin.bind(tokenizer)

        def _encode(self, tokenizer, messages, system, tools):
            assistant = Role.ASSISTANT.value
            generates = any(m["role"] == assistant and _GEN_MARKER.search(m["content"]) for m in messages)
            if not system and not generates:
                system = self.understanding_system
            # Janus writes "<|Assistant|>: answer" but "<|Assistant|>:<begin_of_image>..."
            messages = [
                dict(m, content=" " + m["content"])
                if m["role"] == assistant and not _GEN_MARKER.match(m["content"])
                else m
                for m in messages
            ]
            return super()._encode(tokenizer, messages, system, tools)

        def _convert_elements_to_ids(self, tokenizer, elements) -> list[int]:
            spec = self.mm_plugin.spec
            ids: list[int] = []
            for elem in elements:
                if not (isinstance(elem, str) and _GEN_PREFIX in elem):
                    ids += super()._convert_elements_to_ids(tokenizer, [elem])
                    continue
                pos = 0
                for match in _GEN_MARKER.finditer(elem):
                    ids += super()._convert_elements_to_ids(tokenizer, [elem[pos : match.start()]])
                    codes = [int(c) for c in match.group(1).split(",") if c]
                    ids += [spec.boi_token_id] + [spec.gen_offset + c for c in codes] + [spec.eoi_token_id]
                    pos = match.end()
                ids += super()._convert_elements_to_ids(tokenizer, [elem[pos:]])
            return ids

    return _named(UnifiedTemplate, "UnifiedTemplate")


# ----------------------------------------------------------------------------- YAML keys
def _build_args() -> type:
    from llamafactory.hparams.finetuning_args import FinetuningArguments

    @dataclass
    class UnigapFinetuningArguments(FinetuningArguments):
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
        replay_cfg_scale: float | None = field(default=None, metadata={"help": "unigap replay (default: the run's)."})
        replay_temperature: float | None = field(default=None, metadata={"help": "unigap replay (default: the run's)."})
        replay_top_k: int | None = field(default=None, metadata={"help": "unigap replay (default: the run's)."})
        replay_top_p: float | None = field(default=None, metadata={"help": "unigap replay (default: the run's)."})
        replay_seed: int | None = field(
            default=None, metadata={"help": "unigap replay: base seed; epoch E draws with seed + E (default: the run's)."}
        )
        replay_batch_size: int = field(default=16, metadata={"help": "unigap replay: images drawn per batch."})

        def __post_init__(self):
            super().__post_init__()
            from .curriculum import CurriculumConfig, parse_levels
            from .replay import parse_epochs

            CurriculumConfig(
                difficulty=self.curriculum_difficulty, pacing=self.curriculum_pacing,
                start=float(self.curriculum_start), full_at=float(self.curriculum_full_at),
                levels=parse_levels(self.curriculum_levels), stages=int(self.curriculum_stages),
                unlabeled=self.curriculum_unlabeled,
            ).validate()
            self.replay_epochs = ",".join(str(e) for e in parse_epochs(self.replay_epochs)) or None
            if self.replay_epochs and not self.replay_pool:
                raise ValueError("replay_epochs is set but replay_pool is not: name the discard pool to replay")
            if not 0.0 <= self.gen_prompt_dropout < 1.0:
                raise ValueError(f"gen_prompt_dropout must be in [0, 1), got {self.gen_prompt_dropout}")
            if self.gen_loss_weight < 0:
                raise ValueError(f"gen_loss_weight must be >= 0, got {self.gen_loss_weight}")

    return _named(UnigapFinetuningArguments, "UnigapFinetuningArguments")


def _unknown_keys_error(parser, args: dict) -> ValueError | None:
    from dataclasses import fields

    known = {f.name for dtype in parser.dataclass_types for f in fields(dtype) if f.init}
    unknown = sorted(set(args) - known)
    if not unknown:
        return None
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    source = next((a for a in sys.argv[1:2] if a.endswith((".yaml", ".yml", ".json"))), "the arguments")
    return ValueError(f"unknown key(s) in {source}: {', '.join(hints)}")


# ----------------------------------------------------------------------------- the host's data pipeline
#: the training set's processor and data arguments, captured while the host tokenizes it (replay reuses them)
_TRAIN_DATA: dict[str, Any] = {}


def _tokenize_rows(rows: list[dict[str, Any]], ranking: bool) -> list[dict[str, Any]]:
    """sharegpt rows -> tokenized rows, through the host's own converter and the run's own processor."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import DatasetAttr

    from .data_builders.sharegpt import dataset_info_entry

    data_args, processor = _TRAIN_DATA["data_args"], _TRAIN_DATA["processor"]
    attr = DatasetAttr("file", dataset_name="unigap_replay")
    attr.join(dataset_info_entry("data.jsonl", ranking=ranking))
    convert = get_dataset_converter(attr.formatting, attr, data_args)
    aligned = [convert({k: v for k, v in row.items() if k != "unigap"}) for row in rows]
    batch = {key: [a[key] for a in aligned] for key in aligned[0]}
    out = processor.preprocess_dataset(batch)
    keys = list(out)
    return [{key: out[key][i] for key in keys} for i in range(len(out[keys[0]]) if keys else 0)]


def _make_curriculum(trainer, ranking: bool):
    """The curriculum sampler / replay for this trainer, or None when the YAML asks for neither."""
    from .train_curriculum import DataContext, TrainingCurriculum, wanted

    fa = trainer.finetuning_args
    if not wanted(fa):
        return None
    if trainer._unigap is None:
        raise ValueError("curriculum_difficulty / replay_epochs are unigap options for unified models (template: janus)")
    data = None
    if _TRAIN_DATA:
        da = _TRAIN_DATA["data_args"]
        data = DataContext(
            dataset_names=list(da.dataset or []),
            dataset_dir=da.dataset_dir,
            media_dir=da.media_dir or da.dataset_dir,
            packing=bool(da.packing),
            streaming=bool(da.streaming),
            tokenize=_tokenize_rows,
        )
    return TrainingCurriculum(trainer, fa, data, trainer._unigap, ranking, _logger().info_rank0)


def _checkpoint_path(args, resume_from_checkpoint) -> str | None:
    if isinstance(resume_from_checkpoint, bool):
        if not resume_from_checkpoint:
            return None
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(args.output_dir)
    return resume_from_checkpoint


# ----------------------------------------------------------------------------- trainers
def _unified_setup(trainer, extra_models=()) -> Any:
    from .training import adapter_for_model, install_forward

    adapter = adapter_for_model(trainer.model, trainer.processing_class)
    if adapter is None:
        return None
    install_forward(trainer.model, adapter)
    for other in extra_models:
        if other is not None:
            install_forward(other, adapter_for_model(other, trainer.processing_class))
    return adapter


def _build_sft_trainer() -> type:
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

    from .training import FORWARD_KEY, RunningStats

    class UnifiedSeq2SeqTrainer(CustomSeq2SeqTrainer):
        """The host's SFT trainer; for unified models the loss also covers image codes."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._unigap = _unified_setup(self)
            if self._unigap is None:
                return
            for flag in ("use_dft_loss", "use_eaft_loss", "use_asft_loss"):
                if getattr(self.finetuning_args, flag, False):
                    raise ValueError(f"{flag} is not supported for unified-model training by unigap")
            self._unigap_stats = RunningStats()
            self._unigap_cur = _make_curriculum(self, ranking=False)

        def _get_train_sampler(self, *args, **kwargs):
            if getattr(self, "_unigap_cur", None) is not None:
                return self._unigap_cur.sampler()
            return super()._get_train_sampler(*args, **kwargs)

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            if getattr(self, "_unigap_cur", None) is not None:
                self._unigap_cur.restore(_checkpoint_path(self.args, resume_from_checkpoint))
            return super().train(resume_from_checkpoint, *args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
            if self._unigap is None:
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch, **kwargs
                )
            fa = self.finetuning_args
            request = {
                "mode": "sft",
                "prompt_dropout": fa.gen_prompt_dropout if model.training else 0.0,
                "gen_weight": fa.gen_loss_weight,
            }
            out = model(**inputs, **{FORWARD_KEY: request})
            if model.training:
                self._unigap_stats.add(out)
            return (out["loss"], out) if return_outputs else out["loss"]

        def log(self, logs, *args, **kwargs):
            if self._unigap is not None and "loss" in logs:  # every rank logs at the same steps
                totals = self.accelerator.reduce(self._unigap_stats.take().to(self.args.device), reduction="sum")
                logs.update(RunningStats.summarize(totals.cpu()))
                if self._unigap_cur is not None:
                    logs.update(self._unigap_cur.log_values())
            return super().log(logs, *args, **kwargs)

    return _named(UnifiedSeq2SeqTrainer, "UnifiedSeq2SeqTrainer")


def _build_dpo_trainer() -> type:
    from llamafactory.train.dpo.trainer import CustomDPOTrainer

    import torch

    from .fsutil import write_text_atomic
    from .training import FORWARD_KEY, fingerprint, pair_keys, sequence_logps, unwrap_model

    class UnifiedDPOTrainer(CustomDPOTrainer):
        """The host's DPO trainer; for unified models log-probs cover image codes and text."""

        def __init__(self, model, ref_model, finetuning_args, processor, disable_dropout=True, **kwargs):
            super().__init__(model, ref_model, finetuning_args, processor, disable_dropout=disable_dropout, **kwargs)
            self._unigap = _unified_setup(self, extra_models=(self.ref_model,))
            self._ref_cache: dict[bytes, tuple[float, float]] | None = None
            if self._unigap is not None and finetuning_args.ld_alpha is not None:
                raise ValueError("ld_alpha (LD-DPO) is not supported for unified-model training by unigap")
            self._unigap_cur = _make_curriculum(self, ranking=True)

        def _get_train_sampler(self, *args, **kwargs):
            if getattr(self, "_unigap_cur", None) is not None:
                return self._unigap_cur.sampler()
            return super()._get_train_sampler(*args, **kwargs)

        def log(self, logs, *args, **kwargs):
            if getattr(self, "_unigap_cur", None) is not None and "loss" in logs:
                logs.update(self._unigap_cur.log_values())
            return super().log(logs, *args, **kwargs)

        def concatenated_forward(self, model, batch, is_ref_model=False):
            if self._unigap is None:
                return super().concatenated_forward(model, batch, is_ref_model=is_ref_model)
            out = model(**batch, **{FORWARD_KEY: {"mode": "nll"}})
            average = self.loss_type in ("ipo", "orpo", "simpo")
            logps, length = sequence_logps(out, average=average)
            half = logps.size(0) // 2
            chosen, rejected = logps.split(half)
            chosen_avg = chosen if average else chosen / length[:half].clamp(min=1)
            # unigap never materialises full logits; the "logits/*" metrics report mean target log-probs
            per_token = (logps if average else logps / length.clamp(min=1)).detach()
            return {
                "chosen_logps": chosen,
                "rejected_logps": rejected,
                "chosen_logits": per_token[:half],
                "rejected_logits": per_token[half:],
                "chosen_logps_avg": chosen_avg,
            }

        def compute_reference_log_probs(self, model, batch):
            if self._ref_cache is None:
                return super().compute_reference_log_probs(model, batch)
            try:
                pairs = [self._ref_cache[key] for key in pair_keys(batch)]
            except KeyError:
                raise RuntimeError("a DPO pair has no precomputed reference log-probs (gen_precompute_ref)") from None
            values = torch.tensor(pairs, dtype=torch.float32, device=batch["input_ids"].device)
            return values[:, 0], values[:, 1]

        def _precompute_reference(self) -> int:
            """Reference log-probs of every pair, computed once; then the reference copy is released."""
            from torch.utils.data import DataLoader

            datasets = [self.train_dataset]
            if isinstance(self.eval_dataset, dict):
                datasets += list(self.eval_dataset.values())
            elif self.eval_dataset is not None:
                datasets.append(self.eval_dataset)
            cache: dict[bytes, tuple[float, float]] = {}
            for dataset in datasets:
                loader = DataLoader(
                    dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
                )
                for batch in loader:
                    batch = self._prepare_inputs(batch)
                    chosen, rejected = super().compute_reference_log_probs(self.model, batch)
                    cache.update(zip(pair_keys(batch), zip(chosen.tolist(), rejected.tolist())))
            self._ref_cache = cache
            if self.ref_model is not None:
                self.ref_model = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return len(cache)

        def _reference_params(self):
            if self.ref_model is not None:
                return "a frozen copy of the model", list(unwrap_model(self.ref_model).named_parameters())
            base = unwrap_model(self.model)
            params = [(n, p) for n, p in base.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
            return "the base weights under the adapter (adapter disabled)", params

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            if getattr(self, "_unigap_cur", None) is not None:
                self._unigap_cur.restore(_checkpoint_path(self.args, resume_from_checkpoint))
            kwargs["resume_from_checkpoint"] = resume_from_checkpoint
            if self._unigap is None or not self.finetuning_args.use_ref_model:
                return super().train(*args, **kwargs)
            kind, params = self._reference_params()
            before = fingerprint(params)
            extra = {}
            if self.finetuning_args.gen_precompute_ref and self._ref_cache is None:
                separate = self.ref_model is not None
                extra["precomputed_pairs"] = self._precompute_reference()
                kind = f"log-probs precomputed before training from {kind}"
                _logger().info_rank0(f"unigap: precomputed reference log-probs of {extra['precomputed_pairs']} pairs")
                if separate:  # the copy is gone: check it did not move while it was used, and let it be freed
                    after, params = fingerprint(params), None
            result = super().train(*args, **kwargs)
            if params is not None:
                after = fingerprint(params)
            changed = [name for name in before if before[name] != after[name]]
            if self.is_world_process_zero():
                import json

                report = {"reference": kind, "tensors": len(before), "unchanged": not changed, "changed": changed}
                report.update(extra)
                path = os.path.join(self.args.output_dir, "unigap_reference_check.json")
                write_text_atomic(path, json.dumps(report, indent=2) + "\n")
            if changed:
                raise RuntimeError(f"the DPO reference moved during training ({len(changed)} tensors, e.g. {changed[0]})")
            _logger().info_rank0(f"unigap: DPO reference ({kind}) verified unchanged over {len(before)} tensors")
            return result

    return _named(UnifiedDPOTrainer, "UnifiedDPOTrainer")


_FACTORIES: dict[str, Callable[[], type]] = {
    "UnifiedImagePlugin": _build_plugin,
    "UnifiedTemplate": _build_template,
    "UnigapFinetuningArguments": _build_args,
    "UnifiedSeq2SeqTrainer": _build_sft_trainer,
    "UnifiedDPOTrainer": _build_dpo_trainer,
}


# ----------------------------------------------------------------------------- module handlers
def _on_mm_plugin(mod) -> None:
    if PLUGIN_NAME not in mod.PLUGINS:
        mod.register_mm_plugin(PLUGIN_NAME, _get_class("UnifiedImagePlugin"))


def _on_template(mod) -> None:
    from llamafactory.data.formatter import EmptyFormatter, StringFormatter

    from .models.janus import DEFAULT_SYSTEM, USER_FORMAT

    if TEMPLATE_NAME in mod.TEMPLATES:
        return
    mod.register_template(
        name=TEMPLATE_NAME,
        format_user=StringFormatter(slots=[USER_FORMAT.replace("{content}", "{{content}}")]),
        format_assistant=StringFormatter(slots=["{{content}}", {"eos_token"}]),
        format_system=StringFormatter(slots=["{{content}}\n\n"]),
        format_prefix=EmptyFormatter(slots=[{"bos_token"}]),
        mm_plugin=mod.get_mm_plugin(PLUGIN_NAME, image_token="<image_placeholder>"),
        template_class=_get_class("UnifiedTemplate"),
    )
    mod.TEMPLATES[TEMPLATE_NAME].understanding_system = DEFAULT_SYSTEM


def _on_processor(mod) -> None:
    def owned(processor) -> bool:
        return isinstance(processor.template.mm_plugin, _get_class("UnifiedImagePlugin"))

    pairwise = mod.PairwiseDatasetProcessor
    encode = pairwise._encode_data_example

    def _encode_data_example(self, prompt, response, system, tools, images, videos, audios):
        if owned(self) and images and len(response) >= 2:
            k, c = _count_images(prompt), _count_images(response[:1])
            r = _count_images(response[1:2])
            if c or r:
                if len(images) != k + c + r:
                    raise ValueError(
                        f"a DPO row has {len(images)} images but {k} prompt + {c} chosen + {r} rejected "
                        f"placeholders; list the prompt's images, then the chosen's, then the rejected's: "
                        f"{_brief(prompt + response[:2])}"
                    )
                shared = list(images[:k])
                images = PairImages(
                    images,
                    {id(response[0]): shared + list(images[k : k + c]), id(response[1]): shared + list(images[k + c :])},
                )
        return encode(self, prompt, response, system, tools, images, videos, audios)

    pairwise._encode_data_example = _encode_data_example

    def checked(cls, keys):
        preprocess = cls.preprocess_dataset

        def preprocess_dataset(self, examples):
            out = preprocess(self, examples)
            if owned(self):
                for key in keys:
                    for ids in out.get(key, []):
                        self.template.mm_plugin.check_row(ids, self.tokenizer, self.data_args.cutoff_len)
            return out

        cls.preprocess_dataset = preprocess_dataset

    checked(mod.SupervisedDatasetProcessor, ("input_ids",))
    checked(pairwise, ("chosen_input_ids", "rejected_input_ids"))


def _on_data_loader(mod) -> None:
    get_processor = mod._get_dataset_processor
    preprocess = mod._get_preprocessed_dataset
    latest: dict[str, Any] = {}

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        out = get_processor(data_args, stage, template, tokenizer, processor, do_generate=do_generate)
        latest.update(processor=out, data_args=data_args, stage=stage)
        return out

    def _get_preprocessed_dataset(dataset, data_args, training_args, stage, template, tokenizer, processor=None,
                                  is_eval=False):
        latest.clear()
        out = preprocess(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval=is_eval)
        if not is_eval and latest:
            _TRAIN_DATA.clear()
            _TRAIN_DATA.update(latest)
        return out

    mod._get_dataset_processor = _get_dataset_processor
    mod._get_preprocessed_dataset = _get_preprocessed_dataset


def _on_parser(mod) -> None:
    from llamafactory.hparams.finetuning_args import FinetuningArguments

    args_cls = _get_class("UnigapFinetuningArguments")
    for name in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS"):
        group = getattr(mod, name, None)
        if isinstance(group, list):
            group[:] = [args_cls if cls is FinetuningArguments else cls for cls in group]

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


def _on_visual(mod) -> None:
    from .models import adapter_classes

    for cls in adapter_classes():
        if cls.family in mod.COMPOSITE_MODELS:
            continue
        groups = cls.freeze_patterns()
        mod._register_composite_model(
            model_type=cls.family,
            projector_keys=groups["projector"],
            vision_model_keys=groups["vision"],
            language_model_keys=groups["language"],
            lora_conflict_keys=groups["always_frozen"],
        )


def _on_loader(mod) -> None:
    init_adapter = mod.init_adapter

    def _init_adapter(config, model, model_args, finetuning_args, is_trainable):
        model = init_adapter(config, model, model_args, finetuning_args, is_trainable)
        from .models import adapter_class_for

        cls = adapter_class_for(config)
        if cls is not None and is_trainable:
            frozen = cls.freeze_patterns()["always_frozen"]
            count = 0
            for name, param in model.named_parameters():
                if any(key in name for key in frozen) and param.requires_grad:
                    param.requires_grad_(False)
                    count += param.numel()
            if count:
                _logger().info_rank0(f"unigap: froze {count} parameters of the image tokenizer ({', '.join(frozen)})")
        return model

    mod.init_adapter = _init_adapter


def _on_sft_workflow(mod) -> None:
    mod.CustomSeq2SeqTrainer = _get_class("UnifiedSeq2SeqTrainer")
    plot_loss = mod.plot_loss

    def _plot_loss(save_dictionary, keys=("loss",)):
        # also plot the per-head losses logged by unigap's trainer (skipped when absent)
        return plot_loss(save_dictionary, keys=[*keys, "gen_loss", "text_loss"])

    mod.plot_loss = _plot_loss


def _on_dpo_trainer(mod) -> None:
    mod.CustomDPOTrainer = _get_class("UnifiedDPOTrainer")


_HANDLERS: dict[str, Callable[[Any], None]] = {
    "llamafactory.data.mm_plugin": _on_mm_plugin,
    "llamafactory.data.template": _on_template,
    "llamafactory.data.processor": _on_processor,
    "llamafactory.data.loader": _on_data_loader,
    "llamafactory.hparams.parser": _on_parser,
    "llamafactory.model.model_utils.visual": _on_visual,
    "llamafactory.model.loader": _on_loader,
    "llamafactory.train.sft.workflow": _on_sft_workflow,
    "llamafactory.train.dpo.trainer": _on_dpo_trainer,
}
