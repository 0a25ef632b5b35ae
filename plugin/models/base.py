"""The protocol every unified-model family implements: everything that differs between families.

A *unified* model both understands images (image + text -> text) and generates
them (text -> a grid of discrete image codes).  Nothing in unigap outside a
family's own folder (``unigap/models/<family>/``) knows how a family loads,
formats a chat, lays images out in a token sequence, samples, computes its
losses or judges: self-play, the builders, the host bridge and the trainers
all go through :class:`UnifiedAdapter`.  Adding a family = adding one folder
under ``unigap/models`` whose package defines a concrete subclass; the
registry in ``unigap.models`` finds it (see ``ARCHITECTURE.md``).

What a family implements (abstract below, each documented where declared):

* checkpoint: :meth:`matches`, :meth:`load`, :meth:`read_spec`, :meth:`freeze_patterns`
  (and :meth:`load_image_tokenizer`, by default the whole :meth:`load`);
* chat format: :meth:`chat_format` (the host builds its template from it);
* token layout: :meth:`gen_image_ids`, :meth:`und_image_text`, :meth:`image_runs`
  (and, derived here, :meth:`gen_codes_in`, :meth:`expected_run_length`);
* generation parameters: :attr:`sampling` (a :class:`SamplingParams` dataclass);
* the two branches: :meth:`generate`, :meth:`judge`, :meth:`encode_images`, :meth:`decode_codes`, :meth:`pixels`;
* training: :meth:`sft_loss` (the SFT loss terms) and :meth:`sequence_logps`
  (DPO's per-sequence log-probabilities, exact or an estimator), :attr:`batch_keys`;
* probes: :meth:`generation_loss` / :meth:`understanding_loss` / :meth:`backbone_parameters`.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from ..errors import UnigapError
from ..suggest import did_you_mean

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from PIL.Image import Image


class FamilyError(UnigapError):
    """A checkpoint, batch or parameter that does not fit a model family."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a checkpoint that the data path needs (read from its config)."""

    model_type: str
    #: codes per generated image
    num_image_tokens: int
    #: size of the image-code vocabulary
    codebook_size: int
    #: side in pixels of a generated image
    image_size: int
    #: placeholder tokens one understanding image expands to
    und_image_tokens: int
    image_token: str
    boi_token: str
    eoi_token: str
    image_token_id: int
    boi_token_id: int
    eoi_token_id: int
    pad_token_id: int
    bos_token_id: int | None
    #: ids >= gen_offset are image codes
    gen_offset: int
    #: (rows, columns) of a generated image's code grid; rows * columns == num_image_tokens
    code_shape: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.code_shape == (0, 0):
            side = int(round(self.num_image_tokens**0.5))
            if side * side == self.num_image_tokens:
                object.__setattr__(self, "code_shape", (side, side))
            else:
                object.__setattr__(self, "code_shape", (1, self.num_image_tokens))
        if self.code_shape[0] * self.code_shape[1] != self.num_image_tokens:
            raise FamilyError(f"code_shape {self.code_shape} does not hold {self.num_image_tokens} codes")


@dataclass(frozen=True)
class ChatFormat:
    """A family's chat layout, host-neutral; a host builds its template from it.

    ``{content}`` marks where a message goes.  A row that answers in text gets
    ``understanding_system`` as its system prompt when it has none, and its
    answer starts with ``text_answer_prefix``; an image answer follows the
    assistant header directly.  A family whose image-generation prompt is laid
    out differently from its chat turns (Show-o: ``<|t2i|>`` and the prompt
    between EOS tokens) gives that layout as ``generation_user``.
    """

    user: str
    assistant: str = "{content}"
    system: str = "{content}\n\n"
    #: the sequence starts with the tokenizer's BOS token
    bos_prefix: bool = True
    #: the sequence's answer ends with the tokenizer's EOS token
    eos_suffix: bool = True
    understanding_system: str = ""
    text_answer_prefix: str = ""
    #: the placeholder token one understanding image stands for in a row's text before expansion
    image_placeholder: str = "<image>"
    #: the user layout of rows whose answer is an image to generate (None: ``user``)
    generation_user: str | None = None


