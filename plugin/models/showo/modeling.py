"""Show-o v1 (showlab/Show-o) as a transformers model: Phi-1.5 + MAGVIT-v2, one vocabulary for text and codes.

Layout of the vocabulary (``llm_vocab_size`` = V, 50295 in the released checkpoints)::

    0 .. V-1                 the Phi / CodeGen text tokenizer (bos = eos = 50256)
    V                        [PAD]
    V+1 .. V+9               <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
    V+10 .. V+10+K-1         image codes (``code_offset`` = V+10, K = ``codebook_size``)
    V+10+K                   the mask token (``mask_token_id`` = ``vocab_size - 1``)

``ShowoForConditionalGeneration`` keeps the released state-dict names (``showo.model.*``, ``showo.lm_head.*``,
``vq_model.encoder.*`` ...) by reusing transformers' own ``PhiForCausalLM`` and builds Show-o's "omni-attention"
masks from the token ids itself, so a host only has to pass its ordinary 2-D padding mask.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PhiConfig,
    PhiForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .magvit import MagvitConfig, MagvitV2

__all__ = [
    "SPECIAL_TOKENS",
    "ShowoConfig",
    "ShowoForConditionalGeneration",
    "phi_1_5_config_dict",
]

#: the 10 tokens Show-o appends to the text tokenizer, in id order (``[PAD]`` = ``llm_vocab_size``)
SPECIAL_TOKENS: tuple[str, ...] = (
    "[PAD]",
    "<|soi|>",
    "<|eoi|>",
    "<|sov|>",
    "<|eov|>",
    "<|t2i|>",
    "<|mmu|>",
    "<|t2v|>",
    "<|v2v|>",
    "<|lvg|>",
)
_NUM_SPECIALS = len(SPECIAL_TOKENS)


def phi_1_5_config_dict() -> dict[str, Any]:
    """``PhiConfig`` of microsoft/phi-1_5 (the LLM Show-o starts from) as a dict; its vocab (51200) is replaced
    by Show-o's total vocabulary in :meth:`ShowoConfig.phi_config`."""
    return PhiConfig(
        vocab_size=51200,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        hidden_act="gelu_new",
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=None,
        qk_layernorm=True,
    ).to_dict()


# keys a config.json may carry for values this config derives (checked, never stored twice)
_DERIVED = ("vocab_size", "pad_token_id", "mask_token_id", "hidden_size", "num_hidden_layers", "num_attention_heads")


