"""MaskGIT decoding for Show-o v1 (``Showo.t2i_generate`` of showlab/Show-o), batch-invariant and per-seed deterministic.

Each row of a call owns a ``torch.Generator`` seeded with its seed (on the model's device) and consumes it exactly
as the original consumes its generator for a batch of one: per step one ``torch.multinomial`` over the ``(N, K)``
codebook probabilities, then ``N`` uniforms for the Gumbel noise of the re-masking.  A row's queries attend to that
row's keys only (its prompt, its unconditional twin's prompt for guidance, its own image span), so its codes never
depend on the other rows of the call: all rows share one forward per step (bit-identical to one row at a time on
CPU, tested).

:func:`maskgit_generate` prefills the text part of every distinct prompt (and the unconditional prompt) once into a
KV cache: text queries are causal and never see the image span, so each step only runs the ``N + 2`` span positions
(``<|soi|>``, codes, ``<|eoi|>``) against the cached text keys.  :func:`maskgit_generate_reference` runs the whole
sequence every step, as the original does, and must give the same codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .modeling import ShowoConfig, ShowoForConditionalGeneration

__all__ = [
    "mask_schedule",
    "maskgit_generate",
    "maskgit_generate_reference",
    "t2i_prompt_ids",
    "uncond_prompt_ids",
]


# ------------------------------------------------------------------------------------------------ prompts


def t2i_prompt_ids(config: ShowoConfig, text_ids: Sequence[int]) -> list[int]:
    """The text part of a T2I row, ``max_text_len`` ids: ``[PAD]* <|t2i|> bos text eos``.

    As the original (``UniversalPrompting.t2i_gen_prompt``): a bos is put in front of the text unless it already
    starts with one (bos = eos = 50256 for Phi), the row is left-padded with ``[PAD]``, and a too-long row is cut to
    ``max_text_len - 1`` ids and ends with eos.
    """
    bos, eos = config.bos_token_id, config.eos_token_id
    text = [int(t) for t in text_ids]
    if not text or text[0] != bos:
        text = [bos] + text
    ids = [config.t2i_token_id] + text + [eos]
    n = config.max_text_len
    if len(ids) <= n:
        return [config.pad_token_id] * (n - len(ids)) + ids
    return ids[: n - 1] + [eos]


def uncond_prompt_ids(config: ShowoConfig) -> list[int]:
    """The unconditional (classifier-free guidance) text part: ``[PAD]* <|t2i|> bos eos``."""
    return t2i_prompt_ids(config, [])


# ------------------------------------------------------------------------------------------------ schedule


def mask_schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mask ratio as a function of ``t = (step + 1) / steps`` (a float32 0-d tensor, as the original computes it):
    ``cosine`` cos(pi/2 t); ``linear`` 1 - t; ``pow<e>`` 1 - t^e (the last two clipped to [1e-6, 1]);
    ``sigmoid`` the original's sigmoid schedule with start -3, end 3, tau 1."""
    if name == "cosine":
        return lambda t: torch.cos(t * math.pi * 0.5)
    if name == "linear":
        return lambda t: (1 - t).clamp(min=1e-6, max=1.0)
    if name.startswith("pow"):
        try:
            exponent = float(name[3:])
        except ValueError:
            raise ValueError(f"unknown mask schedule {name!r} (pow needs an exponent, e.g. 'pow2')") from None
        return lambda t: (1.0 - t**exponent).clamp(min=1e-6, max=1.0)
    if name == "sigmoid":

        def sigmoid(t: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
            v_start = torch.sigmoid(torch.tensor(start / tau))
            v_end = torch.sigmoid(torch.tensor(end / tau))
            out = torch.sigmoid((t * (end - start) + start) / tau)
            return torch.clip((v_end - out) / (v_end - v_start), 1e-6, 1.0)

        return sigmoid
    raise ValueError(f"unknown mask schedule {name!r} (cosine, linear, pow<e>, sigmoid)")


def _plan(num_tokens: int, steps: int, temperature: float, schedule: str, compound: bool) -> list[tuple[int, float]]:
    """``[(mask_len before clamping, Gumbel temperature)]`` per step, computed with the original's arithmetic
    (float32 tensors for the schedule, Python floats for the temperature)."""
    fn = mask_schedule(schedule)
    plan = []
    tau = float(temperature)
    for step in range(steps):
        ratio = 1.0 * (step + 1) / steps
        mask_ratio = fn(torch.tensor(ratio))
        base = int((num_tokens * mask_ratio).floor())
        # the original reassigns its temperature each step, so it compounds: tau_k = tau_0 prod_{j<=k} (1 - r_j)
        tau = tau * (1.0 - ratio) if compound else float(temperature) * (1.0 - ratio)
        plan.append((base, tau))
    return plan


def _log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t.clamp(min=1e-20))


