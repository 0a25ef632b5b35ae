"""The curriculum sampler and C-SFT replay inside the host's Trainer run (the curriculum callback).

Each unigap trainer builds one :class:`TrainingCurriculum` (:func:`make_curriculum`)
when the YAML asks for ``curriculum_difficulty`` or ``replay_epochs``.  It reads
the rows' metadata from the host's data files (``dataset_info.json``), orders
them with the host-neutral sampler of :mod:`unigap.curriculum`, and runs
:mod:`unigap.replay` with the current model at the epochs asked for; replayed
rows are tokenized by the run's own processor (``data_capture.py``).

Step count and learning-rate schedule: an epoch is always as many samples as
the original training set, so the host's planned number of steps and its
schedule are unchanged when replay adds rows; later epochs draw that many
samples from the larger set (and the curriculum places the added rows by
their prompt's difficulty).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...curriculum import (
    Alignment,
    CurriculumConfig,
    CurriculumError,
    CurriculumSampler,
    align,
    difficulty_of,
    parse_levels,
)
from ...fsutil import write_text_atomic
from ...replay import (
    REPLAY_DIR,
    ReplayError,
    ReplayState,
    build_rows,
    draw_pool,
    load_pool,
    resolve_settings,
    write_epoch_files,
    write_images,
)
from ...rowmeta import META_KEY, RowMeta, meta_from_pool
from .datasets import data_files, read_metadata, render_rows
from .sharding import fsdp_version, whole_parameters

CURRICULUM_FILE = "unigap_curriculum.json"
RECORD_ENV = "UNIGAP_RECORD_ORDER"


@dataclass
class DataContext:
    """What data_capture.py captured from the host's data pipeline."""

    dataset_names: list[str]
    dataset_dir: str
    media_dir: str
    packing: bool
    streaming: bool
    #: rows (sharegpt dicts) -> tokenized rows, by the host's converter and processor
    tokenize: Callable[[list[dict[str, Any]], bool], list[dict[str, Any]]] | None


