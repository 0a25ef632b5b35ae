"""Janus / Janus-Pro (``model_type == "janus"`` in transformers).

Janus keeps image generation on its own path, beside the text head:
codes -> ``generation_embeddings`` -> ``generation_aligner`` -> LLM ->
``generation_head`` -> code logits.  transformers' ``forward`` only computes
text logits, so training the generation branch needs the forward written here.
Everything is read from the checkpoint (pad id differs between Janus-Pro-1B and
7B, image size and codebook differ between the real and the tiny models), and
the same code serves transformers 4.5x and 5.x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..base import (
    ChatFormat,
    FamilyError,
    ModelSpec,
    SamplingParams,
    TargetNLL,
    UnifiedAdapter,
    every_branch,
    summed_logps,
    weighted_sft_loss,
)
from .tiny import TinySpec, build_tiny_janus

IGNORE_INDEX = -100

#: Janus-Pro's chat format (the one its processor's chat template produces).
USER_FORMAT = "<|User|>: {content}\n\n<|Assistant|>:"
#: Default system prompt of Janus-Pro's processor for understanding (text answers); "\n\n" follows it.
DEFAULT_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


def _pil():
    from PIL import Image

    return Image


@dataclass
class JanusSampling(SamplingParams):
    """Janus-Pro's autoregressive sampler: classifier-free guidance, temperature, top-k / top-p."""

    cfg_scale: float = field(default=5.0, metadata={"help": "classifier-free guidance scale (1 = none)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely codes"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass in (0, 1]"})
    greedy: bool = field(default=False, metadata={"help": "argmax decoding instead of sampling", "selfplay": False})

    @classmethod
    def unguided(cls) -> dict[str, Any]:
        return {"cfg_scale": 1.0}

    def validate(self, prefix: str = "") -> None:
        if self.temperature <= 0:
            raise FamilyError(f"{prefix}temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FamilyError(f"{prefix}top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise FamilyError(f"{prefix}top_k must be an integer >= 1, got {self.top_k!r}")


class JanusAdapter(UnifiedAdapter):
    """Adapter for ``JanusForConditionalGeneration`` (see :class:`unigap.models.base.UnifiedAdapter`)."""

    family: ClassVar[str] = "janus"
    template: ClassVar[str] = "janus"
    sampling: ClassVar[type[SamplingParams]] = JanusSampling
    tiny_spec: ClassVar[type] = TinySpec

    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec | None = None, image_mean=None, image_std=None):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec or self.read_spec(model.config, tokenizer, getattr(model, "generation_config", None))
        self.image_mean = tuple(image_mean or (0.5, 0.5, 0.5))
        self.image_std = tuple(image_std or (0.5, 0.5, 0.5))

    # ------------------------------------------------------------------ checkpoint facts
    @classmethod
    def matches(cls, config: Any) -> bool:
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        return model_type == "janus"

    @classmethod
    def build_tiny(cls, out_dir: str, spec: Any = None, overwrite: bool = False) -> Any:
        return build_tiny_janus(out_dir, spec or TinySpec(), overwrite=overwrite)

    @classmethod
    def load_config(cls, path: str) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path)

    @classmethod
    def load(cls, path: str, *, dtype: Any, adapter_path: str | None = None) -> "JanusAdapter":
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from ...lora import merge_lora

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if adapter_path:
            model = merge_lora(model, adapter_path)
        mean, std = cls._image_stats(path)
        return cls(model, tokenizer, image_mean=mean, image_std=std)

    @classmethod
    def load_image_tokenizer(cls, path: str, *, dtype: Any) -> "JanusAdapter":
        """The VQ image tokenizer alone (``model.vqmodel.*`` read from the safetensors file(s), sharded
        or not), the tokenizer and the image processor's mean / std: ``encode_images``, ``decode_codes``,
        ``pixels`` and ``spec`` work, ``generate`` / ``judge`` do not.  A checkpoint without safetensors
        (or whose VQ tensors are named otherwise) is loaded whole."""
        from transformers import AutoTokenizer, GenerationConfig
        from transformers.models.janus.modeling_janus import JanusVQVAE

        tensors = _read_prefixed(_vq_files(path), VQ_PREFIX)
        if not tensors:
            return cls.load(path, dtype=dtype)
        config = cls.load_config(path)
        vq = JanusVQVAE(config.vq_config).to(dtype)
        result = vq.load_state_dict(tensors, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FamilyError(
                f"{path}: the image tokenizer's tensors ({VQ_PREFIX}*) do not fit its config "
                f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            generation_config = None
        mean, std = cls._image_stats(path)
        shell = _ImageTokenizerOnly(config, vq)
        return cls(shell, tokenizer, spec=cls.read_spec(config, tokenizer, generation_config), image_mean=mean,
                   image_std=std)

    @staticmethod
    def _image_stats(path: str) -> tuple[Any, Any]:
        """The image processor's mean / std (None when the checkpoint has no processor)."""
        from transformers import AutoProcessor

        try:
            image_processor = AutoProcessor.from_pretrained(path).image_processor
            return getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)
        except (OSError, ValueError):
            return None, None

    @classmethod
    def read_spec(cls, config: Any, tokenizer: Any, generation_config: Any | None = None) -> ModelSpec:
        vision, vq, text = config.vision_config, config.vq_config, config.text_config
        side = vision.image_size // vision.patch_size
        tokens = {
            "image_token": getattr(tokenizer, "image_token", None) or "<image_placeholder>",
            "boi_token": getattr(tokenizer, "boi_token", None) or "<begin_of_image>",
            "eoi_token": getattr(tokenizer, "eoi_token", None) or "<end_of_image>",
        }
        ids = {}
        for key, token in tokens.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise FamilyError(f"the tokenizer of this Janus checkpoint has no {key} {token!r}")
            ids[key + "_id"] = token_id
        if ids["image_token_id"] != config.image_token_id:
            raise FamilyError(
                f"config.image_token_id={config.image_token_id} but the tokenizer maps {tokens['image_token']!r} "
                f"to {ids['image_token_id']}"
            )
        gen_kwargs = getattr(generation_config, "generation_kwargs", None) or {}
        if gen_kwargs.get("boi_token_id") not in (None, ids["boi_token_id"]):
            raise FamilyError("generation_config.generation_kwargs.boi_token_id disagrees with the tokenizer")
        pad = next(
            (
                v
                for v in (
                    getattr(generation_config, "pad_token_id", None),
                    getattr(text, "pad_token_id", None),
                    tokenizer.pad_token_id,
                )
                if v is not None
            ),
            None,
        )
        if pad is None:
            raise FamilyError("this Janus checkpoint defines no pad token id (needed for classifier-free guidance)")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(text, "bos_token_id", None)
        return ModelSpec(
            model_type="janus",
            num_image_tokens=side * side,
            codebook_size=int(vq.num_embeddings),
            image_size=int(vision.image_size),
            und_image_tokens=int(getattr(vision, "num_image_tokens", side * side)),
            **tokens,
            **ids,
            pad_token_id=int(pad),
            bos_token_id=None if bos is None else int(bos),
            gen_offset=max(len(tokenizer), int(text.vocab_size)),
        )

    @classmethod
    def freeze_patterns(cls) -> dict[str, list[str]]:
        # Substrings of parameter names.  "model.aligner" is not a substring of
        # "model.generation_aligner", so the two projectors stay distinct.
        return {
            "vision": ["model.vision_model", "model.vqmodel"],
            "projector": ["model.aligner", "model.generation_aligner"],
            "language": [
                "model.language_model",
                "lm_head",
                "model.generation_embeddings",
                "model.generation_head",
            ],
            "always_frozen": ["model.vqmodel"],
        }

    # ------------------------------------------------------------------ chat format
    @classmethod
    def chat_format(cls) -> ChatFormat:
        # Janus writes "<|Assistant|>: answer" but "<|Assistant|>:<begin_of_image>..."
        return ChatFormat(
            user=USER_FORMAT,
            understanding_system=DEFAULT_SYSTEM,
            text_answer_prefix=" ",
            image_placeholder="<image_placeholder>",
        )

    @staticmethod
    def format_user(content: str) -> str:
        return USER_FORMAT.format(content=content)

    def gen_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids that make the model start drawing ``prompt`` (ends with <begin_of_image>)."""
        ids = self.tokenizer.encode(self.format_user(prompt), add_special_tokens=False)
        head = [] if self.spec.bos_token_id is None else [self.spec.bos_token_id]
        return head + ids + [self.spec.boi_token_id]

    @classmethod
    def und_image_text(cls, spec: ModelSpec) -> str:
        """What one image to understand becomes in the text (its placeholders for vision features)."""
        return spec.boi_token + spec.image_token * spec.und_image_tokens + spec.eoi_token

    # ------------------------------------------------------------------ token layout
    # A generated image inside a training sequence is written as
    #     <begin_of_image> (gen_offset + c_0) ... (gen_offset + c_{N-1}) <end_of_image>
    # Ids at or above gen_offset are image codes and can never be mistaken for text
    # (gen_offset is at least the text vocabulary size, so such an id fed to the text
    # embedding fails loudly).  The codes travel inside the tokenized dataset itself,
    # exact through the host's shuffling, padding, sharding and caching.
    @classmethod
    def gen_image_ids(cls, spec: ModelSpec, codes: Sequence[int]) -> list[int]:
        return [spec.boi_token_id] + [spec.gen_offset + int(c) for c in codes] + [spec.eoi_token_id]

    @classmethod
    def image_runs(cls, spec: ModelSpec, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        import numpy as np

        ids = np.asarray(ids)
        kind = np.where(ids >= spec.gen_offset, 2, np.where(ids == spec.image_token_id, 1, 0))
        edges = np.flatnonzero(np.diff(kind, prepend=0, append=0))  # where the kind changes
        return [
            ("gen" if kind[start] == 2 else "und", int(start), int(end - start))
            for start, end in zip(edges[:-1], edges[1:])
            if kind[start]
        ]

    @classmethod
    def gen_codes_in(cls, spec: ModelSpec, ids: Sequence[int]) -> Any:
        import numpy as np

        ids = np.asarray(ids)
        return ids[ids >= spec.gen_offset] - spec.gen_offset

    def und_prompt_ids(self, question: str, system: str = DEFAULT_SYSTEM) -> list[int]:
        """Token ids of an understanding prompt about one image, up to the answer."""
        head = system + "\n\n" if system else ""
        text = head + self.format_user(self.und_image_text(self.spec) + "\n" + question)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([] if self.spec.bos_token_id is None else [self.spec.bos_token_id]) + ids

    # ------------------------------------------------------------------ images <-> codes
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.vqmodel.quant_conv.weight.dtype

    def pixels(self, images: Sequence[Any], size: int | None = None, fit: str = "crop") -> torch.Tensor:
        """PIL images -> normalised (B, 3, size, size) pixels.

        ``fit="crop"`` centre-crops to a square then resizes; ``fit="pad"`` pads
        the shorter side with the mean colour (what Janus' image processor does).
        """
        import numpy as np

        Image = _pil()
        size = size or self.spec.image_size
        if fit not in ("crop", "pad"):
            raise FamilyError(f"fit must be 'crop' or 'pad', got {fit!r}")
        arrays = []
        for img in images:
            img = img.convert("RGB") if img.mode != "RGB" else img
            w, h = img.size
            if (w, h) != (size, size):  # a self-drawn image usually has the right size already
                if fit == "crop":
                    side = min(w, h)
                    left, top = (w - side) // 2, (h - side) // 2
                    img = img.crop((left, top, left + side, top + side))
                elif w != h:
                    side = max(w, h)
                    fill = tuple(int(round(m * 255)) for m in self.image_mean)
                    canvas = Image.new("RGB", (side, side), fill)
                    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
                    img = canvas
                img = img.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.image_mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=batch.device).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], fit: str = "crop") -> torch.Tensor:
        vq = self._base().model.vqmodel
        out = vq.encode(self.pixels(images, fit=fit))
        # transformers 5.x returns an output object, 4.5x a tuple ending with the indices
        indices = out.image_tokens if hasattr(out, "image_tokens") else out[-1]
        return indices.reshape(len(images), -1).long()

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> list[Any]:
        import numpy as np

        Image = _pil()
        codes = torch.as_tensor(codes, device=self.device).long().reshape(-1, self.spec.num_image_tokens)
        vq = self._base().model.vqmodel
        # one image at a time: an image's pixels never depend on the batch it was decoded in
        pixels = torch.cat([vq.decode(codes[i : i + 1]).float() for i in range(codes.shape[0])])  # (B, 3, H, W)
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        pixels = (pixels * std + mean).clamp(0, 1)
        arrays = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]

    # ------------------------------------------------------------------ generation branch
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], params: Any = None, **values: Any) -> torch.Tensor:
        """Draw one image per prompt with classifier-free guidance and a KV cache.

        Each row samples from its own ``torch.Generator`` seeded with ``seeds[i]``
        (its uniforms are drawn up front and turned into codes by inverse-CDF
        sampling), so a row's codes do not depend on the batch it was drawn in.
        Rows that share a prompt (self-play's N candidates) and the
        unconditional rows (identical for prompts of one length) share one
        prefill; its KV cache is then expanded to the batch.
        """
        if len(seeds) != len(prompts):
            raise FamilyError("one seed per prompt is required")
        sp = self.sampling_params(params, **values)
        cfg_scale, temperature, top_k, top_p, greedy = sp.cfg_scale, sp.temperature, sp.top_k, sp.top_p, sp.greedy
        model, spec, device = self._base(), self.spec, self.device
        batch, steps = len(prompts), spec.num_image_tokens
        tokenized = {p: tuple(self.gen_prompt_ids(p)) for p in dict.fromkeys(prompts)}
        cond = [tokenized[p] for p in prompts]
        keep = {spec.boi_token_id} | ({spec.bos_token_id} if spec.bos_token_id is not None else set())
        uncond = [tuple(t if t in keep else spec.pad_token_id for t in row) for row in cond]
        unique: dict[tuple[int, ...], int] = {}
        for row in cond + uncond:
            unique.setdefault(row, len(unique))
        rows = list(unique)
        expand = torch.tensor([unique[r] for r in cond + uncond], device=device)
        tokens, mask = _left_pad(rows, spec.pad_token_id, device, room=steps)
        width = tokens.shape[1]
        padded = any(len(r) != width for r in rows)
        position = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        if not greedy:
            uniforms = torch.stack(
                [torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
            ).to(device)
        lm = model.model.language_model
        out = lm(
            inputs_embeds=model.get_input_embeddings()(tokens),
            attention_mask=mask[:, :width] if padded else None,
            position_ids=position,
            use_cache=True,
        )
        past = out.past_key_values
        past.reorder_cache(expand)  # one prefill per distinct row, expanded to the 2 * batch rows
        hidden = out.last_hidden_state[expand, -1]
        mask, position = mask[expand], position[expand, -1:]
        codes = torch.empty((batch, steps), dtype=torch.long, device=device)
        fast = _can_step_layers(lm)
        if fast and padded:  # one-token queries: a key-padding bias is the whole mask
            additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=device)
            additive = additive.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for step in range(steps):
            logits = model.model.generation_head(hidden).float()
            cond_logits, uncond_logits = logits[:batch], logits[batch:]
            scores = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
            if greedy:
                nxt = scores.argmax(-1)
            else:
                probs = _filtered_probs(scores / max(temperature, 1e-6), top_k, top_p)
                cdf = probs.double().cumsum(-1)
                u = uniforms[:, step : step + 1] * cdf[:, -1:]
                nxt = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
            codes[:, step] = nxt
            if step == steps - 1:
                break
            position = position + 1
            embeds = model.prepare_embeddings_for_image_generation(torch.cat([nxt, nxt]).unsqueeze(-1))
            if fast:
                bias = additive[:, :, :, : width + step + 1] if padded else None
                hidden = _decode_step(lm, embeds, position, past, bias)[:, -1]
            else:
                out = lm(
                    inputs_embeds=embeds,
                    attention_mask=mask[:, : width + step + 1] if padded else None,
                    position_ids=position,
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                hidden = out.last_hidden_state[:, -1]
        return codes

    # ------------------------------------------------------------------ understanding branch
    @torch.no_grad()
    def judge(self, images: Sequence[Any], questions: Sequence[str], fit: str = "pad") -> torch.Tensor:
        """P(yes) against P(no) for each (image, question); batch-invariant, bit for bit.

        Each row runs alone (batch 1, no padding), so its P(yes) is a function
        of its own image and question only: self-play may judge a prompt's
        candidates in chunks of any size and write the same bytes.  The text
        before the image (system prompt and chat header) is run once per call
        and its KV cache reused by every row with that text (cropped back after
        each row); a row always takes this cached path when its prefix has 8
        tokens or more, whatever else is in the batch.
        """
        if len(images) != len(questions):
            raise FamilyError("one question per image is required")
        model, spec, device = self._base(), self.spec, self.device
        tokenized = {q: self.und_prompt_ids(q) for q in dict.fromkeys(questions)}
        side = model.config.vision_config.image_size
        lm = model.model.language_model
        heads: dict[tuple[int, ...], Any] = {}
        yes, no = self.answer_token_ids()
        p_yes = []
        for image, question in zip(images, questions):
            ids = tokenized[question]
            tokens = torch.tensor([ids], device=device)
            pixels = self.pixels([image], size=side, fit=fit)
            prefix = ids.index(spec.image_token_id) if spec.image_token_id in ids else 0
            if prefix >= 8:
                key = tuple(ids[:prefix])
                if key not in heads:
                    embeds = model.get_input_embeddings()(tokens[:, :prefix])
                    heads[key] = lm(inputs_embeds=embeds, use_cache=True).past_key_values
                past = heads[key]
                out = lm(
                    inputs_embeds=self._embed(model, tokens[:, prefix:], pixels),
                    past_key_values=past,
                    position_ids=torch.arange(prefix, len(ids), device=device).unsqueeze(0),
                    use_cache=True,
                )
                past.crop(prefix)
            else:
                out = lm(inputs_embeds=self._embed(model, tokens, pixels), use_cache=False)
            logits = model.lm_head(out.last_hidden_state[:, -1]).float()
            p_yes.append(torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0])
        if not p_yes:
            return torch.zeros(0, device=device)
        return torch.cat(p_yes)

    # ------------------------------------------------------------------ training
    def _embed(self, model: Any, text_ids: torch.Tensor, pixel_values: torch.Tensor | None,
               stand_in: bool = False) -> torch.Tensor:
        """Text embeddings with the understanding images' features at their placeholders.  ``stand_in``: run the
        vision tower even without an image (on one blank image, its output times zero), so that every rank of a
        sharded run gathers the same modules in the same order (see :meth:`target_nll`)."""
        embeds = model.get_input_embeddings()(text_ids)
        placeholders = text_ids == self.spec.image_token_id
        if pixel_values is not None and placeholders.any():
            feats = model.model.get_image_features(pixel_values.to(embeds.dtype))
            feats = getattr(feats, "pooler_output", feats)  # 5.x output object / 4.5x tensor
            feats = feats.reshape(-1, embeds.shape[-1])
            if feats.shape[0] != int(placeholders.sum()):
                raise FamilyError(
                    f"{int(placeholders.sum())} image placeholder tokens but {feats.shape[0]} image features "
                    "(an understanding image was cut by cutoff_len?)"
                )
            embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), feats.to(embeds.dtype))
        elif stand_in:
            side = model.config.vision_config.image_size
            feats = model.model.get_image_features(embeds.new_zeros((1, 3, side, side)))
            embeds = embeds + getattr(feats, "pooler_output", feats).sum().to(embeds.dtype) * 0.0
        return embeds

    def drop_prompts(self, text_ids: torch.Tensor, gen_in: torch.Tensor, p: float) -> torch.Tensor:
        """Classifier-free-guidance dropout: with probability ``p`` per generation
        sample, replace its prompt (everything before the image but BOS) with pad,
        exactly like the unconditional branch at generation time."""
        if p <= 0 or not gen_in.any():
            return text_ids
        spec = self.spec
        has_gen = gen_in.any(-1)
        has_und = (text_ids == spec.image_token_id).any(-1)
        drop = has_gen & ~has_und & (torch.rand(text_ids.shape[0], device=text_ids.device) < p)
        if not drop.any():
            return text_ids
        first_gen = torch.where(has_gen, gen_in.float().argmax(-1), torch.zeros_like(has_gen, dtype=torch.long))
        pos = torch.arange(text_ids.shape[1], device=text_ids.device).unsqueeze(0)
        before_boi = pos < (first_gen - 1).unsqueeze(-1)
        keep = text_ids == (spec.bos_token_id if spec.bos_token_id is not None else -1)
        wipe = drop.unsqueeze(-1) & before_boi & ~keep
        return text_ids.masked_fill(wipe, spec.pad_token_id)

    def target_nll(
        self,
        model: Any,
        batch: dict[str, Any],
        prompt_dropout: float = 0.0,
    ) -> TargetNLL:
        """NLL of every target in ``batch`` (input_ids, attention_mask, labels, pixel_values).

        Text targets go through ``lm_head``, image-code targets through
        ``generation_head``; neither head is ever evaluated where it has no target,
        so no text-vocabulary logits exist at image positions.  The structural
        <begin_of_image>/<end_of_image> around a generated image are not targets.
        """
        spec = self.spec
        input_ids, labels = batch["input_ids"], batch["labels"]
        # in a distributed run every branch runs (see every_branch), always in this order: vision tower, generation
        # embeddings, language model, text head, generation head
        every = every_branch()
        gen_in = input_ids >= spec.gen_offset
        text_ids = self.drop_prompts(input_ids.masked_fill(gen_in, spec.pad_token_id), gen_in, prompt_dropout)
        embeds = self._embed(model, text_ids, batch.get("pixel_values"), stand_in=every)
        if gen_in.any():
            codes = input_ids[gen_in] - spec.gen_offset
            gen_embeds = model.prepare_embeddings_for_image_generation(codes)
            embeds = embeds.masked_scatter(gen_in.unsqueeze(-1), gen_embeds.to(embeds.dtype))
        elif every:
            code = torch.zeros((1, 1), dtype=torch.long, device=embeds.device)
            embeds = embeds + model.prepare_embeddings_for_image_generation(code).sum().to(embeds.dtype) * 0.0
        lm_kwargs = {"attention_mask": batch.get("attention_mask"), "use_cache": False}
        if batch.get("position_ids") is not None:
            lm_kwargs["position_ids"] = batch["position_ids"]
        hidden = model.model.language_model(inputs_embeds=embeds, **lm_kwargs).last_hidden_state[:, :-1]

        targets = labels[:, 1:]
        gen_t = targets >= spec.gen_offset
        following_gen = F.pad(labels[:, 2:] >= spec.gen_offset, (0, 1), value=False)
        after_gen = labels[:, :-1] >= spec.gen_offset
        scaffold = ((targets == spec.boi_token_id) & following_gen) | ((targets == spec.eoi_token_id) & after_gen)
        text_t = (targets != IGNORE_INDEX) & ~gen_t & ~scaffold

        nll = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
        probe = hidden[:1, :1]
        if text_t.any():
            logits = model.lm_head(hidden[text_t]).float()
            nll[text_t] = F.cross_entropy(logits, targets[text_t], reduction="none")
        elif every:
            nll = nll + model.lm_head(probe).float().sum() * 0.0
        if gen_t.any():
            logits = model.model.generation_head(hidden[gen_t]).float()
            nll[gen_t] = F.cross_entropy(logits, targets[gen_t] - spec.gen_offset, reduction="none")
        elif every:
            nll = nll + model.model.generation_head(probe).float().sum() * 0.0
        return TargetNLL(nll=nll, text_mask=text_t, gen_mask=gen_t)

    def sft_loss(self, model: Any, batch: dict[str, Any], *, prompt_dropout: float = 0.0,
                 gen_weight: float = 1.0, step: int = 0) -> dict[str, torch.Tensor]:
        """Exact autoregressive NLL: text through ``lm_head``, codes through ``generation_head``."""
        return weighted_sft_loss(self.target_nll(model, batch, prompt_dropout=prompt_dropout), gen_weight)

    def sequence_logps(self, model: Any, batch: dict[str, Any], *, average: bool = False,
                       step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact sums of the targets' log-probs (no randomness: ``step`` is not needed)."""
        return summed_logps(self.target_nll(model, batch), average)

    # ------------------------------------------------------------------ probes
    def backbone_parameters(self) -> list[Any]:
        return list(self._base().model.language_model.parameters())

    def generation_loss(self, prompt: str, codes: Sequence[int]) -> torch.Tensor:
        spec, model = self.spec, self._base()
        head = self.gen_prompt_ids(prompt)
        ids = head + [spec.gen_offset + int(c) for c in codes] + [spec.eoi_token_id, self.tokenizer.eos_token_id]
        labels = [IGNORE_INDEX] * (len(head) - 1) + ids[len(head) - 1 :]
        out = self.target_nll(model, {"input_ids": torch.tensor([ids], device=self.device),
                                      "labels": torch.tensor([labels], device=self.device)})
        return (out.nll * out.gen_mask).sum() / out.gen_mask.sum()

    def understanding_loss(self, image: Any, question: str, answer: str) -> torch.Tensor:
        model = self._base()
        word = self.answer_token_ids((answer,))[0]
        ids = self.und_prompt_ids(question) + [word]
        labels = [IGNORE_INDEX] * (len(ids) - 1) + [word]
        side = model.config.vision_config.image_size
        batch = {"input_ids": torch.tensor([ids], device=self.device), "labels": torch.tensor([labels], device=self.device),
                 "pixel_values": self.pixels([image], size=side, fit="pad")}
        out = self.target_nll(model, batch)
        return (out.nll * out.text_mask).sum() / out.text_mask.sum()


#: the image tokenizer's tensors in a Janus checkpoint
VQ_PREFIX = "model.vqmodel."


class _ImageTokenizerOnly(torch.nn.Module):
    """A Janus model reduced to its VQ image tokenizer (``model.vqmodel``), for :meth:`JanusAdapter.load_image_tokenizer`."""

    def __init__(self, config: Any, vq: Any):
        super().__init__()
        self.config = config
        self.model = torch.nn.Module()
        self.model.vqmodel = vq


def _checkpoint_file(path: str, name: str) -> Any:
    """``name`` inside a local checkpoint folder or a hub repository (downloaded), or None."""
    from pathlib import Path

    folder = Path(path)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(path, name))
    except Exception:  # noqa: BLE001 - no such file (or no hub): the caller loads the whole checkpoint instead
        return None


def _vq_files(path: str) -> list[Any]:
    """The safetensors file(s) holding the image tokenizer's tensors (only those shards of a sharded checkpoint)."""
    import json

    index = _checkpoint_file(path, "model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted({f for key, f in weight_map.items() if key.startswith(VQ_PREFIX)})
        files = [_checkpoint_file(path, shard) for shard in shards]
        return files if files and all(f is not None for f in files) else []
    single = _checkpoint_file(path, "model.safetensors")
    return [single] if single is not None else []


def _read_prefixed(files: Sequence[Any], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix`` (prefix removed), read lazily from safetensors files."""
    from safetensors import safe_open

    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = handle.get_tensor(key)
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any, room: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, W) token ids and a (B, W + room) attention mask (``room`` ones for tokens to come)."""
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width + room), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return tokens.to(device), mask.to(device)


def _can_step_layers(lm: Any) -> bool:
    """Whether a one-token decoding step may call the decoder layers directly.

    ``LlamaModel.forward`` rebuilds masks and output wrappers on every call; for
    a one-token step with a KV cache none of that is needed.  Only the Llama
    stack (Janus' language model) with eager / SDPA attention takes this path.
    """
    config = getattr(lm, "config", None)
    return (
        type(lm).__name__ == "LlamaModel"
        and all(hasattr(lm, name) for name in ("rotary_emb", "layers", "norm"))
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
    )


def _decode_step(lm: Any, embeds: torch.Tensor, position: torch.Tensor, past: Any, bias: torch.Tensor | None) -> torch.Tensor:
    """One cached decoding step through the decoder layers (see :func:`_can_step_layers`)."""
    hidden = embeds
    rotary = lm.rotary_emb(hidden, position_ids=position)
    for layer in lm.layers[: lm.config.num_hidden_layers]:
        hidden = layer(
            hidden, attention_mask=bias, position_embeddings=rotary, position_ids=position, past_key_values=past, use_cache=True
        )
        if isinstance(hidden, tuple):  # older transformers return (hidden_states, ...)
            hidden = hidden[0]
    return lm.norm(hidden)


def _filtered_probs(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Softmax after top-k and nucleus (top-p) filtering, row-wise."""
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove_sorted = cum - sorted_scores.softmax(-1) >= top_p  # keep the token that crosses top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores.softmax(-1)
