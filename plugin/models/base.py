"""The small protocol every unified-model family implements.

A *unified* model both understands images (image + text -> text) and generates
them (text -> discrete image codes).  unigap never talks to a model family
directly: the host bridge, the trainers, self-play and the data builders go
through an adapter.  Adding a model family = adding one module to
``unigap.models`` that defines an adapter class and lists it in
``unigap.models.ADAPTERS``.

Token-stream convention shared by every family
---------------------------------------------
A generated image inside a training sequence is written as::

    <begin_of_image>  (gen_offset + c_0) ... (gen_offset + c_{N-1})  <end_of_image>

where ``c_i`` are the image's discrete codes.  Ids at or above
``ModelSpec.gen_offset`` are therefore image codes (``code = id - gen_offset``)
and can never be mistaken for text: ``gen_offset`` is at least the text
vocabulary size, so such an id fed to a text embedding fails loudly.  The
codes travel inside the tokenized dataset itself (input ids and labels), which
keeps them exact through the host's shuffling, padding, DDP sharding and
caching without any side channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image


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


class UnifiedAdapter(Protocol):
    """What unigap needs from one model family (one instance wraps one loaded model)."""

    family: ClassVar[str]

    @classmethod
    def matches(cls, config: Any) -> bool:
        """Whether this adapter handles a checkpoint with this (transformers) config."""

    @classmethod
    def read_spec(cls, config: Any, tokenizer: Any, generation_config: Any | None = None) -> ModelSpec:
        """Token ids, sizes and offsets, read from the checkpoint (never hard-coded)."""

    @classmethod
    def freeze_patterns(cls) -> dict[str, list[str]]:
        """Module-name groups for the host's freeze flags: ``vision``, ``projector``,
        ``language``, and ``always_frozen`` (e.g. the VQ tokenizer)."""

    # -- image <-> codes -------------------------------------------------------------
    def encode_images(self, images: Sequence["Image"]) -> "torch.Tensor":
        """PIL images -> (B, num_image_tokens) long codes with the model's own tokenizer."""

    def decode_codes(self, codes: "torch.Tensor") -> list["Image"]:
        """(B, num_image_tokens) codes -> PIL images."""

    # -- the two branches -------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        cfg_scale: float = 5.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
    ) -> "torch.Tensor":
        """One image per prompt, each drawn with its own seed -> (B, num_image_tokens)."""

    def judge(self, images: Sequence["Image"], questions: Sequence[str]) -> "torch.Tensor":
        """P(yes) for each (image, question) pair from one forward pass."""

    # -- training ---------------------------------------------------------------------
    def target_nll(self, model: Any, batch: dict[str, Any], **kwargs: Any) -> "TargetNLL":
        """Per-target negative log-likelihood of a tokenized batch (text and image codes)."""


@dataclass
class TargetNLL:
    """Negative log-likelihood of every target of a batch, split by head.

    ``nll`` is (B, T-1): the NLL of ``labels[:, 1:]`` (0 where there is no target);
    ``text_mask`` / ``gen_mask`` say which entries are text tokens / image codes.
    """

    nll: "torch.Tensor"
    text_mask: "torch.Tensor"
    gen_mask: "torch.Tensor"
