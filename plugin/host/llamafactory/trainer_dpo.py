"""``llamafactory.train.dpo.trainer``: the DPO trainer whose log-probs, for unified models, are the family's.

A family's :meth:`~unigap.models.base.UnifiedAdapter.sequence_logps` is exact
(autoregressive) or an estimator whose randomness depends on the row and the
step only, so ``gen_precompute_ref`` (reference log-probs computed once before
training, then the reference copy's memory released) equals the live reference.
The reference is verified unchanged after training, or, when precomputed, over
the precomputation (``unigap_reference_check.json``, which also says how many
bytes of reference weights were freed).
"""

from __future__ import annotations

import json
import os

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer

from ...fsutil import write_text_atomic
from ...training import FORWARD_KEY, fingerprint, pair_keys, release_storage, storages_alive, unwrap_model
from .common import HostDataError, logger
from .curriculum import checkpoint_path, make_curriculum, unified_setup
from .sharding import install as install_sharding_report
from .sharding import save_full_weights


class UnifiedDPOTrainer(CustomDPOTrainer):
    """The host's DPO trainer; for unified models log-probs cover image codes and text."""

    def __init__(self, model, ref_model, finetuning_args, processor, disable_dropout=True, **kwargs):
        super().__init__(model, ref_model, finetuning_args, processor, disable_dropout=disable_dropout, **kwargs)
        self._unigap = unified_setup(self, extra_models=(self.ref_model,))
        install_sharding_report(self)
        self._ref_cache: dict[bytes, tuple[float, float]] | None = None
        if self._unigap is not None and finetuning_args.ld_alpha is not None:
            raise HostDataError("ld_alpha (LD-DPO) is not supported for unified-model training by unigap")
        self._unigap_cur = make_curriculum(self, ranking=True)

    def _get_train_sampler(self, *args, **kwargs):
        if getattr(self, "_unigap_cur", None) is not None:
            return self._unigap_cur.sampler()
        return super()._get_train_sampler(*args, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        # FSDP2 with the default sharded state dict: the host saves no model; unigap saves the full weights
        if self._unigap is not None and not _internal_call:
            save_full_weights(self, output_dir or self.args.output_dir)
        return super().save_model(output_dir, _internal_call)

    def log(self, logs, *args, **kwargs):
        if getattr(self, "_unigap_cur", None) is not None and "loss" in logs:
            logs.update(self._unigap_cur.log_values())
        return super().log(logs, *args, **kwargs)

    def concatenated_forward(self, model, batch, is_ref_model=False):
        if self._unigap is None:
            return super().concatenated_forward(model, batch, is_ref_model=is_ref_model)
        average = self.loss_type in ("ipo", "orpo", "simpo")
        request = {"mode": "logps", "average": average, "step": int(self.state.global_step)}
        out = model(**batch, **{FORWARD_KEY: request})
        logps, length = out["logps"], out["length"]
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
        """Reference log-probs of every pair, computed once (the caller then releases the reference copy)."""
        from torch.utils.data import DataLoader

        datasets = [self.train_dataset]
        if isinstance(self.eval_dataset, dict):
            datasets += list(self.eval_dataset.values())
        elif self.eval_dataset is not None:
            datasets.append(self.eval_dataset)
        cache: dict[bytes, tuple[float, float]] = {}
        for dataset in datasets:
            loader = DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)
            for batch in loader:
                batch = self._prepare_inputs(batch)
                chosen, rejected = super().compute_reference_log_probs(self.model, batch)
                cache.update(zip(pair_keys(batch), zip(chosen.tolist(), rejected.tolist())))
        self._ref_cache = cache
        return len(cache)

    def _release_reference(self) -> dict:
        """Free the reference copy for good; what was freed, for ``unigap_reference_check.json``.

        ``self.ref_model = None`` alone frees nothing: accelerate keeps every prepared model in
        ``accelerator._models`` and the host's DPO workflow keeps its own variable on the reference.
        So the copy leaves the accelerator's list and every parameter and buffer gives up its storage
        in place (the module object the workflow holds stays, empty).
        """
        import gc

        ref, self.ref_model = self.ref_model, None
        models = getattr(self.accelerator, "_models", None)
        if isinstance(models, list):
            models[:] = [m for m in models if m is not ref and unwrap_model(m) is not unwrap_model(ref)]
        released, storages = release_storage(ref, keep=self.model)
        in_models = any(m is ref or unwrap_model(m) is unwrap_model(ref) for m in models or [])
        del ref
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        alive, alive_bytes = storages_alive(storages)
        if alive:
            logger().warning_rank0(f"unigap: {alive} reference tensors ({alive_bytes} bytes) are still held elsewhere; "
                                   "their memory is not freed")
        return {
            "released_bytes": released,
            "reference_storages_alive": alive,
            "reference_bytes_alive": alive_bytes,
            "reference_in_accelerator_models": in_models,
        }

    def _reference_params(self):
        if self.ref_model is not None:
            return "a frozen copy of the model", list(unwrap_model(self.ref_model).named_parameters())
        base = unwrap_model(self.model)
        params = [(n, p) for n, p in base.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
        return "the base weights under the adapter (adapter disabled)", params

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if getattr(self, "_unigap_cur", None) is not None:
            self._unigap_cur.restore(checkpoint_path(self.args, resume_from_checkpoint))
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
            logger().info_rank0(f"unigap: precomputed reference log-probs of {extra['precomputed_pairs']} pairs")
            if separate:  # check the copy did not move while it was used, then free it for good
                after, params = fingerprint(params), None
                extra.update(self._release_reference())
        result = super().train(*args, **kwargs)
        if params is not None:
            after = fingerprint(params)
        changed = [name for name in before if before[name] != after[name]]
        if self.is_world_process_zero():
            report = {"reference": kind, "tensors": len(before), "unchanged": not changed, "changed": changed}
            report.update(extra)
            path = os.path.join(self.args.output_dir, "unigap_reference_check.json")
            write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        if changed:
            raise RuntimeError(f"the DPO reference moved during training ({len(changed)} tensors, e.g. {changed[0]})")
        logger().info_rank0(f"unigap: DPO reference ({kind}) verified unchanged over {len(before)} tensors")
        return result


def on_loaded(mod) -> None:
    mod.CustomDPOTrainer = UnifiedDPOTrainer
