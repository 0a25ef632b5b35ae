"""Whether sharding is really active.

FSDP asked for but not enabled by accelerate (accelerate 1.x never enables it on CPU: the run becomes
plain data parallelism, every rank holding the whole model) is logged as a warning.

Proof of sharding from inside training: with ``UNIGAP_REPORT_SHARDING=1`` every rank writes, when
training begins (after the host's wrappers are in place), the types of its parameters (``DTensor`` for
FSDP2, ``FlatParameter`` for FSDP1, ``ZeRO3Parameter`` for DeepSpeed ZeRO-3, ``Parameter`` otherwise) and the bytes it holds locally to
``output_dir/unigap_sharding.rank{R}.json``.

An FSDP or ZeRO-3 configuration that silently falls back to plain data parallelism shows here as plain
parameters whose local bytes equal the whole model's.

Saving: under FSDP2 with a sharded state dict (accelerate's default) the host's final ``save_model`` writes no
weights; :func:`save_full_weights` gathers and saves them (the trainers call it).  Whole parameters for replay's
generation: :func:`whole_parameters`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_KEY = "UNIGAP_REPORT_SHARDING"
FILE_PATTERN = "unigap_sharding.rank{rank}.json"


def wanted() -> bool:
    return os.environ.get(ENV_KEY, "") not in ("", "0")


def fsdp_requested(trainer: Any) -> bool:
    """The YAML's ``fsdp`` keys or an accelerate FSDP config (``ACCELERATE_USE_FSDP``) ask for FSDP."""
    return bool(getattr(trainer.args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def warn_if_not_sharded(trainer: Any) -> bool:
    """Warn when FSDP is asked for but the host's accelerator did not enable it; True when it warned."""
    if not fsdp_requested(trainer) or getattr(trainer.accelerator.state, "fsdp_plugin", None) is not None:
        return False
    from .common import logger

    logger().warning_rank0(
        "unigap: FSDP was asked for (fsdp / an accelerate FSDP config) but accelerate did not enable it "
        f"(distributed type {trainer.accelerator.state.distributed_type}; accelerate enables FSDP on accelerators "
        "only, never on CPU): training runs as plain data parallelism, every rank holding the whole model"
    )
    return True


def local_checksum(module: Any) -> float:
    """A float64 checksum of this rank's local trainable parameter values (shards for sharded parameters)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                local = p.ds_tensor if hasattr(p, "ds_tensor") else p.to_local() if hasattr(p, "to_local") else p
                local = local.detach().double()
                total += float((local * local).sum() + local.sum())
    return total


def parameter_checksums(module: Any) -> dict[str, list[float]]:
    """Per trainable parameter (named as in the unwrapped model: a DDP wrapper's ``module.`` dropped): float64 sum
    and sum of squares of this rank's local values (its shard for a sharded parameter).  Summed over the ranks they
    are the whole parameter's, which is how a test checks that saved weights are the trained ones."""
    from ...training import checksum

    return {name.removeprefix("module."): list(checksum(p)) for name, p in module.named_parameters() if p.requires_grad}


def parameter_report(module: Any) -> dict[str, Any]:
    """Per parameter type: count, local elements and bytes, and the global elements where the type knows them."""
    by_type: dict[str, dict[str, int]] = {}
    local_bytes = trainable_local_bytes = 0
    for p in module.parameters():
        kind = type(p).__name__
        local = p.to_local() if hasattr(p, "to_local") else p  # a DTensor holds only its own shard
        if hasattr(p, "ds_tensor"):  # a DeepSpeed ZeRO-3 parameter: its partition
            kind, local = "ZeRO3Parameter", p.ds_tensor
        nbytes = local.numel() * local.element_size()
        entry = by_type.setdefault(kind, {"count": 0, "local_numel": 0, "local_bytes": 0, "global_numel": 0})
        entry["count"] += 1
        entry["local_numel"] += local.numel()
        entry["local_bytes"] += nbytes
        unsharded = getattr(p, "_unpadded_unsharded_size", None)  # FSDP1's FlatParameter
        if hasattr(p, "ds_numel"):
            entry["global_numel"] += int(p.ds_numel)
        else:
            entry["global_numel"] += int(unsharded.numel()) if unsharded is not None else int(p.numel())
        local_bytes += nbytes
        if p.requires_grad:
            trainable_local_bytes += nbytes
    return {"by_type": by_type, "local_bytes": local_bytes, "trainable_local_bytes": trainable_local_bytes}


def optimizer_state_bytes(optimizer: Any) -> int | None:
    """Bytes of optimizer state (Adam's two moments) this rank holds locally, or None without an optimizer.

    The host's optimizer is wrapped (accelerate's ``AcceleratedOptimizer``, then DeepSpeed's ZeRO optimizer, each
    exposing the inner one as ``.optimizer``); the innermost torch optimizer holds the state: over this rank's
    partitions under ZeRO-1/2/3, over local shards (DTensors) under FSDP2, over whole tensors otherwise.  Scalars
    (Adam's step count) are left out; ZeRO's fp32 master partitions are not optimizer state and not counted."""
    import torch

    if optimizer is None:
        return None
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    total = 0
    for entry in getattr(optimizer, "state", {}).values():
        for value in (entry.values() if isinstance(entry, dict) else ()):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


def write_report(trainer: Any, model: Any, **extra: Any) -> Path:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    state = trainer.accelerator.state
    fsdp_plugin = getattr(state, "fsdp_plugin", None)
    report = {
        "rank": rank,
        "world_size": world,
        "is_fsdp_enabled": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "fsdp_version": getattr(fsdp_plugin, "fsdp_version", None) if fsdp_plugin is not None else None,
        "is_deepspeed_enabled": bool(getattr(trainer, "is_deepspeed_enabled", False)),
        "wrapper": type(model).__name__,
        "zero_stage": _zero_stage(trainer),
        **parameter_report(model),
        **extra,
    }
    ref = getattr(trainer, "ref_model", None)  # DPO's frozen reference, when it is a separate model
    if ref is not None:
        report["reference"] = parameter_report(ref)
    out = Path(trainer.args.output_dir) / FILE_PATTERN.format(rank=rank)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return out


def _zero_stage(trainer: Any) -> int | None:
    """The DeepSpeed ZeRO stage the host's accelerator runs, or None without DeepSpeed."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def install(trainer: Any) -> None:
    """Warn when FSDP is asked for but inactive; with ``UNIGAP_REPORT_SHARDING`` set, report every rank's
    parameters when training begins (plus checksums of its local trainable values at the beginning and the end,
    evidence that the shards were trained, and at the end one per trainable parameter)."""
    warn_if_not_sharded(trainer)
    if not wanted():
        return
    from transformers import TrainerCallback

    def model():
        return trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model

    class _ShardingReport(TrainerCallback):
        begin: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = local_checksum(model())
            write_report(trainer, model(), checksum_begin=self.begin)

        def on_train_end(self, args, state, control, **kwargs):
            write_report(trainer, model(), checksum_begin=self.begin, checksum_end=local_checksum(model()),
                         checksums_end=parameter_checksums(model()),
                         optimizer_local_bytes=optimizer_state_bytes(trainer.optimizer))

    trainer.add_callback(_ShardingReport())


def fsdp_version(trainer: Any) -> int | None:
    """1 or 2 when the host's accelerator really runs FSDP, else None."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return None if plugin is None else int(getattr(plugin, "fsdp_version", 1) or 1)


def save_full_weights(trainer: Any, output_dir: str) -> bool:
    """FSDP2 with a sharded state dict (accelerate's default for FSDP2, and the only one the YAML's ``fsdp`` keys
    give): the host's ``save_model`` writes no weights at all.  Gather the full state dict instead (a collective:
    every rank calls this; rank 0 receives it in CPU memory) and save it as a run without FSDP saves its model
    (``Trainer._save``: ``save_pretrained`` in safetensors, or the adapter alone for LoRA, with the tokenizer /
    processor and training arguments).  True when it saved; False (nothing done) without FSDP2 or when the state
    dict type is already ``FULL_STATE_DICT``, which the host saves itself."""
    if fsdp_version(trainer) != 2:
        return False
    plugin = trainer.accelerator.state.fsdp_plugin
    if "FULL_STATE_DICT" in str(getattr(plugin, "state_dict_type", "")):
        return False
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .common import logger

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.args.should_save:
        trainer._save(output_dir, state_dict=state)
    logger().info_rank0(f"unigap: FSDP2 ({plugin.state_dict_type}): the full weights were gathered and saved to "
                        f"{output_dir}")
    return True


@contextmanager
def whole_parameters(model: Any) -> Iterator[None]:
    """Every FSDP2 module of ``model`` (or every ZeRO-3 parameter of a DeepSpeed engine) unsharded (all-gathered once, collectively on every rank) for the block.

    Inside, forwards run no collective at all (resharding after forward is switched off), so ranks may run
    different numbers of forwards, as replay's generation does; afterwards every module is resharded, its
    resharding setting restored and the forward order FSDP2 recorded for the next backward forgotten. A model
    without FSDP2 modules is left as it is. Uses FSDP2's private state (torch 2.13): tested by
    tests/test_sharded.py.
    """
    partitioned = getattr(model, "zero_optimization_partition_weights", None)  # a DeepSpeed engine
    if callable(partitioned) and partitioned():
        with _zero3_whole(model):
            yield
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = None
    modules = [m for m in model.modules() if FSDPModule is not None and isinstance(m, FSDPModule)]
    if not modules:
        yield
        return
    saved = []
    for m in modules:
        state = m._get_fsdp_state()
        saved.append((state, state._auto_reshard_after_forward,
                       [(g, g.post_forward_mesh_info) for g in state._fsdp_param_groups]))
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in modules:
            m.unshard()
        yield
    finally:
        for m in modules:
            m.reshard()
        for state, auto, groups in saved:
            state._auto_reshard_after_forward = auto
            for group, info in groups:
                group.post_forward_mesh_info = info
                # forwards record their order for the backward's prefetching; these forwards had no backward,
                # and their count differs between ranks: forget them, or the next backward's collectives mismatch
                getattr(group, "_post_forward_indices", []).clear()
            comm = getattr(state, "_comm_ctx", None)
            if comm is not None:
                comm.post_forward_order.clear()


@contextmanager
def _zero3_whole(engine: Any) -> Iterator[None]:
    """ZeRO-3: every parameter gathered once (read-only, on every rank) and the engine's per-module fetch /
    release hooks taken off meanwhile, so forwards run no collective; the hooks come back afterwards."""
    import deepspeed

    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if offload is not None:
            offload._remove_module_hooks()
        try:
            yield
        finally:
            if offload is not None:
                offload.setup_zero_stage3_hooks()
