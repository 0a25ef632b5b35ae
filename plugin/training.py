"""Host-independent pieces of unified-model training (SFT and DPO losses).

The bridge's trainer subclasses are thin: they call into here.  The loss is
computed *inside* the model's forward (a dispatching ``forward`` installed on
the model instance) so that DDP, DeepSpeed and FSDP wrappers, which only hook
``forward``, see and synchronise every parameter the loss uses.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from .models import adapter_class_for
from .models.base import TargetNLL

#: keyword the trainers pass through every wrapper to reach unigap's forward
FORWARD_KEY = "unigap"
_BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")


def unwrap_model(model: Any) -> Any:
    """The transformers model under DDP / accelerate / PEFT wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
    return model


def adapter_for_model(model: Any, tokenizer: Any) -> Any | None:
    """An adapter for a (possibly wrapped) unified model, or None for other models."""
    base = unwrap_model(model)
    cls = adapter_class_for(getattr(base, "config", None))
    return None if cls is None else cls(base, tokenizer)


def install_forward(model: Any, adapter: Any) -> None:
    """Make ``model(..., unigap={...})`` compute unigap's losses; other calls are unchanged.

    The patch is an instance attribute (the checkpoint's class, and so its saved
    ``architectures``, stay the transformers class).
    """
    base = unwrap_model(model)
    base._unigap_adapter = adapter
    if getattr(base, "_unigap_forward_installed", False):
        return
    original = type(base).forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        request = kwargs.pop(FORWARD_KEY, None)
        if request is None:
            return original(self, *args, **kwargs)
        batch = {k: kwargs[k] for k in _BATCH_KEYS if kwargs.get(k) is not None}
        tnll = self._unigap_adapter.target_nll(self, batch, prompt_dropout=request.get("prompt_dropout", 0.0))
        if request.get("mode") == "sft":
            return sft_loss(tnll, gen_weight=request.get("gen_weight", 1.0))
        return {"nll": tnll.nll, "text_mask": tnll.text_mask, "gen_mask": tnll.gen_mask}

    base.forward = types.MethodType(forward, base)
    base._unigap_forward_installed = True


def sft_loss(tnll: TargetNLL, gen_weight: float = 1.0) -> dict[str, torch.Tensor]:
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


def sequence_logps(out: dict[str, torch.Tensor], average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum (or mean) of target log-probs, and the number of targets."""
    mask = out["text_mask"] | out["gen_mask"]
    length = mask.sum(-1)
    logps = -(out["nll"] * mask).sum(-1)
    if average:
        logps = logps / length.clamp(min=1)
    return logps, length


class RunningStats:
    """Per-head NLL sums and counts between two log lines (summed over ranks when logged).

    Kept as one device tensor so a training step never waits on a device-to-host copy.
    """

    def __init__(self) -> None:
        self._totals: torch.Tensor | None = None

    def add(self, out: dict[str, torch.Tensor]) -> None:
        step = torch.stack([out["text_nll_sum"], out["gen_nll_sum"], out["n_text"], out["n_gen"]]).double()
        self._totals = step if self._totals is None else self._totals + step

    def take(self) -> torch.Tensor:
        """The totals as a float64 tensor (ready for an all-reduce), and start over."""
        totals = self._totals if self._totals is not None else torch.zeros(4, dtype=torch.float64)
        self._totals = None
        return totals

    @staticmethod
    def summarize(totals: torch.Tensor) -> dict[str, float]:
        text_sum, gen_sum, n_text, n_gen = totals.tolist()
        logs = {}
        if n_text:
            logs["text_loss"] = round(text_sum / n_text, 4)
        if n_gen:
            logs["gen_loss"] = round(gen_sum / n_gen, 4)
        return logs


def pair_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """A content key per (chosen, rejected) pair of a concatenated DPO batch (padding ignored)."""
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    half = ids.shape[0] // 2
    rows = [ids[i][mask[i]].numpy().tobytes() for i in range(ids.shape[0])]
    return [rows[i] + b"|" + rows[half + i] for i in range(half)]


def fingerprint(params: list[tuple[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Exact float64 checksums of parameters, to prove a reference model never moved."""
    out = {}
    with torch.no_grad():
        for name, param in params:
            data = param.detach().double()
            out[name] = [float(data.sum()), float((data * data).sum())]
    return out
