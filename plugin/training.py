"""Host-independent pieces of unified-model training (SFT and DPO losses).

The host's trainer subclasses are thin: they call into here, and here every
loss comes from the model's family.  The loss is computed *inside* the model's forward (a dispatching ``forward`` installed on
the model instance) so that DDP, DeepSpeed and FSDP wrappers, which only hook
``forward``, see and synchronise every parameter the loss uses.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from .models import adapter_class_for

#: keyword the trainers pass through every wrapper to reach unigap's forward
FORWARD_KEY = "unigap"


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
    """The family's adapter for a (possibly wrapped) unified model, or None for other models."""
    base = unwrap_model(model)
    cls = adapter_class_for(getattr(base, "config", None))
    return None if cls is None else cls(base, tokenizer)


def install_forward(model: Any, adapter: Any) -> None:
    """Make ``model(..., unigap={...})`` compute the family's losses; other calls are unchanged.

    Requests: ``{"mode": "sft", "prompt_dropout", "gen_weight", "step"}`` returns
    the family's :meth:`~unigap.models.base.UnifiedAdapter.sft_loss` dict;
    ``{"mode": "logps", "average", "step"}`` returns ``{"logps", "length"}`` from
    its :meth:`~unigap.models.base.UnifiedAdapter.sequence_logps`.  The patch is
    an instance attribute (the checkpoint's class, and so its saved
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
        family = self._unigap_adapter
        batch = {k: kwargs[k] for k in family.batch_keys if kwargs.get(k) is not None}
        step = int(request.get("step", 0))
        if request.get("mode") == "sft":
            return family.sft_loss(self, batch, prompt_dropout=request.get("prompt_dropout", 0.0),
                                   gen_weight=request.get("gen_weight", 1.0), step=step)
        logps, length = family.sequence_logps(self, batch, average=bool(request.get("average")), step=step)
        return {"logps": logps, "length": length}

    base.forward = types.MethodType(forward, base)
    base._unigap_forward_installed = True


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


#: elements per chunk of :func:`checksum` (float64: 128 MiB of transient memory at most)
CHECKSUM_CHUNK = 1 << 24


def checksum(tensor: torch.Tensor, chunk: int = CHECKSUM_CHUNK) -> tuple[float, float]:
    """float64 sum and sum of squares of ``tensor``, streamed ``chunk`` elements at a time.

    Equal (to float64 rounding) to ``t.double().sum()`` and ``(t.double() ** 2).sum()`` of the whole
    tensor, but the transient memory on the tensor's device is one float64 chunk, not a float64 copy
    of the tensor (and its square).  Non-contiguous tensors are read in blocks of whole rows, never
    copied whole.  A sharded parameter (FSDP2's ``DTensor``, a DeepSpeed ZeRO-3 parameter) is summed over
    this rank's shard only: compare checksums taken on the same rank.
    """
    if hasattr(tensor, "ds_tensor"):
        tensor = tensor.ds_tensor
    elif hasattr(tensor, "to_local"):
        tensor = tensor.to_local()
    acc = torch.zeros(2, dtype=torch.float64, device=tensor.device)
    with torch.no_grad():
        _accumulate(tensor.detach(), max(1, int(chunk)), acc)
    total, squares = acc.tolist()
    return total, squares


def _accumulate(t: torch.Tensor, chunk: int, acc: torch.Tensor) -> None:
    if t.numel() == 0:
        return
    if t.is_contiguous() or t.dim() == 1:
        flat = t.view(-1) if t.is_contiguous() else t
        for start in range(0, flat.numel(), chunk):
            _add(flat[start:start + chunk], acc)
        return
    row = t[0].numel()
    if row > chunk:
        for sub in t:
            _accumulate(sub, chunk, acc)
        return
    for block in t.split(chunk // row):  # whole rows, at most one chunk
        _add(block, acc)


def _add(part: torch.Tensor, acc: torch.Tensor) -> None:
    part = part.to(torch.float64).reshape(-1)  # at most one chunk
    acc[0] += part.sum()
    acc[1] += torch.dot(part, part)


def fingerprint(params: list[tuple[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Exact float64 checksums of parameters, to prove a reference model never moved (see :func:`checksum`)."""
    return {name: list(checksum(param)) for name, param in params}


def _local_holders(t: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
    """The tensors holding ``t``'s values in this process, each with whether it is a shard that its sharding
    engine owns: ``t`` itself; a DeepSpeed ZeRO-3 parameter's partition (``ds_tensor``, its ``data`` being empty);
    an FSDP2 DTensor's local shard (a view into the storage FSDP2 keeps for the parameter)."""
    holders = [(t, False)]
    if getattr(t, "ds_tensor", None) is not None:
        holders.append((t.ds_tensor, False))
    local = getattr(t, "_local_tensor", None)
    if local is not None:
        holders = [(local, True)]
    return holders


def release_storage(module: torch.nn.Module, keep: Any = None) -> tuple[int, list]:
    """Free the storage of every parameter and buffer of ``module`` even while others still hold the module.

    Each tensor object keeps its identity and dtype but its data becomes an empty tensor, so every
    holder of the module or of its parameters sees the release (a later use fails on the shapes
    instead of computing with freed memory).  Sharded parameters give up what this process holds: a ZeRO-3
    parameter its partition, an FSDP2 DTensor its local shard (whose storage, which FSDP2 also holds, is resized
    to nothing).  Returns the bytes of storage let go and a weak reference to each storage: dead, or alive with
    no bytes, once nothing holds the memory any more (see :func:`storages_alive`).  Refuses when ``module``
    shares storage with ``keep`` (the model being trained).
    """
    import weakref

    from .errors import UnigapError

    def held(t: torch.Tensor) -> bool:
        return t.device.type != "meta" and t.numel() > 0

    kept = set()
    if keep is not None:
        kept = {h.untyped_storage().data_ptr() for t in (*keep.parameters(), *keep.buffers())
                for h, _ in _local_holders(t) if held(h)}
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    holders = [(name, h, owned) for name, t in tensors for h, owned in _local_holders(t) if held(h)]
    storages = {}
    for name, h, _ in holders:
        storage = h.untyped_storage()
        if storage.data_ptr() in kept:
            raise UnigapError(f"cannot release {name}: it shares its storage with the module to keep (the trained model)")
        storages.setdefault(storage.data_ptr(), storage)
    released = sum(storage.nbytes() for storage in storages.values())
    refs = [weakref.ref(storage) for storage in storages.values()]
    storages.clear()
    with torch.no_grad():
        for _, h, owned in holders:
            if owned:  # an FSDP2 shard: FSDP2 keeps the padded storage it is a view of
                h.untyped_storage().resize_(0)
            h.data = torch.empty(0, dtype=h.dtype, device=h.device)
    return released, refs


def storages_alive(refs: list) -> tuple[int, int]:
    """How many of :func:`release_storage`'s storages still hold memory, and how many bytes."""
    alive = [s for ref in refs if (s := ref()) is not None and s.nbytes() > 0]
    return len(alive), sum(s.nbytes() for s in alive)