class ShowoConfig(PretrainedConfig):
    """Configuration of :class:`ShowoForConditionalGeneration`.

    Stored: ``llm_config`` (a ``PhiConfig.to_dict()``; default Phi-1.5), ``vq_config`` (``MagvitConfig.to_dict()``;
    default the released MAGVIT-v2), ``llm_vocab_size`` (50295), ``codebook_size`` (8192), ``num_vq_tokens`` (codes per
    generated image, 256 at 256 px), ``image_size``, ``max_text_len`` (129: the left-padded text part of a T2I row,
    ``<|t2i|>`` and both eos included), ``bos_token_id`` / ``eos_token_id`` (50256), ``w_clip_vit`` (False; the CLIP
    variant is not implemented).

    Derived (properties, never serialised): ``vocab_size``, ``pad_token_id`` (``[PAD]``), the special-token ids,
    ``code_offset``, ``mask_token_id``, ``und_placeholder_id``, and the LLM's ``hidden_size`` /
    ``num_hidden_layers`` / ``num_attention_heads`` (for hosts that read them from the top config).
    """

    model_type = "showo"
    SPECIAL_TOKENS: ClassVar[tuple[str, ...]] = SPECIAL_TOKENS

    llm_config: dict | None = None
    vq_config: dict | None = None
    llm_vocab_size: int = 50295
    codebook_size: int = 8192
    num_vq_tokens: int = 256
    image_size: int = 256
    max_text_len: int = 129
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    w_clip_vit: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        derived = {key: kwargs.pop(key) for key in _DERIVED if key in kwargs}
        if self.llm_config is None:
            self.llm_config = phi_1_5_config_dict()
        elif isinstance(self.llm_config, PretrainedConfig):
            self.llm_config = self.llm_config.to_dict()
        else:
            self.llm_config = dict(self.llm_config)
        if self.vq_config is None:
            self.vq_config = MagvitConfig().to_dict()
        elif isinstance(self.vq_config, MagvitConfig):
            self.vq_config = self.vq_config.to_dict()
        else:
            self.vq_config = dict(self.vq_config)
        for name in ("llm_vocab_size", "codebook_size", "num_vq_tokens", "image_size", "max_text_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShowoConfig.{name} must be a positive integer, got {value!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= int(value) < self.llm_vocab_size:
                raise ValueError(f"ShowoConfig.{name} {value} is not a text token id (llm_vocab_size {self.llm_vocab_size})")
        if self.w_clip_vit:
            raise ValueError("ShowoConfig.w_clip_vit=True (CLIP-ViT understanding) is not supported")
        vq = MagvitConfig.from_dict(self.vq_config)
        if vq.codebook_size != self.codebook_size:
            raise ValueError(
                f"ShowoConfig.codebook_size is {self.codebook_size} but vq_config has z_channels {vq.z_channels} "
                f"(codebook {vq.codebook_size})"
            )
        if self.image_size % vq.downsample:
            raise ValueError(f"ShowoConfig.image_size {self.image_size} is not a multiple of the VQ's {vq.downsample}")
        side = self.image_size // vq.downsample
        if side * side != self.num_vq_tokens:
            raise ValueError(
                f"ShowoConfig.num_vq_tokens is {self.num_vq_tokens} but a {self.image_size}-px image gives "
                f"{side}x{side} = {side * side} codes (VQ downsampling {vq.downsample})"
            )
        super().__post_init__(**kwargs)
        for key, value in derived.items():
            if value is not None and value != getattr(self, key):
                raise ValueError(
                    f"ShowoConfig: {key}={value!r} does not match the value the layout implies ({getattr(self, key)!r})"
                )

    # ------------------------------------------------------------------ derived ids
    @property
    def vocab_size(self) -> int:
        return self.llm_vocab_size + _NUM_SPECIALS + self.codebook_size + 1

    @vocab_size.setter
    def vocab_size(self, value):
        self._check_derived("vocab_size", value)

    @property
    def pad_token_id(self) -> int:
        return self.llm_vocab_size

    @pad_token_id.setter
    def pad_token_id(self, value):
        self._check_derived("pad_token_id", value)

    def _check_derived(self, key: str, value) -> None:
        if value is not None and value != getattr(self, key):
            raise ValueError(
                f"ShowoConfig.{key} is derived from the token layout ({getattr(self, key)}) and cannot be set to {value!r}"
            )

    @property
    def special_token_ids(self) -> dict[str, int]:
        """``{"[PAD]": V, "<|soi|>": V+1, ..., "<|lvg|>": V+9}``"""
        return {tok: self.llm_vocab_size + i for i, tok in enumerate(SPECIAL_TOKENS)}

    soi_token_id = property(lambda self: self.llm_vocab_size + 1)
    eoi_token_id = property(lambda self: self.llm_vocab_size + 2)
    sov_token_id = property(lambda self: self.llm_vocab_size + 3)
    eov_token_id = property(lambda self: self.llm_vocab_size + 4)
    t2i_token_id = property(lambda self: self.llm_vocab_size + 5)
    mmu_token_id = property(lambda self: self.llm_vocab_size + 6)
    t2v_token_id = property(lambda self: self.llm_vocab_size + 7)
    v2v_token_id = property(lambda self: self.llm_vocab_size + 8)
    lvg_token_id = property(lambda self: self.llm_vocab_size + 9)

    @property
    def code_offset(self) -> int:
        """Token id of image code 0."""
        return self.llm_vocab_size + _NUM_SPECIALS

    @property
    def mask_token_id(self) -> int:
        """The MaskGIT mask token (the last id; outside the code range)."""
        return self.vocab_size - 1

    @property
    def und_placeholder_id(self) -> int:
        """Marks, in a training / judging row, the ``num_vq_tokens`` positions of an image TO UNDERSTAND whose codes
        are not known yet: :meth:`ShowoForConditionalGeneration.fill_understanding_images` replaces each run of it by
        the VQ codes of the matching ``pixel_values`` image.  It is the ``<|lvg|>`` id, which no image task of Show-o
        v1 uses (language-guided video generation is not released), so it can never be confused with a real token."""
        return self.lvg_token_id

    # ------------------------------------------------------------------ LLM views
    hidden_size = property(lambda self: int(self.llm_config["hidden_size"]))
    num_hidden_layers = property(lambda self: int(self.llm_config["num_hidden_layers"]))
    num_attention_heads = property(lambda self: int(self.llm_config["num_attention_heads"]))

    def phi_config(self) -> PhiConfig:
        """The ``PhiConfig`` of the LLM: ``llm_config`` with the full Show-o vocabulary and untied embeddings."""
        d = {k: v for k, v in self.llm_config.items() if k not in ("model_type", "transformers_version", "architectures")}
        # Show-o's own Phi class switches on ``qk_layernorm`` (LayerNorm of q and k per head) whatever its config
        # says, and the released weights carry ``self_attn.{q,k}_layernorm``: so it is always on here too
        d.update(
            qk_layernorm=True,
            vocab_size=self.vocab_size,
            tie_word_embeddings=False,
            pad_token_id=None,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )
        return PhiConfig.from_dict(d)

    def magvit_config(self) -> MagvitConfig:
        return MagvitConfig.from_dict(self.vq_config)


def _attn_impl(requested: str | None) -> str:
    impl = requested or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise ValueError(
            f"Show-o needs a 4-D (omni-attention) mask: attn_implementation must be 'sdpa' or 'eager', got {impl!r}"
        )
    return impl


class ShowoForConditionalGeneration(PreTrainedModel, GenerationMixin):  # GenerationMixin: what PEFT / hosts expect
    """Show-o v1: ``self.showo`` (transformers' ``PhiForCausalLM`` over the whole vocabulary) and ``self.vq_model``
    (MAGVIT-v2, always frozen).  ``forward`` returns logits over the full vocabulary at every position (no loss)."""

    config_class = ShowoConfig
    config: ShowoConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules = ["PhiDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    supports_gradient_checkpointing = True
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = []

    def __init__(self, config: ShowoConfig):
        super().__init__(config)
        impl = _attn_impl(config._attn_implementation)
        config._attn_implementation_internal = impl
        phi = config.phi_config()
        phi._attn_implementation = impl
        self.showo = PhiForCausalLM(phi)
        self.vq_model = MagvitV2(config.magvit_config())
        self.vq_model.requires_grad_(False)
        self.vq_model.eval()
        self.post_init()
        if getattr(self, "generation_config", None) is None:  # hosts read it (Show-o samples with its own MaskGIT)
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                      pad_token_id=config.pad_token_id)

    # ------------------------------------------------------------------ HF plumbing
    def generate(self, *args, **kwargs):
        """Not transformers' text generation: Show-o draws images with unigap's MaskGIT sampler
        (``unigap.models.showo.sampler``) and is judged with one forward (the adapter's ``judge``)."""
        raise NotImplementedError("ShowoForConditionalGeneration.generate: use unigap's Show-o adapter "
                                  "(generate = MaskGIT image sampling, judge = one forward)")

    def _init_weights(self, module: nn.Module) -> None:
        # the LLM's modules are initialised by PhiPreTrainedModel; the VQ's by PyTorch's defaults
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.Embedding)):
            own = list(module.parameters(recurse=False))
            if own and all(getattr(p, "_is_hf_initialized", False) for p in own):
                return  # loaded from the checkpoint (under DeepSpeed ZeRO-3 still partitioned: nothing to reset)
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Module:
        return self.showo.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.showo.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.showo.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.showo.set_output_embeddings(value)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq_model.eval()  # the VQ is a frozen tokenizer
        return self

    # ------------------------------------------------------------------ masks
    def omni_attention_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Show-o's omni-attention mask, ``(B, 1, L, L)`` additive (0 = attend, ``finfo.min`` = blocked) in the
        model's dtype, built row by row from the ids (rows may be left- or right-padded).

        Pads are the positions with ``attention_mask == 0`` or a ``[PAD]`` id (the original marks pads by the id
        alone; a T2I row's fixed-length text part holds ``[PAD]`` ids that a host's tokenizer-side mask may call
        real).  For a non-pad query ``q`` the allowed keys are the non-pad keys ``k <= limit(q)``:

        * by default ``limit(q) = q`` (causal);
        * rows holding ``<|t2i|>``: for ``q`` inside an ``<|soi|> ... <|eoi|>`` span (both included; an unclosed span
          runs to the row's end) ``limit(q)`` is the span's ``<|eoi|>``: the span sees the whole text before it and
          itself bidirectionally.  The original (``create_attention_mask_predict_next(rm_pad_in_image=True)``) lets
          image queries see every non-pad position of the row, but its rows never hold anything but pads after the
          ``<|eoi|>``, so both agree on every row it builds; stopping at the span's end keeps an image's logits
          independent of anything appended after it, and with several images span ``j`` sees earlier spans, itself,
          and not later ones.
        * rows holding ``<|mmu|>`` followed by an ``<|eoi|>``: every query also sees all keys up to the first such
          ``<|eoi|>`` (``[<|mmu|>, <|soi|>, codes, <|eoi|>]`` is bidirectional, as ``create_attention_mask_for_mmu``).
          Both rules apply (``max`` of the limits) to a row holding both task tokens.

        Pad queries stay plainly causal (pads included) so no row is fully masked; their outputs are meaningless.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"omni_attention_mask expects input_ids of shape (B, L), got {tuple(input_ids.shape)}")
        allowed = _omni_allowed(input_ids, attention_mask, self.config)
        dtype = self.dtype if self.dtype.is_floating_point else torch.float32
        mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask.unsqueeze(1)

    # ------------------------------------------------------------------ images to understand
    @torch.no_grad()
    def _encode_codes(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vq = self.vq_model
        pixels = pixel_values.to(device=vq.encoder.conv_in.weight.device)
        return vq.encode(pixels)

    def fill_understanding_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Replace each maximal run of ``config.und_placeholder_id`` (row-major order) by the VQ codes (+
        ``code_offset``) of the next image of ``pixel_values`` ``(n_images, 3, H, W)`` in [-1, 1].

        Every run must be exactly ``num_vq_tokens`` long and there must be one run per image (``ValueError``
        otherwise).  The VQ runs under ``no_grad`` (it is frozen).  Returns a new tensor.
        """
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
        runs = _placeholder_runs(input_ids, cfg.und_placeholder_id)
        n_img = 0 if pixel_values is None else int(pixel_values.shape[0])
        for row, start, length in runs:
            if length != cfg.num_vq_tokens:
                raise ValueError(
                    f"row {row}: a run of {length} image placeholder tokens (id {cfg.und_placeholder_id}) starts at "
                    f"position {start}; each image to understand needs exactly num_vq_tokens = {cfg.num_vq_tokens}"
                )
        if len(runs) != n_img:
            raise ValueError(
                f"input_ids hold {len(runs)} image placeholder run(s) (id {cfg.und_placeholder_id}) but "
                f"{n_img} image(s) were given in pixel_values"
            )
        if not runs:
            return input_ids
        codes = self._encode_codes(pixel_values)
        if codes.shape[1] != cfg.num_vq_tokens:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} give {codes.shape[1]} codes per image, "
                f"the model expects num_vq_tokens = {cfg.num_vq_tokens} ({cfg.image_size} px)"
            )
        out = input_ids.clone()
        codes = codes.to(device=out.device, dtype=out.dtype) + cfg.code_offset
        for i, (row, start, length) in enumerate(runs):
            out[row, start : start + length] = codes[i]
        return out

    # ------------------------------------------------------------------ forward
    def _prepare(self, input_ids, attention_mask, pixel_values, position_ids, min_encodes=0):
        if pixel_values is not None:
            input_ids = self.fill_understanding_images(input_ids, pixel_values)
        elif bool((input_ids == self.config.und_placeholder_id).any()):
            raise ValueError(
                f"input_ids hold image placeholder tokens (id {self.config.und_placeholder_id}) but no pixel_values"
            )
        # the VQ encodes one image at a time; blank ones make up the count every rank must run (see hidden_states)
        extra = min_encodes - (0 if pixel_values is None else int(pixel_values.shape[0]))
        if extra > 0:
            side = self.config.image_size
            with torch.no_grad():
                self._encode_codes(torch.zeros((extra, 3, side, side), device=input_ids.device))
        mask = self.omni_attention_mask(input_ids, attention_mask)
        if position_ids is None:
            b, n = input_ids.shape
            position_ids = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(b, n)
        return input_ids, mask, position_ids

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        min_encodes: int = 0,
    ) -> torch.Tensor:
        """Final-layernorm output ``(B, L, D)`` of the LLM under the omni-attention mask.  Position ids default to
        ``arange(L)`` over the whole row, pads included (as the original; RoPE is relative and pads are never
        attended, so packed, left- and right-padded rows give the same states at real tokens).  ``min_encodes``:
        run the VQ's encoder at least this many times, on blank images (output unused) after the images to
        understand, since every rank of a sharded run must gather the same modules as often, in the same order."""
        input_ids, mask, position_ids = self._prepare(input_ids, attention_mask, pixel_values, position_ids,
                                                      min_encodes)
        out = self.showo.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits over the whole vocabulary at every position (``labels`` and other keywords are ignored)."""
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values, position_ids)
        return CausalLMOutputWithPast(logits=self.showo.lm_head(hidden))