def _maskgit_step(
    logits: torch.Tensor, known: torch.Tensor, gen: torch.Generator, base_len: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MaskGIT step for one row.  ``logits`` (N, K) float32 over the codebook; ``known`` (N,) codes with -1 at
    masked positions.  Returns ``(sampled, next_known)``."""
    n = logits.shape[0]
    probs = logits.softmax(dim=-1)
    sampled = torch.multinomial(probs, 1, generator=gen)[:, 0]
    unknown = known < 0
    sampled = torch.where(unknown, sampled, known)
    selected = torch.gather(probs, -1, sampled[:, None])[:, 0]
    # known tokens get the largest finite probability (confidence log(finfo.max) ~ 88.7), as the original
    selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
    mask_len = max(1, min(int(unknown.sum()) - 1, base_len))
    noise = torch.zeros((1, n), dtype=selected.dtype, device=selected.device).uniform_(0, 1, generator=gen)[0]
    confidence = _log(selected) + tau * -_log(-_log(noise))
    cut_off = torch.sort(confidence).values[mask_len]
    masking = confidence < cut_off
    return sampled, torch.where(masking, torch.full_like(sampled, -1), sampled)


# ------------------------------------------------------------------------------------------------ logits


def _unwrap(model) -> ShowoForConditionalGeneration:
    if not isinstance(model, ShowoForConditionalGeneration) and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if not isinstance(model, ShowoForConditionalGeneration):
        raise TypeError(f"a ShowoForConditionalGeneration is needed, got {type(model).__name__}")
    return model


def _check_prompts(cfg: ShowoConfig, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[list[int]]:
    if len(prompt_ids) != len(seeds):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(seeds)} seeds: one seed per row is needed")
    banned = {cfg.soi_token_id, cfg.eoi_token_id, cfg.mmu_token_id, cfg.mask_token_id}
    rows = []
    for i, p in enumerate(prompt_ids):
        row = [int(t) for t in p]
        if len(row) != cfg.max_text_len:
            raise ValueError(
                f"prompt {i} has {len(row)} ids; a T2I text part is max_text_len = {cfg.max_text_len} ids "
                "(build it with t2i_prompt_ids)"
            )
        if banned.intersection(row) or not all(0 <= t < cfg.code_offset for t in row):
            raise ValueError(f"prompt {i} holds image-span or non-text ids; build it with t2i_prompt_ids")
        rows.append(row)
    return rows


def _span_ids(cfg: ShowoConfig, known: torch.Tensor) -> torch.Tensor:
    """``<|soi|> tokens <|eoi|>`` for one row's current codes (-1 = mask)."""
    tokens = torch.where(known < 0, torch.full_like(known, cfg.mask_token_id), known + cfg.code_offset)
    soi = known.new_tensor([cfg.soi_token_id])
    eoi = known.new_tensor([cfg.eoi_token_id])
    return torch.cat([soi, tokens, eoi])


def _guided(logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """(1 or 2, N, K) -> (N, K): ``(1 + w) cond - w uncond`` (the original's guidance) when a twin is present."""
    if logits.shape[0] == 1:
        return logits[0]
    return (1 + guidance_scale) * logits[0] - guidance_scale * logits[1]


class _FullSequenceLogits:
    """Codebook logits of one row (and its unconditional twin) from the whole sequence, every call."""

    def __init__(self, model: ShowoForConditionalGeneration, prompt: list[int], uncond: list[int] | None):
        self.model = model
        cfg = model.config
        dev = model.device
        self.prompts = torch.tensor([prompt] + ([uncond] if uncond is not None else []), device=dev)
        self.first = cfg.max_text_len + 1  # the first code position
        self.n, self.k, self.off = cfg.num_vq_tokens, cfg.codebook_size, cfg.code_offset

    def __call__(self, known: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        span = _span_ids(self.model.config, known)
        ids = torch.cat([self.prompts, span.unsqueeze(0).expand(self.prompts.shape[0], -1)], dim=1)
        logits = self.model(ids).logits
        logits = logits[:, self.first : self.first + self.n, self.off : self.off + self.k].float()
        return _guided(logits, guidance_scale)


class _PrefixCache:
    """The text part of one prompt (and, for guidance, the unconditional prompt) prefilled once; each call runs
    only the image span against it and crops the cache back."""

    def __init__(self, model: ShowoForConditionalGeneration, kv: list[tuple[torch.Tensor, torch.Tensor]],
                 key_mask: torch.Tensor):
        self.model = model
        cfg = model.config
        self.p = cfg.max_text_len
        self.n, self.k, self.off = cfg.num_vq_tokens, cfg.codebook_size, cfg.code_offset
        self.cache = DynamicCache(ddp_cache_data=kv)
        self.rows = key_mask.shape[0]
        # span queries see every non-pad prefix key and the whole span (the omni rule for an image span)
        dtype = model.dtype
        span_len = self.n + 2
        blocked = torch.cat(
            [~key_mask, torch.zeros(self.rows, span_len, dtype=torch.bool, device=key_mask.device)], dim=1
        )
        mask = torch.zeros(self.rows, 1, span_len, self.p + span_len, dtype=dtype, device=key_mask.device)
        self.mask = mask.masked_fill_(blocked[:, None, None, :], torch.finfo(dtype).min)
        self.positions = torch.arange(self.p, self.p + span_len, device=key_mask.device).unsqueeze(0).expand(self.rows, -1)
        lm_head = model.showo.lm_head
        self.weight = lm_head.weight[self.off : self.off + self.k]
        self.bias = None if lm_head.bias is None else lm_head.bias[self.off : self.off + self.k]

    def span_logits(self, span: torch.Tensor) -> torch.Tensor:
        """(rows, N + 2) span ids, one per cached prefix row -> (rows, N, K) float32 codebook logits."""
        try:
            out = self.model.showo.model(
                input_ids=span,
                attention_mask=self.mask,
                position_ids=self.positions,
                past_key_values=self.cache,
                use_cache=True,
            )
        finally:
            self.cache.crop(self.p)
        hidden = out.last_hidden_state[:, 1 : 1 + self.n]
        return F.linear(hidden, self.weight, self.bias).float()

    def __call__(self, known: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        span = _span_ids(self.model.config, known).unsqueeze(0).expand(self.rows, -1)
        return _guided(self.span_logits(span), guidance_scale)


def _prefill(model: ShowoForConditionalGeneration, prompt: list[int]) -> tuple[list, torch.Tensor]:
    """KV of one text part (batch of one) and its non-pad key mask (1, P)."""
    ids = torch.tensor([prompt], device=model.device)
    mask = model.omni_attention_mask(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    cache = DynamicCache()
    model.showo.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return kv, ids != model.config.pad_token_id


# ------------------------------------------------------------------------------------------------ drivers


class _EvalMode:
    """Eval mode for the duration of a call; every module's own mode is restored afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode


def _run(model, prompt_ids, seeds, steps, guidance_scale, temperature, schedule, compound_temperature, logits_for):
    cfg = model.config
    rows = _check_prompts(cfg, prompt_ids, seeds)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    plan = _plan(cfg.num_vq_tokens, int(steps), temperature, schedule, compound_temperature)
    dev = model.device
    out = torch.empty(len(rows), cfg.num_vq_tokens, dtype=torch.long, device=dev)
    for i, (row, seed) in enumerate(zip(rows, seeds)):
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        known = torch.full((cfg.num_vq_tokens,), -1, dtype=torch.long, device=dev)
        source = logits_for(row)
        sampled = known
        for base_len, tau in plan:
            sampled, known = _maskgit_step(source(known, guidance_scale), known, gen, base_len, tau)
        out[i] = sampled.clamp(0, cfg.codebook_size - 1)
    return out


def _run_batched(model, rows, seeds, plan, w, prefix) -> torch.Tensor:
    """All rows of a call in one span forward per step (their prefixes' caches stacked); each row still samples
    from its own generator, in the same order as :func:`_run`."""
    cfg = model.config
    dev = model.device
    n = cfg.num_vq_tokens
    parts = [prefix(row) for row in rows]
    if w > 0:
        parts = parts + [prefix(uncond_prompt_ids(cfg))] * len(rows)
    layers = len(parts[0][0])
    kv = [(torch.cat([part[0][i][0] for part in parts]), torch.cat([part[0][i][1] for part in parts]))
          for i in range(layers)]
    key_mask = torch.cat([part[1] for part in parts])
    source = _PrefixCache(model, kv, key_mask)
    gens = [torch.Generator(device=dev).manual_seed(int(seed)) for seed in seeds]
    known = torch.full((len(rows), n), -1, dtype=torch.long, device=dev)
    sampled = known.clone()
    for base_len, tau in plan:
        span = torch.stack([_span_ids(cfg, known[i]) for i in range(len(rows))])
        logits = source.span_logits(torch.cat([span, span]) if w > 0 else span)
        if w > 0:
            logits = (1 + w) * logits[: len(rows)] - w * logits[len(rows) :]
        for i in range(len(rows)):
            sampled[i], known[i] = _maskgit_step(logits[i], known[i], gens[i], base_len, tau)
    return sampled.clamp(0, cfg.codebook_size - 1)


@torch.no_grad()
def maskgit_generate(
    model: ShowoForConditionalGeneration,
    prompt_ids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
    temperature: float,
    schedule: str = "cosine",
    compound_temperature: bool = True,
    batched: bool = True,
) -> torch.Tensor:
    """MaskGIT text-to-image decoding: ``(B, num_vq_tokens)`` codes in ``[0, codebook_size)``.

    ``prompt_ids``: one T2I text part per row (``t2i_prompt_ids``); ``seeds``: one per row.  The sequence is
    ``prompt <|soi|> [mask]*N <|eoi|>``; with ``guidance_scale`` w > 0 the logits are ``(1+w) cond - w uncond``
    (the unconditional row is ``uncond_prompt_ids``; standard CFG scale s is w = s - 1).  Each step samples every
    position from the softmax over the codebook logits, keeps known codes, and re-masks the ``mask_len`` least
    confident new ones (confidence ``log p + tau * Gumbel``; ``mask_len = clamp(floor(N * schedule), 1,
    unknown - 1)``).  ``compound_temperature`` reproduces the original's ``tau = tau * (1 - ratio)`` reassignment;
    False uses ``tau_0 * (1 - ratio)``.  Logits are taken in float32.

    Each prompt's text part is computed once (the unconditional one once per call); every step runs only the image
    span against that cache.  ``batched`` (default): one span forward per step for all rows of the call (their
    cached prefixes stacked), each row then sampling from its own generator; False: rows one at a time (with their
    guidance twin).  A row attends to its own keys only either way; on CPU both give bit-identical codes for any
    batch (tested); on a GPU a different batch shape may pick other kernels, as for any batched model.
    """
    model = _unwrap(model)
    cfg = model.config
    w = float(guidance_scale)
    prefixes: dict[tuple[int, ...], tuple[list, torch.Tensor]] = {}
    sources: dict[tuple[int, ...], _PrefixCache] = {}

    def prefix(prompt: list[int]):
        key = tuple(prompt)
        if key not in prefixes:
            prefixes[key] = _prefill(model, prompt)
        return prefixes[key]

    def logits_for(prompt: list[int]) -> _PrefixCache:
        key = tuple(prompt)
        if key not in sources:
            kv, key_mask = prefix(prompt)
            if w > 0:
                ukv, umask = prefix(uncond_prompt_ids(cfg))
                kv = [(torch.cat([k, uk]), torch.cat([v, uv])) for (k, v), (uk, uv) in zip(kv, ukv)]
                key_mask = torch.cat([key_mask, umask])
            sources[key] = _PrefixCache(model, kv, key_mask)
        return sources[key]

    with _EvalMode(model):
        if batched and len(prompt_ids) > 1:
            rows = _check_prompts(cfg, prompt_ids, seeds)
            if int(steps) < 1:
                raise ValueError(f"steps must be >= 1, got {steps}")
            plan = _plan(cfg.num_vq_tokens, int(steps), temperature, schedule, compound_temperature)
            return _run_batched(model, rows, seeds, plan, w, prefix)
        return _run(model, prompt_ids, seeds, steps, w, temperature, schedule, compound_temperature, logits_for)


@torch.no_grad()
def maskgit_generate_reference(
    model: ShowoForConditionalGeneration,
    prompt_ids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
    temperature: float,
    schedule: str = "cosine",
    compound_temperature: bool = True,
) -> torch.Tensor:
    """:func:`maskgit_generate` done the straightforward way (for tests and the benchmark): one image at a time,
    the whole sequence (text part, span; plus the unconditional twin as a batch of two, as the original) through
    ``model.forward`` every step.  Same random draws, same codes."""
    model = _unwrap(model)
    cfg = model.config
    w = float(guidance_scale)
    uncond = uncond_prompt_ids(cfg) if w > 0 else None

    def logits_for(prompt: list[int]) -> _FullSequenceLogits:
        return _FullSequenceLogits(model, prompt, uncond)

    with _EvalMode(model):
        return _run(model, prompt_ids, seeds, steps, w, temperature, schedule, compound_temperature, logits_for)
