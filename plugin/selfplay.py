"""Self-play and self-judge (``unigap selfplay CONFIG.yaml [key=value ...]``).

The generation branch draws ``num_candidates`` images per prompt; the model's
own understanding branch then looks at the decoded pixels and answers the
judge question in one forward pass (P(yes) against P(no)).

Exactly-once and deterministic by construction:

* candidate seeds come from (run seed, prompt id, candidate index), never from
  the batch or the process that draws them;
* the unit of work is one prompt: its N images are decoded and judged in
  chunks of at most ``batch_size`` images (memory follows ``batch_size``; the
  family's ``decode_codes`` and ``judge`` are batch-invariant bit for bit, so
  the bytes do not depend on the chunking or the number of processes), written
  atomically, and the prompt's records are published last
  as ``parts/<index>.jsonl`` (temp + rename).  A prompt is done iff its part
  exists, so a killed run resumes where it was without loss or duplicates;
* when every prompt is done one process merges the parts in prompt order into
  ``records.jsonl`` and writes ``summary.json`` (the completion mark).

Under ``torchrun`` / ``accelerate launch`` the pending prompts are split across
ranks; a gloo process group is used only for barriers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import __version__
from .codes import save_gen_image
from .errors import UnigapError
from .prompts import Prompt, load_prompt_dataset, load_prompt_file
from .report import summarize
from .seeds import candidate_seed
from .suggest import did_you_mean
from .runs import (
    IMAGES_DIR,
    PARTS_DIR,
    RECORDS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    RunError,
    finished_parts,
    image_name,
    make_record,
    merge_parts,
    write_meta,
    write_part,
    write_summary,
)

DEFAULT_QUESTION = "Does this image show {prompt}?"
#: keys that change no result (left out of the config fingerprint; a resume may change them)
NON_RESULT_KEYS = ("output_dir", "batch_size", "device", "progress", "model_name_or_path", "adapter_name_or_path")


class SelfPlayError(UnigapError):
    """A self-play configuration or run directory that cannot be used."""


@dataclass
class SelfPlayConfig:
    """Keys of a self-play YAML (host names where the host has them)."""

    model_name_or_path: str = ""
    adapter_name_or_path: str | None = None
    output_dir: str = ""
    #: JSONL with ``prompt`` (+ optional ``id``, ``difficulty``, ``category``), or a .txt file
    prompts: str | None = None
    #: or a ``datasets`` dataset (a save_to_disk dir, local data files or a hub name)
    prompts_dataset: str | None = None
    prompts_split: str = "train"
    prompt_column: str = "prompt"
    id_column: str = "id"
    difficulty_column: str = "difficulty"
    category_column: str = "category"
    max_prompts: int | None = None
    num_candidates: int = 4
    #: the model family's generation parameters (keys of its sampling class, e.g. cfg_scale);
    #: what the YAML gives, until :meth:`resolve_sampling` checks them against the family and adds its defaults
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 42
    batch_size: int = 16
    #: "auto" = cuda when present (one GPU per rank), else cpu
    device: str = "auto"
    #: "auto" = bfloat16 on cuda; on cpu the checkpoint's own dtype when 16-bit, else float32
    #: (:func:`unigap.loading.resolve_dtype`)
    dtype: str = "auto"
    judge_question: str = DEFAULT_QUESTION
    judge_threshold: float = 0.5
    progress: bool = True

    def public(self) -> dict[str, Any]:
        """The configuration as a flat mapping (generation parameters beside the other keys)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "sampling":
                out.update(self.sampling)
            elif f.init:
                out[f.name] = getattr(self, f.name)
        return out

    def resolve_sampling(self, family: Any) -> Any:
        """Check the generation parameters against the model's family; store them with its defaults."""
        try:
            params = family.sampling.from_values(dict(self.sampling))
        except UnigapError as err:
            raise SelfPlayError(str(err)) from None
        allowed = family.sampling.keys(selfplay_only=True)
        extra = [k for k in self.sampling if k not in allowed]
        if extra:
            raise SelfPlayError(f"{', '.join(extra)} cannot be used in self-play with a {family.family} model")
        self.sampling = params.as_dict(selfplay_only=True)
        return params

    def validate(self) -> None:
        if not self.model_name_or_path:
            raise SelfPlayError("model_name_or_path is required")
        if not self.output_dir:
            raise SelfPlayError("output_dir is required")
        if bool(self.prompts) == bool(self.prompts_dataset):
            raise SelfPlayError("give exactly one of 'prompts' (a JSONL / .txt file) or 'prompts_dataset'")
        if not isinstance(self.num_candidates, int) or self.num_candidates < 1:
            raise SelfPlayError(f"num_candidates must be an integer >= 1, got {self.num_candidates!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SelfPlayError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.max_prompts is not None and (not isinstance(self.max_prompts, int) or self.max_prompts < 1):
            raise SelfPlayError(f"max_prompts must be an integer >= 1, got {self.max_prompts!r}")
        if not 0.0 <= float(self.judge_threshold) <= 1.0:
            raise SelfPlayError(f"judge_threshold must be in [0, 1], got {self.judge_threshold}")
        if "{prompt}" not in self.judge_question:
            raise SelfPlayError(f"judge_question must contain '{{prompt}}', got {self.judge_question!r}")
        try:
            self.judge_question.format(prompt="x")
        except (KeyError, IndexError, ValueError) as err:
            raise SelfPlayError(f"judge_question {self.judge_question!r} is not a valid template ({err!r})") from None
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise SelfPlayError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


def load_config(path: str | None, overrides: Sequence[str] = ()) -> SelfPlayConfig:
    """A YAML file plus ``key=value`` overrides (values parsed as YAML, like llamafactory-cli)."""
    import yaml

    values: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise SelfPlayError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise SelfPlayError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise SelfPlayError(f"{path} must hold a mapping of keys to values")
        values.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SelfPlayError(f"override {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(value) if value.strip() else None
    from .models import family_for_checkpoint, sampling_keys

    generation = sampling_keys(selfplay_only=True)
    known = [f.name for f in dataclasses.fields(SelfPlayConfig) if f.init and f.name != "sampling"]
    for key in values:
        if key not in known and key not in generation:
            raise SelfPlayError(f"unknown self-play key '{key}'{did_you_mean(key, known + list(generation))}")
    sampling = {k: values.pop(k) for k in list(values) if k in generation}
    config = SelfPlayConfig(**values, sampling=sampling)
    value = config.judge_threshold
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SelfPlayError(f"judge_threshold must be a number, got {value!r}")
    config.judge_threshold = float(value)
    config.validate()
    if config.model_name_or_path and (Path(config.model_name_or_path) / "config.json").is_file():
        # a local checkpoint: its family checks the generation parameters before anything is loaded
        config.resolve_sampling(family_for_checkpoint(config.model_name_or_path))
    return config


def model_fingerprint(model: Any) -> str:
    """A checksum of the weights actually used (LoRA merged) and the architecture config."""
    import torch

    config = model.config.to_dict()
    config.pop("_name_or_path", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    from .training import checksum  # streamed: one float64 chunk on the device, not a float64 copy per tensor

    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            total, squares = checksum(tensor)
            digest.update(f"{name}|{tuple(tensor.shape)}|{total:.10e}|{squares:.10e}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------- distribution
class _Dist:
    """Rank / world size from torchrun or accelerate, and a gloo group for barriers."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._own_group = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
                self._own_group = True

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True iff every rank passes ``ok`` (so all ranks fail together, none waits forever)."""
        if self.world == 1:
            return ok
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1])
        dist.all_reduce(flag)
        return int(flag) == 0

    def close(self) -> None:
        if self._own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------------------------- the run
def _prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SelfPlayError(f"output_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_FILE).is_file():
        raise SelfPlayError(
            f"output_dir {out} is not empty and is not a unigap self-play run; refusing to write into it "
            "(choose another output_dir)"
        )
    try:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (out / PARTS_DIR).mkdir(exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SelfPlayError(f"output_dir {out} is not writable ({err.strerror or err})") from None


def _sweep_temp_files(out: Path) -> None:
    """Remove the temporary files a killed writer may have left (they are never read)."""
    for folder in (out, out / IMAGES_DIR, out / PARTS_DIR):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def _result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's configuration that decides its results (dtype resolved)."""
    return {k: v for k, v in config.items() if k not in NON_RESULT_KEYS}


def _describe_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    before, after = _result_config(old.get("config", {})), _result_config(new["config"])
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    if old.get("model_fingerprint") != new.get("model_fingerprint"):
        diffs.append(
            f"model weights: {old.get('model_fingerprint')} -> {new.get('model_fingerprint')} "
            "(a different model or adapter)"
        )
    if old.get("prompts_fingerprint") != new.get("prompts_fingerprint"):
        diffs.append("the prompt set changed")
    return "; ".join(diffs) or "unknown difference"


def _load_prompts(config: SelfPlayConfig) -> list[Prompt]:
    if config.prompts:
        prompts = load_prompt_file(config.prompts)
    else:
        prompts = load_prompt_dataset(
            config.prompts_dataset or "",
            config.prompts_split,
            config.prompt_column,
            config.id_column,
            config.difficulty_column,
            config.category_column,
        )
    return prompts[: config.max_prompts] if config.max_prompts else prompts


def _resolve_device(config: SelfPlayConfig, dist: _Dist) -> tuple[str, str]:
    import torch

    device = config.device
    if device == "auto":
        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    from .loading import resolve_dtype

    return device, resolve_dtype(config.dtype, device, config.model_name_or_path)


def run_selfplay(config: SelfPlayConfig) -> dict[str, Any]:
    """Run (or resume) self-play; returns the summary (on every rank)."""
    from .loading import load_unified

    prompts = _load_prompts(config)  # bad prompts fail before anything is written or loaded
    out = Path(config.output_dir)
    dist = _Dist()
    try:
        # the model (and adapter) must load before anything is written
        device, dtype = _resolve_device(config, dist)
        adapter = load_unified(config.model_name_or_path, config.adapter_name_or_path, device=device, dtype=dtype)
        params = config.resolve_sampling(type(adapter))
        ok, error = True, None
        try:
            if dist.rank == 0:
                _prepare_output(out)
        except SelfPlayError as err:
            ok, error = False, err
        if not dist.all_ok(ok):
            raise error or SelfPlayError("another rank could not prepare the output directory")
        spec = adapter.spec
        prompts_fp = hashlib.sha256(
            json.dumps([p.to_dict() for p in prompts], ensure_ascii=False).encode()
        ).hexdigest()[:16]
        meta = {
            "unigap_version": __version__,
            "config": {**config.public(), "dtype": dtype},
            "model_fingerprint": model_fingerprint(adapter.model),
            "prompts_fingerprint": prompts_fp,
            "num_prompts": len(prompts),
            "spec": {
                "model_type": spec.model_type,
                "num_image_tokens": spec.num_image_tokens,
                "codebook_size": spec.codebook_size,
                "image_size": spec.image_size,
            },
        }
        fp_source = {
            "result_config": _result_config(meta["config"]),
            **{k: meta[k] for k in ("model_fingerprint", "prompts_fingerprint")},
        }
        meta["config_fingerprint"] = hashlib.sha256(json.dumps(fp_source, sort_keys=True).encode()).hexdigest()[:16]

        ok, error = True, None
        run_file = out / RUN_FILE
        if run_file.is_file():
            old = json.loads(run_file.read_text(encoding="utf-8"))
            if old.get("config_fingerprint") != meta["config_fingerprint"]:
                ok, error = False, SelfPlayError(
                    f"{out} holds a self-play run made with a different configuration; refusing to resume into it "
                    f"({_describe_mismatch(old, meta)}). Use another output_dir."
                )
        elif dist.rank == 0:
            # everything that affects results is fixed here, before the first image
            write_meta(out, meta)
        if not dist.all_ok(ok):
            raise error or SelfPlayError("another rank refused to resume (different configuration)")

        if (out / SUMMARY_FILE).is_file() and (out / RECORDS_FILE).is_file():
            shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
            print(f"unigap selfplay: {out} is already complete", file=sys.stderr)
            return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))

        if dist.rank == 0:
            _sweep_temp_files(out)
        dist.barrier()
        done = {int(p.stem) for p in finished_parts(out)}
        dist.barrier()  # every rank has listed the finished prompts before anyone writes
        pending = [i for i in range(len(prompts)) if i not in done]
        mine = pending[dist.rank :: dist.world]
        _draw_and_judge(adapter, config, params, prompts, mine, out, meta, dist, resumed=len(done))
        dist.barrier()

        if dist.rank == 0:
            summary = _finish(out, prompts, config)
        dist.barrier()
        return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8")) if dist.rank else summary
    finally:
        dist.close()


def draw(
    adapter: Any,
    prompts: Sequence[tuple[str, str]],
    *,
    num_candidates: int,
    seed: int,
    params: Any,
    batch_size: int,
    on_batch: Any = None,
) -> Iterator[tuple[int, Any]]:
    """Draw ``num_candidates`` images for each ``(prompt id, text)``, in batches of ``batch_size`` rows.

    Yields ``(position, codes)`` with a prompt's (N, tokens) codes as soon as all
    N are drawn.  Candidate ``k`` of prompt ``id`` is drawn with
    :func:`candidate_seed` ``(seed, id, k)``, so the codes do not depend on the
    batching.  ``params`` are the family's generation parameters.  ``on_batch(rows)`` is called after each batch (progress bars).
    """
    import torch

    jobs = [(i, k) for i in range(len(prompts)) for k in range(num_candidates)]
    drawn: dict[int, list[Any]] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        codes = adapter.generate(
            [prompts[i][1] for i, _ in chunk],
            seeds=[candidate_seed(seed, prompts[i][0], k) for i, k in chunk],
            params=params,
        ).cpu()
        for (i, _k), row in zip(chunk, codes):
            drawn.setdefault(i, []).append(row)
            if len(drawn[i]) == num_candidates:
                yield i, torch.stack(drawn.pop(i))
        if on_batch is not None:
            on_batch(len(chunk))


def judge_candidates(adapter: Any, codes: Any, question: str, batch_size: int | None = None,
                     on_chunk: Any = None) -> tuple[list[Any], list[float]]:
    """Decode one prompt's candidates and judge them, at most ``batch_size`` images at a time (None: all).

    The results do not depend on ``batch_size``: the family's ``decode_codes`` and ``judge`` are
    batch-invariant bit for bit.  ``on_chunk(images, p_yes)`` is called after each chunk (a caller that
    writes each chunk at once holds no more than ``batch_size`` decoded images); the images are returned
    only when no ``on_chunk`` is given.
    """
    step = max(1, batch_size or len(codes) or 1)
    images: list[Any] = []
    p_yes: list[float] = []
    for start in range(0, len(codes), step):
        chunk = adapter.decode_codes(codes[start : start + step])
        scores = adapter.judge(chunk, [question] * len(chunk)).float().cpu().tolist()
        p_yes += scores
        if on_chunk is None:
            images += chunk
        else:
            on_chunk(chunk, scores)
    return images, p_yes


def _draw_and_judge(adapter, config, params, prompts, mine, out, meta, dist, resumed: int) -> None:
    n = config.num_candidates
    bar = None
    if config.progress and dist.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(mine) * n,
            unit="img",
            desc="self-play" + (f" rank 0/{dist.world}" if dist.world > 1 else ""),
            dynamic_ncols=True,
        )
        if resumed:
            bar.write(f"unigap selfplay: resuming, {resumed} of {len(prompts)} prompts already done")
    judged = accepted = 0
    todo = [(prompts[i].id, prompts[i].text) for i in mine]
    for pos, codes in draw(
        adapter, todo, num_candidates=n, seed=config.seed, params=params, batch_size=config.batch_size,
        on_batch=None if bar is None else bar.update,
    ):
        i = mine[pos]
        accepted += _finish_prompt(adapter, config, prompts[i], i, codes, out, meta)
        judged += n
        if bar is not None:
            bar.set_postfix(accept=f"{accepted / judged:.1%}", refresh=False)
    if bar is not None:
        bar.close()


def _finish_prompt(adapter, config, prompt: Prompt, index: int, codes, out: Path, meta) -> int:
    """Decode and judge one prompt's candidates in chunks of ``batch_size``, write them, then publish its records."""
    question = config.judge_question.format(prompt=prompt.text)
    rows = codes.tolist()
    written = 0

    def save(chunk: list[Any], _scores: list[float]) -> None:
        nonlocal written
        for image in chunk:  # written at once: no more than batch_size decoded images are held
            save_gen_image(out / image_name(index, written), image, rows[written])
            written += 1

    _images, p_yes = judge_candidates(adapter, codes, question, config.batch_size, on_chunk=save)
    records, accepted = [], 0
    for k, p in enumerate(p_yes):
        record = make_record(
            prompt_index=index,
            prompt_id=prompt.id,
            prompt=prompt.text,
            difficulty=prompt.difficulty,
            category=prompt.category,
            candidate=k,
            seed=candidate_seed(config.seed, prompt.id, k),
            p_yes=p,
            threshold=config.judge_threshold,
            model_fingerprint=meta["model_fingerprint"],
            config_fingerprint=meta["config_fingerprint"],
        )
        accepted += record["accepted"]
        records.append(record)
    write_part(out, index, records)
    return accepted


def _finish(out: Path, prompts: list[Prompt], config: SelfPlayConfig) -> dict[str, Any]:
    """Merge the parts in prompt order, write the summary (the completion mark), drop the parts."""
    try:
        records = merge_parts(out, len(prompts))
    except RunError as err:
        raise SelfPlayError(str(err)) from None
    summary = summarize(records, config.num_candidates)
    write_summary(out, summary)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    return summary
