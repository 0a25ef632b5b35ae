"""Show-o v1 (``model_type == "showo"``): Phi-1.5 + MAGVIT-v2, images by masked discrete diffusion.

One token sequence serves both branches.  Text, the special tokens and the
8192 image codes share one embedding table and one ``lm_head``:

* generation (T2I): ``<|t2i|> <eos> prompt <eos> <|soi|> codes <|eoi|>``; the
  codes are drawn by MaskGIT parallel decoding (:mod:`.sampler`), trained by
  masked-token cross-entropy (unshifted: the logits at a masked position predict
  its own code) under a cosine mask schedule;
* understanding (MMU): ``<|mmu|> <|soi|> codes <|eoi|> <eos> USER: \\n question
  ASSISTANT: answer``, trained by ordinary next-token cross-entropy.

The omni-attention mask (causal text, bidirectional image) is built from the
ids inside the model (:mod:`.modeling`), so the host's padding mask suffices.
An image to *understand* travels through the host as ``num_vq_tokens``
``<|lvg|>`` placeholders plus its pixels; the model's frozen MAGVIT-v2 writes
its codes in (:meth:`ShowoForConditionalGeneration.fill_understanding_images`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ...seeds import derive
from ..base import (  # noqa: I001
    ChatFormat,
    FamilyError,
    ModelSpec,
    SamplingParams,
    TargetNLL,
    UnifiedAdapter,
    every_branch,
    most_over_ranks,
    summed_logps,
    weighted_sft_loss,
)
from .tiny import TinySpec

IGNORE_INDEX = -100
EOS = "<|endoftext|>"
PAD, SOI, EOI, T2I, MMU = "[PAD]", "<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>"
#: an image to understand, before its codes are known (a token no image task of Show-o uses)
UND_PLACEHOLDER = "<|lvg|>"
#: Show-o's understanding turn (its ``inference_mmu.py``): the image, EOS, then "USER: \n{question} ASSISTANT:"
USER_FORMAT = "{content} ASSISTANT:"
#: Show-o's text-to-image prompt layout (``<|t2i|>``, then the prompt between EOS tokens)
GENERATION_FORMAT = T2I + EOS + "{content}" + EOS


def _pil():
    from PIL import Image

    return Image


@dataclass
class ShowoSampling(SamplingParams):
    """Show-o's MaskGIT sampler (defaults: the released README's 256-px settings)."""

    guidance_scale: float = field(default=1.75, metadata={
        "help": "classifier-free guidance w: logits = (1 + w) cond - w uncond (0 = none)"})
    steps: int = field(default=16, metadata={"help": "parallel decoding steps (cosine mask schedule)"})
    temperature: float = field(default=1.0, metadata={
        "help": "scale of the Gumbel noise on the re-masking confidence (0 = re-mask the least likely codes)"})
    compound_temperature: bool = field(default=True, metadata={
        "help": "the original sampler's noise decay: the scale is multiplied by (1 - ratio) at every step"})

    @classmethod
    def unguided(cls) -> dict[str, Any]:
        return {"guidance_scale": 0.0}

    def validate(self, prefix: str = "") -> None:
        if self.guidance_scale < 0:
            raise FamilyError(f"{prefix}guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.steps < 1:
            raise FamilyError(f"{prefix}steps must be >= 1, got {self.steps}")
        if self.temperature < 0:
            raise FamilyError(f"{prefix}temperature must be >= 0, got {self.temperature}")


def _modeling():
    from . import modeling

    return modeling


class ShowoAdapter(UnifiedAdapter):
    """Adapter for :class:`~unigap.models.showo.modeling.ShowoForConditionalGeneration`."""

    family: ClassVar[str] = "showo"
    template: ClassVar[str] = "showo"
    sampling: ClassVar[type[SamplingParams]] = ShowoSampling
    batch_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "labels", "pixel_values")
    tiny_spec: ClassVar[type] = TinySpec

    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec or self.read_spec(self._base().config, tokenizer)
        self.image_mean = (0.5, 0.5, 0.5)
        self.image_std = (0.5, 0.5, 0.5)

    # ------------------------------------------------------------------ checkpoint
    @classmethod
    def matches(cls, config: Any) -> bool:
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        return model_type == "showo"

    @classmethod
    def load_config(cls, path: str) -> Any:
        return _modeling().ShowoConfig.from_pretrained(path)

    @classmethod
    def load(cls, path: str, *, dtype: Any, adapter_path: str | None = None) -> "ShowoAdapter":
        from transformers import AutoTokenizer

        from ...lora import merge_lora

        model = _modeling().ShowoForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if adapter_path:
            model = merge_lora(model, adapter_path).eval()
        return cls(model, tokenizer)

    @classmethod
    def load_image_tokenizer(cls, path: str, *, dtype: Any) -> "ShowoAdapter":
        """MAGVIT-v2 alone (``vq_model.*`` of the safetensors file(s)) and the tokenizer."""
        from transformers import AutoTokenizer

        from .checkpoint import read_prefixed
        from .magvit import MagvitConfig, MagvitV2

        config = cls.load_config(path)
        tensors = read_prefixed(path, VQ_PREFIX)
        if not tensors:
            return cls.load(path, dtype=dtype)
        vq = MagvitV2(MagvitConfig.from_dict(config.vq_config))
        try:
            vq.load_checkpoint_state(tensors)
        except ValueError as err:
            raise FamilyError(f"{path}: the image tokenizer's tensors ({VQ_PREFIX}*) do not fit its config: {err}") from None
        shell = _ImageTokenizerOnly(config, vq.to(dtype).eval())
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(shell, tokenizer, spec=cls.read_spec(config, tokenizer))

    @classmethod
    def read_spec(cls, config: Any, tokenizer: Any, generation_config: Any | None = None) -> ModelSpec:
        if isinstance(config, dict):
            config = _modeling().ShowoConfig(**{k: v for k, v in config.items() if k != "model_type"})
        expected = {PAD: config.pad_token_id, SOI: config.soi_token_id, EOI: config.eoi_token_id,
                    T2I: config.t2i_token_id, MMU: config.mmu_token_id, UND_PLACEHOLDER: config.und_placeholder_id}
        for token, want in expected.items():
            got = tokenizer.convert_tokens_to_ids(token)
            if got != want:
                raise FamilyError(
                    f"the tokenizer maps {token!r} to {got}, but the Show-o config puts it at {want} "
                    f"(llm_vocab_size={config.llm_vocab_size}: [PAD] and the 9 special tokens follow the text vocabulary)"
                )
        eos = tokenizer.convert_tokens_to_ids(EOS)
        if eos is None or eos == tokenizer.unk_token_id:
            raise FamilyError(f"the tokenizer of this Show-o checkpoint has no {EOS!r}")
        side = int(round(math.sqrt(config.num_vq_tokens)))
        return ModelSpec(
            model_type="showo",
            num_image_tokens=int(config.num_vq_tokens),
            codebook_size=int(config.codebook_size),
            image_size=int(config.image_size),
            und_image_tokens=int(config.num_vq_tokens),
            image_token=UND_PLACEHOLDER,
            boi_token=SOI,
            eoi_token=EOI,
            image_token_id=int(config.und_placeholder_id),
            boi_token_id=int(config.soi_token_id),
            eoi_token_id=int(config.eoi_token_id),
            pad_token_id=int(config.pad_token_id),
            bos_token_id=None,
            gen_offset=int(config.code_offset),
            code_shape=(side, side) if side * side == config.num_vq_tokens else (1, int(config.num_vq_tokens)),
        )

    @classmethod
    def freeze_patterns(cls) -> dict[str, list[str]]:
        return {
            "vision": ["vq_model", "vision_tower"],
            "projector": ["mm_projector"],
            "language": ["showo."],
            "always_frozen": ["vq_model"],
        }

    # ------------------------------------------------------------------ chat format
    @classmethod
    def chat_format(cls) -> ChatFormat:
        return ChatFormat(
            user=USER_FORMAT,
            assistant="{content}",
            system="{content}\n",
            bos_prefix=False,
            eos_suffix=True,
            understanding_system="",
            text_answer_prefix=" ",
            image_placeholder=UND_PLACEHOLDER,
            generation_user=GENERATION_FORMAT,
        )

    # ------------------------------------------------------------------ token layout
    @classmethod
    def gen_image_ids(cls, spec: ModelSpec, codes: Sequence[int]) -> list[int]:
        return [spec.boi_token_id] + [spec.gen_offset + int(c) for c in codes] + [spec.eoi_token_id]

    @classmethod
    def und_image_text(cls, spec: ModelSpec) -> str:
        # "<image>\n{question}" becomes Show-o's "<|mmu|><|soi|>img<|eoi|><eos>USER: \n{question} ASSISTANT:"
        return MMU + SOI + spec.image_token * spec.und_image_tokens + EOI + EOS + "USER: "

    @classmethod
    def image_runs(cls, spec: ModelSpec, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        import numpy as np

        ids = np.asarray(ids)
        is_code = (ids >= spec.gen_offset) & (ids < spec.gen_offset + spec.codebook_size)
        kind = np.where(is_code, 2, np.where(ids == spec.image_token_id, 1, 0))
        edges = np.flatnonzero(np.diff(kind, prepend=0, append=0))
        return [
            ("gen" if kind[start] == 2 else "und", int(start), int(end - start))
            for start, end in zip(edges[:-1], edges[1:])
            if kind[start]
        ]

    @classmethod
    def gen_codes_in(cls, spec: ModelSpec, ids: Sequence[int]) -> Any:
        import numpy as np

        ids = np.asarray(ids)
        return ids[(ids >= spec.gen_offset) & (ids < spec.gen_offset + spec.codebook_size)] - spec.gen_offset

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self._base().vq_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._base().vq_model.parameters()).dtype

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def gen_prompt_ids(self, prompt: str) -> list[int]:
        """The T2I prefix of a training row (what the host's template writes before ``<|soi|>``)."""
        return self.text_ids(GENERATION_FORMAT.format(content=prompt))

    def und_prompt_ids(self, question: str) -> list[int]:
        """An understanding prompt about one image up to the answer, with ``<|lvg|>`` placeholders."""
        return self.text_ids(USER_FORMAT.format(content=self.und_image_text(self.spec) + "\n" + question))

    # ------------------------------------------------------------------ images <-> codes
    def pixels(self, images: Sequence[Any], size: int | None = None, fit: str = "crop") -> torch.Tensor:
        """PIL images -> (B, 3, size, size) in [-1, 1]: the short side resized (bicubic) then centre-cropped
        (Show-o's transform), or ``fit="pad"``: padded to a square with grey first."""
        import numpy as np

        Image = _pil()
        size = size or self.spec.image_size
        if fit not in ("crop", "pad"):
            raise FamilyError(f"fit must be 'crop' or 'pad', got {fit!r}")
        arrays = []
        for img in images:
            img = img.convert("RGB") if img.mode != "RGB" else img
            w, h = img.size
            if (w, h) != (size, size):
                if fit == "pad" and w != h:
                    side = max(w, h)
                    canvas = Image.new("RGB", (side, side), (128, 128, 128))
                    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
                    img, (w, h) = canvas, (side, side)
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                img = img.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                img = img.crop((left, top, left + size, top + size))
            arrays.append(np.asarray(img, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (batch * 2.0 - 1.0).to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], fit: str = "crop") -> torch.Tensor:
        vq = self._base().vq_model
        # one image at a time: an image's codes never depend on its batch
        rows = [vq.encode(self.pixels([image], fit=fit)) for image in images]
        if not rows:
            return torch.zeros((0, self.spec.num_image_tokens), dtype=torch.long)
        return torch.cat(rows).reshape(len(images), -1).long()

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> list[Any]:
        import numpy as np

        Image = _pil()
        spec = self.spec
        codes = torch.as_tensor(codes, device=self.device).long().reshape(-1, spec.num_image_tokens)
        if codes.numel() and (codes.min() < 0 or codes.max() >= spec.codebook_size):
            raise FamilyError(f"image codes must be in [0, {spec.codebook_size}), got {int(codes.min())}..{int(codes.max())}")
        vq = self._base().vq_model
        pixels = torch.cat([vq.decode_codes(codes[i : i + 1], shape=spec.code_shape).float()
                            for i in range(codes.shape[0])]) if codes.shape[0] else torch.zeros(0, 3, 1, 1)
        pixels = ((pixels + 1.0) / 2.0).clamp(0, 1)
        arrays = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]

    # ------------------------------------------------------------------ generation branch
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], params: Any = None, **values: Any) -> torch.Tensor:
        """One image per prompt by MaskGIT decoding; row ``i`` draws from its own generator seeded
        ``seeds[i]`` (batch-invariant).  The prompt text of all rows is prefilled once per distinct prompt."""
        from .sampler import maskgit_generate, t2i_prompt_ids

        if len(seeds) != len(prompts):
            raise FamilyError("one seed per prompt is required")
        sp = self.sampling_params(params, **values)
        if sp.steps > self.spec.num_image_tokens:
            raise FamilyError(f"steps={sp.steps} is more than the {self.spec.num_image_tokens} codes of an image")
        config = self._base().config
        ids = {p: t2i_prompt_ids(config, self.text_ids(p)) for p in dict.fromkeys(prompts)}
        return maskgit_generate(
            self._base(), [ids[p] for p in prompts], [int(s) for s in seeds], steps=sp.steps,
            guidance_scale=sp.guidance_scale, temperature=sp.temperature, compound_temperature=sp.compound_temperature,
        )

    # ------------------------------------------------------------------ understanding branch
    @torch.no_grad()
    def judge(self, images: Sequence[Any], questions: Sequence[str], fit: str = "crop") -> torch.Tensor:
        """P(yes) against P(no) at the end of Show-o's understanding prompt, one forward per row (batch 1,
        so a row's P(yes) depends on its own image and question only, bit for bit).  The image is
        re-encoded by MAGVIT-v2, as any image to understand is."""
        if len(images) != len(questions):
            raise FamilyError("one question per image is required")
        model, device = self._base(), self.device
        tokenized = {q: self.und_prompt_ids(q) for q in dict.fromkeys(questions)}
        yes, no = self.answer_token_ids()
        out = []
        for image, question in zip(images, questions):
            ids = torch.tensor([tokenized[question]], device=device)
            hidden = model.hidden_states(ids, pixel_values=self.pixels([image], fit=fit))
            logits = model.get_output_embeddings()(hidden[:, -1]).float()
            out.append(torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0])
        return torch.cat(out) if out else torch.zeros(0, device=device)

    # ------------------------------------------------------------------ training
    def _row_generator(self, namespace: str, row: torch.Tensor, *parts: Any) -> torch.Generator:
        digest = hashlib.sha256(row.detach().cpu().numpy().astype("int64").tobytes()).hexdigest()
        return torch.Generator().manual_seed(derive(namespace, digest, *parts))

    def _t2i_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, dpo: bool,
                  prompt_dropout: float, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Masked inputs of the generation rows and their (unshifted) targets.

        A generation row's codes are masked by the cosine schedule (ratio cos(pi t / 2), t ~ U(0, 1),
        at least one code); the targets are the masked codes plus ``<|soi|>`` and ``<|eoi|>`` (as in
        Show-o's own loss).  The draw is seeded by the row: for DPO by its prompt alone, so chosen and
        rejected, policy and reference, live and precomputed reference all share one mask; for SFT by
        the whole row and ``step``.  Prompt dropout (SFT) rewrites a row as the unconditional prompt
        (``<|t2i|> <eos> <eos>``, the prompt's tokens become leading pads).
        """
        spec = self.spec
        config = self._base().config
        ids = input_ids.clone()
        mask = attention_mask.clone() if attention_mask is not None else None
        targets = torch.full_like(ids, IGNORE_INDEX)
        is_code = (ids >= spec.gen_offset) & (ids < spec.gen_offset + spec.codebook_size)
        for r in torch.nonzero(is_code.any(-1)).flatten().tolist():
            positions = torch.nonzero(is_code[r]).flatten()
            first = int(positions[0])
            if first < 1 or int(ids[r, first - 1]) != spec.boi_token_id:
                raise FamilyError(f"row {r}: a generated image's codes must follow <|soi|>")
            n = spec.num_image_tokens
            if len(positions) != n or int(positions[-1]) - first != n - 1:
                raise FamilyError(f"row {r} has {len(positions)} image codes where a Show-o image has {n} "
                                  "(several images, or an image cut by cutoff_len?)")
            end = first + n
            if end >= ids.shape[1] or int(ids[r, end]) != spec.eoi_token_id:
                raise FamilyError(f"row {r}: a generated image's codes must end with <|eoi|>")
            prompt_key = ids[r, :first][ids[r, :first] != spec.pad_token_id]
            gen = (self._row_generator("unigap-showo-dpo-mask", prompt_key) if dpo
                   else self._row_generator("unigap-showo-sft-mask", ids[r][ids[r] != spec.pad_token_id], step))
            t = float(torch.rand((), generator=gen, dtype=torch.float64))
            count = min(n, max(1, round(n * math.cos(math.pi * t / 2))))
            chosen = torch.randperm(n, generator=gen)[:count].to(ids.device) + first
            targets[r, chosen] = ids[r, chosen]
            targets[r, first - 1] = spec.boi_token_id
            targets[r, end] = spec.eoi_token_id
            ids[r, chosen] = config.mask_token_id
            if not dpo and prompt_dropout > 0 and float(torch.rand((), generator=gen, dtype=torch.float64)) < prompt_dropout:
                self._drop_prompt(ids, mask, r, first - 1)
        return ids, mask, targets

    def _drop_prompt(self, ids: torch.Tensor, mask: torch.Tensor | None, r: int, soi: int) -> None:
        """Row ``r`` becomes the unconditional prompt: ``[PAD]*k <|t2i|> <eos> <eos> <|soi|> ...``."""
        spec, config = self.spec, self._base().config
        row = ids[r, :soi].tolist()
        try:
            start = row.index(config.t2i_token_id)
        except ValueError:
            return
        text = soi - 1 - (start + 2)  # tokens between "<|t2i|> <eos>" and the <eos> before <|soi|>
        if text <= 0:
            return
        keep = ids[r, start : start + 2].clone()
        ids[r, text + start : text + start + 2] = keep
        ids[r, start : start + text] = spec.pad_token_id
        if mask is not None:
            mask[r, start : start + text] = 0

    def target_nll(self, model: Any, batch: dict[str, Any], *, dpo: bool = False, prompt_dropout: float = 0.0,
                   step: int = 0) -> TargetNLL:
        """NLL of every target, in the (B, T-1) layout of :class:`TargetNLL` (entry j: the target at j+1).

        Generation rows: the masked-token NLL of each masked code (and of ``<|soi|>`` / ``<|eoi|>``),
        unshifted, so the target at position j sits at entry j-1.  Other rows: next-token NLL of the
        host's labels (the text answer)."""
        spec = self.spec
        input_ids, labels = batch["input_ids"], batch.get("labels")
        attention_mask = batch.get("attention_mask")
        gen_rows = ((input_ids >= spec.gen_offset) & (input_ids < spec.gen_offset + spec.codebook_size)).any(-1)
        ids, mask, gen_targets = self._t2i_rows(input_ids, attention_mask, dpo=dpo, prompt_dropout=prompt_dropout, step=step)
        # in a distributed run every branch runs (see every_branch), always in this order: the VQ's encoder (once per
        # image, as often as on the rank with the most images to understand), the LLM, the head at image targets,
        # the head at text targets
        every = every_branch()
        pixel_values = batch.get("pixel_values")
        images = 0 if pixel_values is None else int(pixel_values.shape[0])
        hidden = model.hidden_states(ids, attention_mask=mask, pixel_values=pixel_values,
                                     min_encodes=most_over_ranks(images, ids.device) if every else 0)
        head = model.get_output_embeddings()
        width = ids.shape[1] - 1
        nll = torch.zeros((ids.shape[0], width), dtype=torch.float32, device=hidden.device)
        probe = hidden[:1, 0]
        # image targets: logits at j predict the token at j (entry j - 1)
        gen_t = (gen_targets[:, 1:] != IGNORE_INDEX)
        if gen_t.any():
            logits = head(hidden[:, 1:][gen_t]).float()
            nll[gen_t] = F.cross_entropy(logits, gen_targets[:, 1:][gen_t], reduction="none")
        elif every:
            nll = nll + head(probe).float().sum() * 0.0
        # text targets: logits at j predict the token at j + 1 (entry j)
        if labels is not None:
            text_t = (labels[:, 1:] != IGNORE_INDEX) & ~gen_rows.unsqueeze(-1)
        else:
            text_t = torch.zeros_like(gen_t)
        if text_t.any():
            logits = head(hidden[:, :-1][text_t]).float()
            nll[text_t] = F.cross_entropy(logits, labels[:, 1:][text_t], reduction="none")
        elif every:
            nll = nll + head(probe).float().sum() * 0.0
        return TargetNLL(nll=nll, text_mask=text_t, gen_mask=gen_t)

    def sft_loss(self, model: Any, batch: dict[str, Any], *, prompt_dropout: float = 0.0,
                 gen_weight: float = 1.0, step: int = 0) -> dict[str, torch.Tensor]:
        """Masked-token cross-entropy of the generated images (cosine schedule, prompt dropout for
        guidance) and next-token cross-entropy of the text answers, mixed as in
        :func:`~unigap.models.base.weighted_sft_loss`."""
        tnll = self.target_nll(model, batch, prompt_dropout=prompt_dropout, step=step)
        return weighted_sft_loss(tnll, gen_weight)

    def sequence_logps(self, model: Any, batch: dict[str, Any], *, average: bool = False,
                       step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """An image's log-likelihood estimated as the summed log-probs of its masked codes (and
        ``<|soi|>`` / ``<|eoi|>``) under one random cosine-schedule mask drawn from the row's prompt
        (so shared by chosen and rejected, policy and reference, and the same in every epoch: a
        precomputed reference equals the live one); text answers: exact next-token sums."""
        return summed_logps(self.target_nll(model, batch, dpo=True, step=step), average)

    # ------------------------------------------------------------------ probes
    def backbone_parameters(self) -> list[Any]:
        return list(self._base().showo.model.layers.parameters())

    def generation_loss(self, prompt: str, codes: Sequence[int]) -> torch.Tensor:
        """Mean masked-token NLL of ``codes`` under the DPO estimator's mask (deterministic per prompt)."""
        spec = self.spec
        ids = self.gen_prompt_ids(prompt) + self.gen_image_ids(spec, codes)
        out = self.target_nll(self._base(), {"input_ids": torch.tensor([ids], device=self.device)}, dpo=True)
        return (out.nll * out.gen_mask).sum() / out.gen_mask.sum()

    def understanding_loss(self, image: Any, question: str, answer: str) -> torch.Tensor:
        word = self.answer_token_ids((answer,))[0]
        ids = self.und_prompt_ids(question) + [word]
        labels = [IGNORE_INDEX] * (len(ids) - 1) + [word]
        batch = {"input_ids": torch.tensor([ids], device=self.device),
                 "labels": torch.tensor([labels], device=self.device),
                 "pixel_values": self.pixels([image])}
        out = self.target_nll(self._base(), batch)
        return (out.nll * out.text_mask).sum() / out.text_mask.sum()

    # ------------------------------------------------------------------ conversion and tiny models
    @classmethod
    def add_convert_arguments(cls, parser: Any) -> bool:
        from .convert import add_arguments

        add_arguments(parser)
        return True

    @classmethod
    def convert(cls, args: Any) -> Any:
        from .convert import convert_from_args

        return convert_from_args(args)

    @classmethod
    def build_tiny(cls, out_dir: str, spec: Any = None, overwrite: bool = False) -> Any:
        from .tiny import build_tiny_showo

        return build_tiny_showo(out_dir, spec or TinySpec(), overwrite=overwrite)


#: the image tokenizer's tensors in a Show-o checkpoint
VQ_PREFIX = "vq_model."


class _ImageTokenizerOnly(torch.nn.Module):
    """A Show-o model reduced to its MAGVIT-v2 (``vq_model``), for :meth:`ShowoAdapter.load_image_tokenizer`."""

    def __init__(self, config: Any, vq: Any):
        super().__init__()
        self.config = config
        self.vq_model = vq