class ExtendedDataset(torch.utils.data.Dataset):
    """The host's tokenized training set plus the rows replay added (same columns)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.extra: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.base)
        if index < n:
            return self.base[index]
        # a fresh row each time, like the base dataset: the host's collator pops keys from what it gets
        return {key: list(value) if isinstance(value, list) else value for key, value in self.extra[index - n].items()}


def curriculum_config(fa: Any, seed: int) -> CurriculumConfig:
    config = CurriculumConfig(
        difficulty=fa.curriculum_difficulty,
        pacing=fa.curriculum_pacing,
        start=float(fa.curriculum_start),
        full_at=float(fa.curriculum_full_at),
        levels=parse_levels(fa.curriculum_levels),
        stages=int(fa.curriculum_stages),
        unlabeled=fa.curriculum_unlabeled,
        seed=seed,
    )
    config.validate()
    return config


def wanted(fa: Any) -> bool:
    return getattr(fa, "curriculum_difficulty", "none") != "none" or bool(getattr(fa, "replay_epochs", None))


class TrainingCurriculum:
    def __init__(self, trainer: Any, fa: Any, data: DataContext | None, adapter: Any, ranking: bool,
                 log: Callable[[str], None]) -> None:
        self.trainer = trainer
        self.args = trainer.args
        self.adapter = adapter
        self.ranking = ranking
        self.log = log
        self.config = curriculum_config(fa, int(trainer.args.seed))
        if data is None:
            raise CurriculumError("the curriculum needs the host to tokenize the dataset in this run "
                                  "(tokenized_path is not supported with curriculum_difficulty / replay_epochs)")
        if data.packing or data.streaming:
            raise CurriculumError("curriculum_difficulty / replay_epochs need unpacked, non-streaming data "
                                  "(set packing: false and streaming: false)")
        self.data = data
        self.sampler_: CurriculumSampler | None = None
        self.base_len = len(trainer.train_dataset)
        self.base_metas: list[RowMeta | None] | None = None
        self.bare: list[str] = []
        self.added_metas: list[RowMeta] = []
        self.replay = None
        self.state = ReplayState()
        self._last_stage = -1
        if fa.replay_epochs:
            from .args import replay_yaml_values

            self.replay = resolve_settings(replay_yaml_values(fa), fa.replay_epochs, fa.replay_pool, data.dataset_dir,
                                           fa.replay_batch_size, adapter.sampling)
            if data.tokenize is None:
                raise ReplayError("replay needs the host's dataset processor, which this run did not create")
            self._check_parallelism(trainer)
            self.pool_entries = load_pool(self.replay.pool)
            self.pool_by_id = {e["prompt_id"]: e for e in self.pool_entries}
            self.state.pool = [e["prompt_id"] for e in self.pool_entries]
            trainer.train_dataset = ExtendedDataset(trainer.train_dataset)
        from transformers import TrainerCallback

        owner = self

        class _Callback(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                owner.on_epoch_begin(state)

            def on_save(self, args, state, control, **kwargs):
                owner.on_save(state)

            def on_train_end(self, args, state, control, **kwargs):
                owner.on_train_end(state)

        trainer.add_callback(_Callback())

    @staticmethod
    def _check_parallelism(trainer: Any) -> None:
        if getattr(trainer, "is_fsdp_enabled", False) and fsdp_version(trainer) != 2:
            raise ReplayError("replay_epochs does not support FSDP1 (the model generates images during training and "
                              "needs whole parameters); use FSDP2 (fsdp_config: fsdp_version: 2), DDP or ZeRO-2")

    # ------------------------------------------------------------------ metadata and the sampler
    def _gen_codes_check(self) -> Callable[[Sequence[int], str], str | None]:
        from ...codes import GenImageError, load_gen_target

        spec, family = self.adapter.spec, type(self.adapter)

        def check(ids: Sequence[int], path: str) -> str | None:
            gen = np.asarray(family.gen_codes_in(spec, ids))
            if gen.size == 0:
                return None  # an understanding row: the image path is its identity
            try:
                codes = np.asarray(load_gen_target(path, spec))
            except GenImageError as err:
                return str(err)
            if gen.size < codes.size or not np.array_equal(gen[: codes.size], codes):
                return f"the image codes in the tokens are not the codes of {path}"
            return None

        return check

    def _align_base(self) -> None:
        if self.base_metas is not None:
            return
        base = self.trainer.train_dataset
        base = base.base if isinstance(base, ExtendedDataset) else base
        if not self.config.active:
            self.base_metas = [None] * self.base_len
            return
        files, remote = data_files(self.data.dataset_names, self.data.dataset_dir)
        table, bare = read_metadata(files, self.data.media_dir)
        self.bare = sorted(set(bare) | set(remote))
        ids_key = "chosen_input_ids" if self.ranking else "input_ids"
        metas: list[RowMeta | None] = []
        check = self._gen_codes_check()
        for batch in base.select_columns(["images", ids_key]).iter(batch_size=1024):
            got: Alignment = align(batch["images"], batch[ids_key], table, gen_codes=check, start=len(metas))
            metas += got.metas
        self.base_metas = metas

    def _scores(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        metas = list(self.base_metas or []) + list(self.added_metas)
        if not self.config.active:
            n = len(metas)
            return np.zeros(n), np.zeros(n, dtype=np.int64), ["all"]
        return difficulty_of(metas, self.config, self.bare)

    def total_samples(self) -> int:
        args = self.args
        if args.max_steps and args.max_steps > 0:
            world = max(getattr(args, "world_size", 1), 1)
            return int(args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world)
        return int(math.ceil(float(args.num_train_epochs) * self.base_len))

    def sampler(self) -> CurriculumSampler:
        if self.sampler_ is not None:
            return self.sampler_
        self._align_base()
        scores, stages, names = self._scores()
        self.stage_names = names
        pacing = self.config.effective_pacing
        self.sampler_ = CurriculumSampler(
            scores, stages, pacing=pacing, start=self.config.start, full_at=self.config.full_at,
            epoch_len=self.base_len, total_samples=self.total_samples(), seed=self.config.seed,
        )
        self.sampler_.record = os.environ.get(RECORD_ENV, "") == "1"
        if self.config.active:
            counts = np.bincount(stages, minlength=len(names))
            self.log(
                f"unigap curriculum: {len(scores)} rows by {self.config.difficulty} "
                f"({', '.join(f'{n}: {c}' for n, c in zip(names, counts))}); pacing {pacing}"
                + ("" if pacing == "order" else
                   f", {self.sampler_.share_at(0.0):.0%} of the rows open at the start, all by "
                   f"{self.config.full_at:.0%} of training")
            )
        return self.sampler_

    def _refresh_sampler(self) -> None:
        if self.sampler_ is not None:
            scores, stages, _names = self._scores()
            self.sampler_.set_rows(scores, stages)

    # ------------------------------------------------------------------ log values
    def progress(self) -> float:
        state = self.trainer.state
        return state.global_step / state.max_steps if state.max_steps else 0.0

    def log_values(self) -> dict[str, float]:
        if self.sampler_ is None or not self.config.active:
            return {}
        t = self.progress()
        stage = self.sampler_.stage_at(t)
        if stage != self._last_stage:
            self._last_stage = stage
            self.log(f"unigap curriculum: step {self.trainer.state.global_step}: training on "
                     f"{self.sampler_.share_at(t):.0%} of the rows, up to {self.stage_names[stage]}")
        return {"curriculum_share": round(self.sampler_.share_at(t), 4), "curriculum_stage": float(stage)}

    # ------------------------------------------------------------------ replay
    def _add(self, added: list[dict[str, Any]]) -> None:
        dataset = self.trainer.train_dataset
        for item in added:
            dataset.extra.append(item["tokens"])
            entry = self.pool_by_id[item["prompt_id"]]
            self.added_metas.append(meta_from_pool(entry, f"replay epoch {item['epoch']}"))
        self._refresh_sampler()

    def restore(self, checkpoint: str | None) -> None:
        """Before a resumed run: the replays done and the rows added up to that checkpoint."""
        if self.replay is None or not checkpoint:
            return
        state = ReplayState.load(checkpoint)
        if state is None:
            return
        known = self.pool_by_id
        unknown = [pid for pid in state.pool if pid not in known]
        if unknown:
            raise ReplayError(f"{checkpoint}: the checkpoint's replay pool has prompts {unknown[:3]} that are not in "
                              f"{self.replay.pool}; resume with the same replay_pool")
        self.state = ReplayState(done=list(state.done), pool=list(state.pool), added=[])
        self.state.added = list(state.added)
        self._add(state.added)
        self.log(f"unigap replay: resumed with {len(state.added)} added rows from replays at epochs {state.done}")

    def on_epoch_begin(self, state: Any) -> None:
        epoch = int(math.floor(state.epoch + 1e-6))
        if self.replay is not None:
            for due in self.replay.epochs:
                if due <= epoch and due not in self.state.done:
                    self.run_replay(due)
        if self.sampler_ is not None:
            self.sampler_.set_epoch(epoch)

    def run_replay(self, epoch: int) -> dict[str, Any]:
        import torch.distributed as dist

        trainer, settings = self.trainer, self.replay
        assert settings is not None
        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
        pool_ids = set(self.state.pool)
        positions = [i for i, e in enumerate(self.pool_entries) if e["prompt_id"] in pool_ids]
        folder = Path(self.args.output_dir) / REPLAY_DIR / f"epoch_{epoch}"
        self.log(f"unigap replay (epoch {epoch}): the current model retries {len(positions)} pool prompts, "
                 f"{settings.num_candidates} candidates each, threshold {settings.judge_threshold}")
        model = trainer.model
        was_training = model.training
        # FSDP2 / ZeRO-3: whole parameters for generation and decoding, gathered once on every rank (the ranks draw
        # different prompts, and only the first of a node decodes)
        with whole_parameters(getattr(trainer, "model_wrapped", None) or model):
            model.eval()
            try:
                mine = draw_pool(self.adapter, self.pool_entries, positions[rank::world], settings, epoch)
            finally:
                model.train(was_training)
            if world > 1:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, mine)
                drawn = [item for part in gathered for item in part]
            else:
                drawn = mine
            drawn.sort(key=lambda d: d.position)
            if int(getattr(self.args, "local_process_index", 0)) == 0:
                write_images(folder, drawn, self.adapter.decode_codes)
        if distributed:
            dist.barrier()
        samples, recovered, counts = build_rows(folder, self.pool_entries, drawn, settings, self.ranking)
        rows = render_rows(samples)
        tokens = self.data.tokenize(rows, self.ranking) if rows else []
        if len(tokens) != len(rows):
            raise ReplayError(f"the host's processor kept {len(tokens)} of {len(rows)} replayed rows "
                              f"(see {folder}/data.jsonl); check cutoff_len")
        added = [{"epoch": epoch, "prompt_id": r[META_KEY]["prompt_id"], "row": r, "tokens": t}
                 for r, t in zip(rows, tokens)]
        gone = set(recovered)
        remaining = [pid for pid in self.state.pool if pid not in gone]
        self.state.pool = remaining
        self.state.done = sorted(self.state.done + [epoch])
        self.state.added += added
        self._add(added)
        summary = None
        if trainer.is_world_process_zero():
            write_replay_dataset(folder, epoch, rows, self.ranking)
            summary = write_epoch_files(folder, epoch, self.pool_entries, drawn, remaining, counts, settings)
        self.log(f"unigap replay (epoch {epoch}): tried {len(positions)} prompts, recovered {len(recovered)}, "
                 f"added {len(rows)} rows, {len(remaining)} left in the pool; images and rows in {folder}")
        trainer.log({
            "replay_prompts_tried": float(len(positions)),
            "replay_prompts_recovered": float(len(recovered)),
            "replay_rows_added": float(len(rows)),
            "replay_pool_left": float(len(remaining)),
        })
        return summary or {}

    # ------------------------------------------------------------------ checkpoints and the end
    def on_save(self, state: Any) -> None:
        if self.replay is None or not self.trainer.is_world_process_zero():
            return
        folder = Path(self.args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.state.save(folder)

    def on_train_end(self, state: Any) -> None:
        out = Path(self.args.output_dir)
        sampler = self.sampler_
        if sampler is not None and sampler.record:
            base = self.trainer.train_dataset
            base = base.base if isinstance(base, ExtendedDataset) else base
            keys = [images[0] if images else None for images in base["images"]]
            keys += [item["tokens"]["images"][0] for item in self.state.added]
            rank = int(getattr(self.args, "process_index", 0))
            record = {"rows": keys, "scores": sampler.scores.tolist(), "stages": sampler.stages.tolist(),
                      "epochs": [[e, idx.tolist()] for e, idx in sampler.history]}
            write_text_atomic(out / f"unigap_order.rank{rank}.json", json.dumps(record) + "\n")
        if not self.trainer.is_world_process_zero():
            return
        summary: dict[str, Any] = {"curriculum": {
            "difficulty": self.config.difficulty, "pacing": self.config.effective_pacing,
            "start": self.config.start, "full_at": self.config.full_at, "seed": self.config.seed,
        }}
        if sampler is not None and self.config.active:
            summary["curriculum"]["stages"] = dict(zip(self.stage_names, np.bincount(
                sampler.stages, minlength=len(self.stage_names)).tolist()))
            summary["curriculum"]["share_at"] = {f"{t:.2f}": round(sampler.share_at(t), 4)
                                                 for t in (0.0, 0.25, 0.5, 0.75, 1.0)}
        if self.replay is not None:
            summary["replay"] = {"settings": self.replay.public(), "done": self.state.done,
                                 "rows_added": len(self.state.added), "pool_left": len(self.state.pool)}
        write_text_atomic(out / CURRICULUM_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- set-up from the trainers
def unified_setup(trainer, extra_models=()) -> Any:
    """The family's adapter for the trainer's model (None for other models), its loss forward installed."""
    from ...training import adapter_for_model, install_forward

    adapter = adapter_for_model(trainer.model, trainer.processing_class)
    if adapter is None:
        return None
    install_forward(trainer.model, adapter)
    for other in extra_models:
        if other is not None:
            install_forward(other, adapter_for_model(other, trainer.processing_class))
    return adapter


def make_curriculum(trainer, ranking: bool) -> TrainingCurriculum | None:
    """The curriculum sampler / replay for this trainer, or None when the YAML asks for neither."""
    from .common import TRAIN_DATA, logger
    from .data_capture import tokenize_rows

    fa = trainer.finetuning_args
    if not wanted(fa):
        return None
    if trainer._unigap is None:
        raise CurriculumError("curriculum_difficulty / replay_epochs are unigap options for unified models "
                              "(a unigap template: the model family's own)")
    data = None
    if TRAIN_DATA:
        da = TRAIN_DATA["data_args"]
        data = DataContext(
            dataset_names=list(da.dataset or []),
            dataset_dir=da.dataset_dir,
            media_dir=da.media_dir or da.dataset_dir,
            packing=bool(da.packing),
            streaming=bool(da.streaming),
            tokenize=tokenize_rows,
        )
    return TrainingCurriculum(trainer, fa, data, trainer._unigap, ranking, logger().info_rank0)


def checkpoint_path(args, resume_from_checkpoint) -> str | None:
    if isinstance(resume_from_checkpoint, bool):
        if not resume_from_checkpoint:
            return None
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(args.output_dir)
    return resume_from_checkpoint


def write_replay_dataset(folder: Path, epoch: int, rows: Sequence[dict[str, Any]], ranking: bool) -> None:
    """The rows one replay added, as a dataset folder (``data.jsonl`` + ``dataset_info.json``)."""
    from .datasets import write_dataset_folder

    write_dataset_folder(folder, f"replay_epoch_{epoch}", "data.jsonl", rows, ranking=ranking)