@dataclass
class SamplingParams:
    """Base of a family's generation parameters (a dataclass of named, defaulted fields).

    Self-play, replay, the host's ``replay_*`` YAML keys and ``unigap generate``
    take their keys from the families' dataclasses; none of them names a key.
    A field's metadata may hold ``help`` and ``selfplay=False`` (not a self-play
    / replay setting, e.g. greedy decoding, under which N candidates would be one).
    """

    @classmethod
    def keys(cls, selfplay_only: bool = False) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not (selfplay_only and not f.metadata.get("selfplay", True))]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls, selfplay_only: bool = False) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(cls()).items() if k in cls.keys(selfplay_only)}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str = "", prefix: str = "") -> "SamplingParams":
        """Parse, type-check and validate ``values`` (unknown keys are an error naming them)."""
        known = cls.keys()
        for key in values:
            if key not in known:
                raise FamilyError(f"{where}unknown generation key '{prefix}{key}'{did_you_mean(key, known)} "
                                  f"(this family's keys: {', '.join(prefix + k for k in known)})")
        hints = typing.get_type_hints(cls)
        parsed = {}
        for key, value in values.items():
            parsed[key] = _coerce(value, hints[key], f"{where}{prefix}{key}")
        params = cls(**parsed)
        params.validate(prefix)
        return params

    def validate(self, prefix: str = "") -> None:
        """Range checks (a family overrides); raise :class:`FamilyError` naming ``prefix + key``."""

    @classmethod
    def unguided(cls) -> dict[str, Any]:
        """The keys that make the sampler draw from the model's own conditional distribution: no
        classifier-free guidance (a family overrides; measurements that must sample the model itself,
        e.g. ``unigap evidence``, start from these)."""
        return {}

    def as_dict(self, selfplay_only: bool = False) -> dict[str, Any]:
        keep = self.keys(selfplay_only)
        return {k: v for k, v in dataclasses.asdict(self).items() if k in keep}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` checked (and ints widened to float) against a field's type hint (``T`` or ``T | None``)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise FamilyError(f"{name} must be set, got None")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise FamilyError(f"{name} must be true or false, got {value!r}")
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FamilyError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FamilyError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if base is str and not isinstance(value, str):
        raise FamilyError(f"{name} must be a string, got {value!r}")
    return value


@dataclass
class TargetNLL:
    """Negative log-likelihood of every target of a batch, split by head.

    ``nll`` is (B, T-1): the NLL of ``labels[:, 1:]`` (0 where there is no target);
    ``text_mask`` / ``gen_mask`` say which entries are text tokens / image codes.
    """

    nll: "torch.Tensor"
    text_mask: "torch.Tensor"
    gen_mask: "torch.Tensor"


def weighted_sft_loss(tnll: TargetNLL, gen_weight: float = 1.0) -> dict[str, "torch.Tensor"]:
    """Mean NLL over all targets, image codes weighted by ``gen_weight``; plus per-head stats."""
    text_sum = (tnll.nll * tnll.text_mask).sum()
    gen_sum = (tnll.nll * tnll.gen_mask).sum()
    n_text = tnll.text_mask.sum()
    n_gen = tnll.gen_mask.sum()
    total = (n_text + n_gen).clamp(min=1)
    # the sums stay connected to the graph even when a batch has no target (DDP needs that)
    loss = (text_sum + gen_weight * gen_sum) / total
    return {
        "loss": loss,
        "text_nll_sum": text_sum.detach(),
        "gen_nll_sum": gen_sum.detach(),
        "n_text": n_text.detach(),
        "n_gen": n_gen.detach(),
    }


def summed_logps(tnll: TargetNLL, average: bool) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-sequence sum (or mean) of target log-probs, and the number of targets (exact, autoregressive)."""
    mask = tnll.text_mask | tnll.gen_mask
    length = mask.sum(-1)
    logps = -(tnll.nll * mask).sum(-1)
    if average:
        logps = logps / length.clamp(min=1)
    return logps, length


def every_branch() -> bool:
    """Whether a training forward must run every branch of the model, whatever its batch holds: in a distributed
    run (DDP, ZeRO, FSDP).  Under DDP every rank must give gradients to the same parameters; under ZeRO-3 / FSDP
    every rank must gather the same modules in the same order, each gather being a collective, or the job hangs or
    crashes.  With mixed data one rank's rows may hold no image to understand while another's hold no image to
    generate, so a family's ``target_nll`` runs each branch its batch does not use on a stand-in input (its output
    times zero), at the branch's usual place in the order."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def most_over_ranks(count: int, device: Any = None) -> int:
    """The largest ``count`` of all ranks (a collective: every rank calls it), e.g. how many times a branch that
    runs once per item must run on every rank this step; ``count`` itself outside a distributed run."""
    if not every_branch():
        return count
    import torch
    import torch.distributed as dist

    if device is None or (dist.get_backend() == "nccl" and torch.device(device).type != "cuda"):
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


class UnifiedAdapter(ABC):
    """One model family; an instance wraps one loaded model and its tokenizer."""

    #: the family's name (also the model type the host's freeze flags are registered for)
    family: ClassVar[str]
    #: the host template name rows of this family are trained with (the YAML's ``template:``)
    template: ClassVar[str]
    #: the family's generation parameters (defaults = the family's recommended settings)
    sampling: ClassVar[type[SamplingParams]]
    #: batch columns the training forward reads (what the host's collator must pass through)
    batch_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")

    model: Any
    tokenizer: Any
    spec: ModelSpec
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    # ------------------------------------------------------------------ shared helpers
    def _base(self) -> Any:
        """The loaded model under any PEFT wrapper."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if callable(get_base) else self.model

    def answer_token_ids(self, words: Sequence[str] = ("Yes", "No")) -> list[int]:
        """The first token of " word" for each answer word (cached), as the judge reads them."""
        key = tuple(words)
        cache = self.__dict__.setdefault("_answer_ids", {})
        if key not in cache:
            out = []
            for word in key:
                ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
                if not ids:
                    raise FamilyError(f"the tokenizer encodes {word!r} to nothing")
                out.append(ids[0])
            if len(set(out)) != len(out):
                raise FamilyError(f"the answers {list(key)} share their first token; pick other answer words")
            cache[key] = out
        return cache[key]

    # ------------------------------------------------------------------ checkpoint
    @classmethod
    @abstractmethod
    def matches(cls, config: Any) -> bool:
        """Whether this family handles a checkpoint with this config (transformers config or config.json dict)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str, *, dtype: Any, adapter_path: str | None = None) -> "UnifiedAdapter":
        """Load the checkpoint at ``path`` (a local folder or hub id) on CPU in ``dtype``; a LoRA adapter
        from ``llamafactory-cli train`` at ``adapter_path`` is merged in memory."""

    @classmethod
    def load_image_tokenizer(cls, path: str, *, dtype: Any) -> "UnifiedAdapter":
        """Only what encoding images needs, on CPU in ``dtype``: an adapter whose ``encode_images``,
        ``decode_codes``, ``pixels``, ``spec``, ``image_mean`` and ``image_std`` work (``unigap encode``);
        ``model`` holds at least the image tokenizer.  The default loads the whole checkpoint; a family
        overrides it to load its (small, always frozen) image tokenizer alone."""
        return cls.load(path, dtype=dtype)

    @classmethod
    @abstractmethod
    def load_config(cls, path: str) -> Any:
        """The checkpoint's config (for :meth:`read_spec`) without loading weights."""

    @classmethod
    @abstractmethod
    def read_spec(cls, config: Any, tokenizer: Any, generation_config: Any | None = None) -> ModelSpec:
        """Token ids, sizes and offsets, read from the checkpoint (never hard-coded)."""

    @classmethod
    @abstractmethod
    def freeze_patterns(cls) -> dict[str, list[str]]:
        """Module-name substrings per group for the host's freeze flags: ``vision``, ``projector``,
        ``language``, and ``always_frozen`` (the image tokenizer)."""

    # ------------------------------------------------------------------ chat format
    @classmethod
    @abstractmethod
    def chat_format(cls) -> ChatFormat:
        """The chat layout the host's template for this family is built from."""

    # ------------------------------------------------------------------ token layout
    @classmethod
    @abstractmethod
    def gen_image_ids(cls, spec: ModelSpec, codes: Sequence[int]) -> list[int]:
        """The token ids a generated image with these codes occupies in a training sequence."""

    @classmethod
    @abstractmethod
    def und_image_text(cls, spec: ModelSpec) -> str:
        """What one image to understand becomes in a row's text (its placeholders for vision features)."""

    @classmethod
    @abstractmethod
    def image_runs(cls, spec: ModelSpec, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """(kind, start, length) of each understanding (``"und"``) / generated (``"gen"``) image's run of ids."""

    @classmethod
    def expected_run_length(cls, spec: ModelSpec, kind: str) -> int:
        """How many ids a whole run of ``kind`` (see :meth:`image_runs`) has."""
        return spec.num_image_tokens if kind == "gen" else spec.und_image_tokens

    @classmethod
    @abstractmethod
    def gen_codes_in(cls, spec: ModelSpec, ids: Sequence[int]) -> Any:
        """The image codes written in a token sequence (1-D numpy array, every generated image in order)."""

    # ------------------------------------------------------------------ generation parameters
    @classmethod
    def sampling_params(cls, params: Any = None, **values: Any) -> SamplingParams:
        """A checked :attr:`sampling` from a params object, a mapping and/or keywords."""
        if isinstance(params, cls.sampling) and not values:
            return params
        merged = dict(params.as_dict() if isinstance(params, SamplingParams) else (params or {}))
        merged.update(values)
        return cls.sampling.from_values(merged)

    # ------------------------------------------------------------------ the two branches
    @abstractmethod
    def pixels(self, images: Sequence["Image"], size: int | None = None, fit: str = "crop") -> "torch.Tensor":
        """PIL images -> normalised (B, 3, size, size) pixels in the model's dtype."""

    @abstractmethod
    def encode_images(self, images: Sequence["Image"], fit: str = "crop") -> "torch.Tensor":
        """PIL images -> (B, num_image_tokens) long codes with the model's own (frozen) image tokenizer."""

    @abstractmethod
    def decode_codes(self, codes: "torch.Tensor") -> list["Image"]:
        """(B, num_image_tokens) codes -> PIL images; batch-invariant, bit for bit, like :meth:`judge`."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], params: Any = None,
                 **values: Any) -> "torch.Tensor":
        """One image per prompt, each drawn from its own seed (batch-invariant) -> (B, num_image_tokens).
        Parameters: a :attr:`sampling` object or its keys as keywords."""

    @abstractmethod
    def judge(self, images: Sequence["Image"], questions: Sequence[str]) -> "torch.Tensor":
        """P(yes) for each (image, question) pair from one forward pass.  Batch-invariant, bit for bit:
        a row's P(yes) depends on its own image and question only, never on the other rows or their
        number (self-play judges a prompt's candidates in chunks of ``batch_size``)."""

    # ------------------------------------------------------------------ training
    @abstractmethod
    def sft_loss(self, model: Any, batch: dict[str, Any], *, prompt_dropout: float = 0.0,
                 gen_weight: float = 1.0, step: int = 0) -> dict[str, "torch.Tensor"]:
        """The SFT loss of a tokenized batch: ``loss`` plus detached per-head stats ``text_nll_sum``,
        ``gen_nll_sum``, ``n_text``, ``n_gen`` (the trainer logs ``text_loss`` / ``gen_loss``)."""

    @abstractmethod
    def sequence_logps(self, model: Any, batch: dict[str, Any], *, average: bool = False,
                       step: int = 0) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Per-sequence log-probability of each row's targets (sum, or mean when ``average``) and the
        number of targets.  A family whose likelihood is estimated (masked diffusion) must draw its
        randomness from the row's content and ``step`` only, so that chosen / rejected and policy /
        reference share it and a precomputed reference equals the live one."""

    # ------------------------------------------------------------------ released checkpoints that need converting (optional)
    @classmethod
    def add_convert_arguments(cls, parser: Any) -> bool:
        """Add the options of ``unigap convert <family>`` to ``parser`` (an ``argparse`` parser) and return
        True, for a family whose released files are not a checkpoint transformers loads as is; the default
        (False): nothing to convert."""
        return False

    @classmethod
    def convert(cls, args: Any) -> "Path":
        """Convert released files into one self-contained checkpoint folder (``unigap convert <family>``)."""
        raise FamilyError(f"{cls.family} checkpoints load as released; there is nothing to convert")

    # ------------------------------------------------------------------ a tiny random checkpoint (tests, trying things)
    #: the sizes of :meth:`build_tiny`'s model (a dataclass; its fields are ``unigap tiny-model`` options)
    tiny_spec: ClassVar[type]

    @classmethod
    @abstractmethod
    def build_tiny(cls, out_dir: str, spec: Any = None, overwrite: bool = False) -> "Path":
        """Write a tiny random checkpoint of this family to ``out_dir`` (offline, seconds, atomic)."""

    # ------------------------------------------------------------------ probes (evidence, benchmarks)
    @abstractmethod
    def backbone_parameters(self) -> list[Any]:
        """The parameters both branches share (the language model)."""

    @abstractmethod
    def generation_loss(self, prompt: str, codes: Sequence[int]) -> "torch.Tensor":
        """Differentiable mean NLL of an image's codes given its prompt (no dropout)."""

    @abstractmethod
    def understanding_loss(self, image: "Image", question: str, answer: str) -> "torch.Tensor":
        """Differentiable NLL of the first token of ``answer`` to ``question`` about ``image``."""
