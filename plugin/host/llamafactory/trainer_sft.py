"""``llamafactory.train.sft.workflow``: the SFT trainer whose loss, for unified models, is the family's.

For a model no family handles, every method falls through to the host's own.
The per-head losses (``gen_loss``, ``text_loss``) are logged and plotted.
"""

from __future__ import annotations

from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

from ...training import FORWARD_KEY, RunningStats
from .common import HostDataError
from .curriculum import checkpoint_path, make_curriculum, unified_setup
from .sharding import install as install_sharding_report
from .sharding import save_full_weights


class UnifiedSeq2SeqTrainer(CustomSeq2SeqTrainer):
    """The host's SFT trainer; for unified models the loss also covers image codes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unigap = unified_setup(self)
        install_sharding_report(self)
        if self._unigap is None:
            return
        for flag in ("use_dft_loss", "use_eaft_loss", "use_asft_loss"):
            if getattr(self.finetuning_args, flag, False):
                raise HostDataError(f"{flag} is not supported for unified-model training by unigap")
        self._unigap_stats = RunningStats()
        self._unigap_cur = make_curriculum(self, ranking=False)

    def _get_train_sampler(self, *args, **kwargs):
        if getattr(self, "_unigap_cur", None) is not None:
            return self._unigap_cur.sampler()
        return super()._get_train_sampler(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if getattr(self, "_unigap_cur", None) is not None:
            self._unigap_cur.restore(checkpoint_path(self.args, resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        # FSDP2 with the default sharded state dict: the host saves no model; unigap saves the full weights
        if self._unigap is not None and not _internal_call:
            save_full_weights(self, output_dir or self.args.output_dir)
        return super().save_model(output_dir, _internal_call)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        if self._unigap is None:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch, **kwargs
            )
        fa = self.finetuning_args
        request = {
            "mode": "sft",
            "prompt_dropout": fa.gen_prompt_dropout if model.training else 0.0,
            "gen_weight": fa.gen_loss_weight,
            "step": int(self.state.global_step),
        }
        out = model(**inputs, **{FORWARD_KEY: request})
        if model.training:
            self._unigap_stats.add(out)
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs, *args, **kwargs):
        if self._unigap is not None and "loss" in logs:  # every rank logs at the same steps
            totals = self.accelerator.reduce(self._unigap_stats.take().to(self.args.device), reduction="sum")
            logs.update(RunningStats.summarize(totals.cpu()))
            if self._unigap_cur is not None:
                logs.update(self._unigap_cur.log_values())
        return super().log(logs, *args, **kwargs)


def on_loaded(mod) -> None:
    mod.CustomSeq2SeqTrainer = UnifiedSeq2SeqTrainer
    plot_loss = mod.plot_loss

    def _plot_loss(save_dictionary, keys=("loss",)):
        # also plot the per-head losses logged by unigap's trainer (skipped when absent)
        return plot_loss(save_dictionary, keys=[*keys, "gen_loss", "text_loss"])

    mod.plot_loss = _plot_loss