# ---------------------------------------------------------------------------------------------- helpers


def _omni_allowed(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cfg: ShowoConfig) -> torch.Tensor:
    """Boolean ``(B, L, L)``: True where query (dim 1) may attend key (dim 2).  See
    :meth:`ShowoForConditionalGeneration.omni_attention_mask` for the rules."""
    b, n = input_ids.shape
    dev = input_ids.device
    ids = input_ids
    is_pad = ids == cfg.pad_token_id
    if attention_mask is not None:
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must be 2-D like input_ids {tuple(ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        is_pad = is_pad | (attention_mask.to(dev) == 0)
    real = ~is_pad
    pos = torch.arange(n, device=dev)
    pos_b = pos.unsqueeze(0).expand(b, n)
    big = torch.full_like(pos_b, n - 1)

    is_soi = (ids == cfg.soi_token_id) & real
    is_eoi = (ids == cfg.eoi_token_id) & real
    in_span = (torch.cumsum(is_soi.long(), 1) > torch.cumsum(is_eoi.long(), 1)) | is_soi | is_eoi
    # index of the next <|eoi|> at or after each position (n-1 when none: an unclosed span runs to the end)
    eoi_pos = torch.where(is_eoi, pos_b, big)
    next_eoi = torch.flip(torch.cummin(torch.flip(eoi_pos, [1]), 1).values, [1])

    limit = pos_b.clone()
    is_t2i_row = ((ids == cfg.t2i_token_id) & real).any(1, keepdim=True)
    limit = torch.where(is_t2i_row & in_span, torch.maximum(limit, next_eoi), limit)

    is_mmu = (ids == cfg.mmu_token_id) & real
    has_mmu = is_mmu.any(1)
    first_mmu = torch.where(has_mmu, is_mmu.float().argmax(1), torch.full_like(has_mmu, n, dtype=torch.long))
    eoi_after = is_eoi & (pos_b > first_mmu.unsqueeze(1))
    has_mmu_img = eoi_after.any(1)
    first_eoi = torch.where(eoi_after, pos_b, torch.full_like(pos_b, n)).min(1).values
    mmu_limit = torch.where(has_mmu_img, first_eoi, torch.full_like(first_eoi, -1)).unsqueeze(1)
    limit = torch.maximum(limit, mmu_limit)

    allowed = (pos.view(1, 1, n) <= limit.unsqueeze(2)) & real.unsqueeze(1)
    causal = pos.view(1, 1, n) <= pos.view(1, n, 1)
    return torch.where(is_pad.unsqueeze(2), causal, allowed)


def _placeholder_runs(input_ids: torch.Tensor, placeholder: int) -> list[tuple[int, int, int]]:
    """``[(row, start, length)]`` of the maximal runs of ``placeholder``, row-major."""
    hit = input_ids == placeholder
    if not bool(hit.any()):
        return []
    prev = torch.zeros_like(hit)
    prev[:, 1:] = hit[:, :-1]
    starts = (hit & ~prev).nonzero().tolist()
    runs = []
    hit_rows = hit.cpu()
    for row, start in starts:
        line = hit_rows[row, start:]
        stop = int((~line).nonzero()[0, 0]) if bool((~line).any()) else line.numel()
        runs.append((int(row), int(start), stop))
    return runs


def _register() -> None:
    AutoConfig.register("showo", ShowoConfig, exist_ok=True)
    AutoModelForCausalLM.register(ShowoConfig, ShowoForConditionalGeneration, exist_ok=True)


_register()
