"""``unigap evidence``: the paper's claims, measured on ShapesWorld against the exact oracle.

For every seed (``OUT/seed_S/``, each stage skipped when its output exists, so an
interrupted run resumes):

1. self-play of the embedded model on the TRAIN prompts (``unigap selfplay``'s own
   code): N candidates per prompt, judged by the model itself;
2. ``unigap build sft`` (every accepted image, generation rows only) and
   ``unigap build dpo`` (most-yes vs most-no);
3. three trainings through the host's unmodified ``llamafactory-cli train``
   (full fine-tuning): SFT, C-SFT (easy-to-hard sampler + replay of the discard
   pool with the model being trained) and DPO;
4. the base model and the three trained ones measured on the TEST prompts (never
   trained on, never self-played): images drawn with fresh seeds and checked by
   the oracle (generation accuracy) and by the model's own judge
   (non-unification); the judge asked about rendered correct images and near
   misses (understanding accuracy, next to its share of Yes answers);
5. gradient alignment on the base model: cosine of the generation-loss gradient
   (prompt -> image codes) and the understanding-loss gradient (image + "does it
   show the prompt?" -> Yes) over the shared LLM's weights, for matched
   (prompt, image) samples and for unmatched ones (the image and question of
   another prompt).

Confidence intervals are 95% nested bootstraps: seeds resampled, then test
prompts, then the samples within each drawn (seed, prompt) cell; a difference
between two models is paired down to the sample (the same seeds, prompts and
sampling seeds are drawn for both).  Each claim gets a
verdict from its interval, written to ``OUT/evidence.md`` / ``evidence.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..errors import UnigapError
from ..fsutil import write_text_atomic
from ..host.llamafactory.recipes import Recipe, run_train, write_train_yaml
from ..host.llamafactory.recipes import train_config as recipe_config
from ..runs import iter_records, resolve_inside
from .data import read_prompt_file
from .world import LEVELS, Query, oracle

MODELS = ("base", "sft", "csft", "dpo")
NAMES = {"base": "base model", "sft": "SFT", "csft": "C-SFT", "dpo": "DPO"}
REPLICATES = stats.REPLICATES


class EvidenceError(UnigapError):
    """Evidence cannot run as asked (not a ShapesWorld model, an output directory of other settings, ...)."""


@dataclass
class EvidenceConfig:
    model: str = "models/shapes-janus"
    out: str = "outputs/evidence"
    seeds: tuple[int, ...] = (0, 1, 2)
    num_candidates: int = 4  # small N leaves a discard pool for C-SFT to replay (the paper also ran N = 2)
    #: the family's sampling keys, over its unguided defaults (Janus cfg_scale 1, Show-o guidance_scale 0):
    #: self-play, replay and measurement sample from the model itself
    generation: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    eval_samples: int = 16  # images per test prompt per model and seed
    und_items: int = 16  # understanding questions per test prompt (half true, half near misses)
    sft_epochs: int = 6
    sft_lr: float = 1e-4
    replay_epoch: int = 3  # C-SFT replays the discard pool after this epoch (paper: 10 of 20)
    dpo_epochs: int = 10
    dpo_lr: float = 5e-5
    grad_pairs: int = 40  # matched samples per seed (as many unmatched)
    models: tuple[str, ...] = MODELS


# ---------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[unigap evidence] {msg}", flush=True)


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def oracle_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a self-play run (``unigap.runs.iter_records``), each with the oracle's verdict on
    its image (``correct``)."""
    from PIL import Image

    out = []
    for r in iter_records(run_dir):
        with Image.open(resolve_inside(run_dir, r["image"], "image")) as img:
            r["correct"] = oracle(img, r["prompt"])
        out.append(r)
    return out


def sampling(cfg: EvidenceConfig) -> dict[str, Any]:
    """The generation keys of every draw: the model family's unguided sampling, then ``cfg.generation``."""
    from ..models import family_for_checkpoint

    family = family_for_checkpoint(cfg.model)
    params = family.sampling.from_values({**family.sampling.unguided(), **cfg.generation}, prefix="generation.")
    return params.as_dict(selfplay_only=True)


# ---------------------------------------------------------------------------------- stages
def _selfplay(cfg: EvidenceConfig, seed: int, out: Path, draw: dict[str, Any]) -> Path:
    from ..selfplay import SelfPlayConfig, run_selfplay

    run = out / "selfplay"
    if not (run / "summary.json").exists():
        run_selfplay(SelfPlayConfig(
            model_name_or_path=cfg.model, prompts=str(Path(cfg.model) / "prompts" / "train.jsonl"),
            num_candidates=cfg.num_candidates, sampling=draw, seed=1000 + seed, batch_size=64,
            judge_threshold=cfg.threshold, output_dir=str(run), progress=False,
        ))
    return run


def _build(run: Path, out: Path) -> Path:
    """``unigap build sft`` (every accepted image) and ``unigap build dpo`` (most-yes vs most-no), as
    LLaMA-Factory datasets ``gap_sft`` / ``gap_dpo`` in ``out/data``."""
    from ..data_builders.build import DpoOptions, SftOptions, build_dpo, build_sft
    from ..host.llamafactory.datasets import FORMAT

    data = out / "data"
    for name, build, options in (("gap_sft", build_sft, SftOptions()), ("gap_dpo", build_dpo, DpoOptions())):
        if not (data / name / "manifest.json").exists():
            result = build([str(run)], str(data), name, options, overwrite=True, fmt=FORMAT)
            _log(f"built {name}: " + ", ".join(f"{k} {v}" for k, v in result["totals"].items()))
    return data


def recipe(cfg: EvidenceConfig, kind: str, data: Path, out_dir: Path, seed: int) -> Recipe:
    """The training of ``kind`` (sft, csft, dpo; full fine-tuning) on the seed's self-play data."""
    if kind == "dpo":
        return Recipe("dpo", cfg.model, str(data), str(out_dir), learning_rate=cfg.dpo_lr, epochs=cfg.dpo_epochs,
                      seed=seed, dataset="gap_dpo")
    return Recipe(kind, cfg.model, str(data), str(out_dir), learning_rate=cfg.sft_lr, epochs=cfg.sft_epochs, seed=seed,
                  dataset="gap_sft", replay_epochs=cfg.replay_epoch if kind == "csft" else None,
                  replay_pool="gap_sft", replay_seed=2000 + seed)


def train_config(cfg: EvidenceConfig, kind: str, data: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """The ``llamafactory-cli train`` keys of :func:`recipe`."""
    return recipe_config(recipe(cfg, kind, data, out_dir, seed))


def _train(cfg: EvidenceConfig, kind: str, data: Path, out: Path, seed: int) -> Path:
    model_dir = out / "models" / kind
    if (model_dir / "model.safetensors").exists() and (model_dir / "trainer_state.json").exists():
        return model_dir
    yaml_path = write_train_yaml(out / f"{kind}.yaml", recipe(cfg, kind, data, model_dir, seed))
    run_train(yaml_path, log_path=out / f"{kind}.log")
    return model_dir


def _evaluate(cfg: EvidenceConfig, model_dir: str, queries: Sequence[Query], seed: int, path: Path,
              draw: dict[str, Any], seen: Sequence[Query] = ()) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    from ..loading import load_unified
    from .evaluate import generation_records, understanding_records

    adapter = load_unified(str(model_dir), device="cpu")
    result = {
        "generation": generation_records(adapter, queries, cfg.eval_samples, seed=5000 + seed,
                                         generation=draw),
        "understanding": understanding_records(adapter, queries, cfg.und_items, seed=6000 + seed),
    }
    if seen:  # the train prompts the self-play data came from (fewer samples: a secondary figure)
        result["seen_generation"] = generation_records(adapter, seen, max(1, cfg.eval_samples // 2),
                                                       seed=7000 + seed, generation=draw)
    _write_json(path, result)
    return result


# ---------------------------------------------------------------------------------- gradient alignment
def _flat_grad(loss: Any, params: Sequence[Any]) -> Any:
    import torch

    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_vectors(adapter: Any, queries: Sequence[Query], rng: random.Random) -> tuple[list[Any], list[Any]]:
    """Per query: the gradient (over the weights both branches share) of the generation loss of a correct
    rendered image of it, and of the understanding loss of "does this image show it?" -> Yes."""
    from PIL import Image

    from ..selfplay import DEFAULT_QUESTION
    from .world import render

    params = adapter.backbone_parameters()
    for p in params:
        p.requires_grad_(True)
    gen, und = [], []
    for q in queries:
        pixels, _ = render(q, rng)
        image = Image.fromarray(pixels)
        codes = adapter.encode_images([image])[0].tolist()
        gen.append(_flat_grad(adapter.generation_loss(q.text, codes), params))
        und.append(_flat_grad(adapter.understanding_loss(image, DEFAULT_QUESTION.format(prompt=q.text), "Yes"), params))
    return gen, und


def gradient_alignment(model_dir: str, queries: Sequence[Query], pairs: int, seed: int) -> dict[str, list[float]]:
    """Cosines gen-vs-und gradient for matched samples and for unmatched ones (another prompt's image
    and question), ``pairs`` of each; the unmatched partner is always a different prompt."""
    import torch

    from ..loading import load_unified

    adapter = load_unified(model_dir, device="cpu")
    adapter.model.eval()
    rng = random.Random(f"evidence-grad-{seed}")
    chosen = [queries[rng.randrange(len(queries))] for _ in range(pairs)]
    gen, und = gradient_vectors(adapter, chosen, rng)
    partner = []
    for i, q in enumerate(chosen):
        others = [j for j, o in enumerate(chosen) if o.text != q.text]
        partner.append(others[rng.randrange(len(others))])
    cos = torch.nn.functional.cosine_similarity
    matched = [float(cos(g, u, dim=0)) for g, u in zip(gen, und)]
    unmatched = [float(cos(gen[i], und[j], dim=0)) for i, j in enumerate(partner)]
    return {"matched": matched, "unmatched": unmatched, "prompts": [q.text for q in chosen]}


# ---------------------------------------------------------------------------------- statistics
@dataclass
class Outcomes:
    """Per-sample outcomes in a (seeds, units, samples) table: ``den`` marks the samples a rate
    counts, ``num`` those of them it counts as hits; ``count`` is the samples each cell holds
    (sample k of a cell is the k-th record of that seed and unit, so two models sampled with the
    same seeds line up sample by sample)."""

    num: np.ndarray
    den: np.ndarray
    count: np.ndarray

    def value(self) -> float:
        total = self.den.sum()
        return float(self.num.sum() / total) if total else math.nan


def outcomes(records_by_seed: Sequence[Sequence[dict[str, Any]]], units: Sequence[str],
             num: Callable[[dict[str, Any]], Any], den: Callable[[dict[str, Any]], bool] = lambda r: True,
             key: str = "prompt") -> Outcomes:
    where = {u: i for i, u in enumerate(units)}
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for s, records in enumerate(records_by_seed):
        for r in records:
            j = where.get(r[key])
            if j is not None:
                cells.setdefault((s, j), []).append(r)
    width = max((len(v) for v in cells.values()), default=1)
    shape = (len(records_by_seed), len(units), width)
    n, d, c = np.zeros(shape), np.zeros(shape), np.zeros(shape[:2], dtype=np.int64)
    for (s, j), rows in cells.items():
        c[s, j] = len(rows)
        for k, r in enumerate(rows):
            if den(r):
                d[s, j, k] = 1.0
                n[s, j, k] = float(num(r))
    return Outcomes(n, d, c)


def _draws(tables: Sequence[Outcomes], seed: int | np.random.Generator, replicates: int) -> list[np.ndarray]:
    """Bootstrap replicates of each table's rate (``unigap.stats``: seeds, then units, then samples
    within each drawn cell), with the SAME draws for every table (tables of one shape are paired)."""
    return stats.nested_bootstrap(lambda d: [d.rate(t.num, t.den) for t in tables], tables[0].count,
                                  replicates=replicates, seed=seed)


def nested_bootstrap(table: Outcomes, minus: Outcomes | None = None, seed: int = 0,
                     replicates: int = REPLICATES) -> tuple[float, list[float]]:
    """Rate of ``table`` (or the paired difference ``table - minus``) and its 95% percentile
    interval: seeds resampled, then units (prompts) within the drawn seeds, then each drawn
    cell's own samples (so a level of one prompt still gets an honest interval).  A paired
    difference uses the same draws on both sides, down to the sample."""
    if minus is None:
        return table.value(), stats.percentile_interval(_draws([table], seed, replicates)[0])
    if table.num.shape != minus.num.shape or not np.array_equal(table.count, minus.count):
        raise EvidenceError(f"paired tables must have one shape, got {table.num.shape} and {minus.num.shape}")
    a, b = _draws([table, minus], seed, replicates)
    return table.value() - minus.value(), stats.percentile_interval(a - b)


def _entry(value: float, ci: list[float]) -> dict[str, Any]:
    return {"value": value, "ci": ci}


def _outside(ci: list[float], sign: int) -> bool:
    return bool(ci[0] > 0) if sign > 0 else bool(ci[1] < 0)


def _verdict(ci: list[float], sign: int) -> str:
    """confirmed: the interval excludes 0 on the claimed side; refuted: on the other side."""
    return "confirmed" if _outside(ci, sign) else "refuted" if _outside(ci, -sign) else "not confirmed"


# ---------------------------------------------------------------------------------- analysis
def analyse(evals: dict[str, list[dict[str, Any]]], grads: list[dict[str, list[float]]],
            selfplay: list[list[dict[str, Any]]], threshold: float) -> dict[str, Any]:
    """All figures and the six verdicts from the per-seed records."""
    gen = {m: [e["generation"] for e in runs] for m, runs in evals.items()}
    und = {m: [e["understanding"] for e in runs] for m, runs in evals.items()}
    prompts = sorted({r["prompt"] for recs in gen["base"] for r in recs})
    level_of = {r["prompt"]: r["level"] for runs in evals.values() for e in runs
                for recs in (e["generation"], e.get("seen_generation", ())) for r in recs}

    def acc(r):
        return r["p_yes"] >= threshold

    def metric(model: str, kind: str, level: str = "all", other: str | None = None,
               source: dict[str, list[list[dict[str, Any]]]] = gen) -> dict[str, Any]:
        """A rate (``other``: the paired difference model - other) over the prompts of ``source``."""
        names = sorted({r["prompt"] for recs in source["base"] for r in recs}) if source is not gen else prompts
        units = [p for p in names if level in ("all", level_of[p])]
        num_fn = {"oracle": lambda r: r["correct"], "nonu": lambda r: not acc(r),
                  "und": lambda r: acc(r) == r["truth"], "yes": acc}[kind]
        data = und if kind == "und" else source
        mine = outcomes(data[model], units, num_fn)
        if other is None:
            return _entry(*nested_bootstrap(mine))
        return _entry(*nested_bootstrap(mine, outcomes(data[other], units, num_fn)))

    models = [m for m in MODELS if m in gen]
    table = {
        m: {
            "oracle_accuracy": {lv: metric(m, "oracle", lv) for lv in (*LEVELS, "all")},
            "non_unification": {lv: metric(m, "nonu", lv) for lv in (*LEVELS, "all")},
            "understanding_accuracy": metric(m, "und"),
            "understanding_yes_share": metric(m, "yes"),
        }
        for m in models
    }
    seen: dict[str, Any] = {}
    if all("seen_generation" in e for runs in evals.values() for e in runs):
        sgen = {m: [e["seen_generation"] for e in runs] for m, runs in evals.items()}
        for m in models:
            seen[m] = {}
            for name, kind in (("oracle_accuracy", "oracle"), ("non_unification", "nonu")):
                seen[m][name] = metric(m, kind, source=sgen)
                if m != "base":
                    seen[m][name + "_minus_base"] = metric(m, kind, other="base", source=sgen)

    claims: dict[str, Any] = {}
    # 1. non-unification grows with difficulty (base model, test prompts; and the train-prompt self-play)
    base_n = {lv: outcomes(gen["base"], [p for p in prompts if level_of[p] == lv], lambda r: not acc(r))
              for lv in LEVELS}
    diffs = {}
    for hi_lv, lo_lv in (("medium", "easy"), ("hard", "medium"), ("hard", "easy")):
        # unpaired: the levels hold different prompts, so each level is resampled on its own
        diffs[f"{hi_lv}-{lo_lv}"] = _level_diff(base_n[hi_lv], base_n[lo_lv])
    sp_prompts = sorted({r["prompt"] for recs in selfplay for r in recs})
    sp_level = {r["prompt"]: r["difficulty"] for recs in selfplay for r in recs}
    sp_tables = {lv: outcomes(selfplay, [p for p in sp_prompts if sp_level[p] == lv], lambda r: not r["accepted"])
                 for lv in LEVELS}
    sp = {lv: _entry(*nested_bootstrap(sp_tables[lv])) for lv in LEVELS}
    sp_diff = _level_diff(sp_tables["hard"], sp_tables["easy"])
    claims["1"] = {
        "claim": "non-unification grows with task difficulty",
        "test": {lv: table["base"]["non_unification"][lv] for lv in (*LEVELS, "all")},
        "test_differences": diffs,
        "train_selfplay": sp, "train_selfplay_hard_minus_easy": sp_diff,
        "verdict": _verdict(diffs["hard-easy"]["ci"], +1),
        "rule": "hard - easy non-unification of the base model on the test prompts, 95% CI above 0",
    }
    # 2. rejected images: weak generation (oracle also rejects) vs misunderstanding (oracle accepts)
    rejected = outcomes(gen["base"], prompts, lambda r: not r["correct"], lambda r: not acc(r))
    weak = _entry(*nested_bootstrap(rejected))
    precision = _entry(*nested_bootstrap(outcomes(gen["base"], prompts, lambda r: r["correct"], acc)))
    sp_rejected = outcomes(selfplay, sp_prompts, lambda r: not r["correct"], lambda r: not r["accepted"])
    claims["2"] = {
        "claim": "the gap comes from weak generation, not misunderstanding",
        "rejected_oracle_also_rejects": weak,
        "rejected_oracle_accepts": {"value": 1 - weak["value"], "ci": [1 - weak["ci"][1], 1 - weak["ci"][0]]},
        "accepted_oracle_accepts": precision,
        "train_selfplay_rejected_oracle_also_rejects": _entry(*nested_bootstrap(sp_rejected)),
        "rejected_images": int(rejected.den.sum()),
        "verdict": _verdict([weak["ci"][0] - 0.5, weak["ci"][1] - 0.5], +1),
        "rule": "share of the base model's rejected test images that the oracle also rejects, 95% CI above 50%",
    }
    # 3. SFT: non-unification down, oracle generation accuracy up
    if "sft" in gen:
        d_non = metric("sft", "nonu", other="base")
        d_acc = metric("sft", "oracle", other="base")
        parts = [_verdict(d_non["ci"], -1), _verdict(d_acc["ci"], +1)]
        claims["3"] = {
            "claim": "SFT on self-accepted images lowers non-unification and raises generation accuracy",
            "non_unification_sft_minus_base": d_non, "oracle_accuracy_sft_minus_base": d_acc,
            "per_level_oracle_accuracy_sft_minus_base": {lv: metric("sft", "oracle", lv, "base") for lv in LEVELS},
            "seen_prompts": seen.get("sft", {}),
            "verdict": parts[0] if parts[0] == parts[1] else "partly confirmed" if "confirmed" in parts
            else "refuted" if "refuted" in parts else "not confirmed",
            "rule": "non-unification difference CI below 0 and oracle accuracy difference CI above 0",
        }
        # 4. co-improvement of understanding after generation-only training
        d_und = metric("sft", "und", other="base")
        claims["4"] = {
            "claim": "generation-only SFT also improves understanding (co-improvement)",
            "understanding_accuracy_sft_minus_base": d_und,
            "others": {m: metric(m, "und", other="base") for m in ("csft", "dpo") if m in gen},
            "verdict": _verdict(d_und["ci"], +1),
            "rule": "understanding accuracy (rendered images vs near misses) difference SFT - base, CI above 0",
        }
    # 5. C-SFT vs SFT, DPO vs SFT
    if "sft" in gen and ("csft" in gen or "dpo" in gen):
        entry: dict[str, Any] = {"claim": "C-SFT adds on top of SFT; DPO gains less than SFT"}
        verdicts = []
        if "csft" in gen:
            entry["oracle_accuracy_csft_minus_sft"] = metric("csft", "oracle", other="sft")
            entry["non_unification_csft_minus_sft"] = metric("csft", "nonu", other="sft")
            verdicts.append(("C-SFT > SFT", _verdict(entry["oracle_accuracy_csft_minus_sft"]["ci"], +1)))
        if "dpo" in gen:
            entry["oracle_accuracy_dpo_minus_sft"] = metric("dpo", "oracle", other="sft")
            entry["non_unification_dpo_minus_sft"] = metric("dpo", "nonu", other="sft")
            verdicts.append(("DPO < SFT", _verdict(entry["oracle_accuracy_dpo_minus_sft"]["ci"], -1)))
        entry["verdict"] = "; ".join(f"{name}: {verdict}" for name, verdict in verdicts)
        entry["rule"] = "oracle accuracy differences on the test prompts, CI above 0 (C-SFT - SFT) / below 0 (DPO - SFT)"
        claims["5"] = entry
    # 6. gradient alignment
    if grads:
        m = np.array([g["matched"] for g in grads])
        u = np.array([g["unmatched"] for g in grads])
        ones = np.ones(m.shape + (1,))
        count = np.ones(m.shape, dtype=np.int64)
        matched, unmatched = Outcomes(m[..., None], ones, count), Outcomes(u[..., None], ones, count)
        diff = _entry(*nested_bootstrap(matched, unmatched))
        claims["6"] = {
            "claim": "generation and understanding gradients align for matched samples (shared eNTK)",
            "cosine_matched": _entry(*nested_bootstrap(matched)),
            "cosine_unmatched": _entry(*nested_bootstrap(unmatched)),
            "matched_minus_unmatched": diff,
            "pairs": int(m.size),
            "verdict": _verdict(diff["ci"], +1),
            "rule": "mean cosine matched - unmatched, CI above 0",
        }
    return {"table": table, "seen_table": seen, "claims": claims, "prompts": len(prompts),
            "prompts_per_level": {lv: sum(level_of[p] == lv for p in prompts) for lv in LEVELS}}


def _level_diff(hi: Outcomes, lo: Outcomes) -> dict[str, Any]:
    """Difference of two levels' rates (different prompts): each level resampled on its own."""
    if not hi.den.sum() or not lo.den.sum():
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    a = _draws([hi], 11, REPLICATES)[0]
    b = _draws([lo], 12, REPLICATES)[0]
    return {"value": hi.value() - lo.value(), "ci": stats.percentile_interval(a - b)}


# ---------------------------------------------------------------------------------- report
def pct(e: dict[str, Any], signed: bool = False) -> str:
    """A rate and its interval in percent: ``12.3 [4.5, 20.1]``."""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * e['value'])} [{fmt.format(100 * e['ci'][0])}, {fmt.format(100 * e['ci'][1])}]"


def _sampling_text(cfg: dict[str, Any]) -> str:
    keys = cfg.get("sampling") or cfg.get("generation") or {}
    return ", ".join(f"{k} {v}" for k, v in keys.items()) or "the family's unguided sampling"


def markdown(result: dict[str, Any], cfg: dict[str, Any]) -> str:
    t, c = result["table"], result["claims"]
    per = result["prompts_per_level"]
    lines = [
        "# unigap evidence: the paper's claims on ShapesWorld (exact oracle)",
        "",
        f"Model `{cfg['model']}`; seeds {', '.join(map(str, cfg['seeds']))}; self-play on the train prompts "
        f"(N = {cfg['num_candidates']}, {_sampling_text(cfg)}, threshold {cfg['threshold']}); measured on the "
        f"{result['prompts']} test prompts (easy {per['easy']}, medium {per['medium']}, hard {per['hard']}), "
        f"{cfg['eval_samples']} images and {cfg['und_items']} understanding questions per prompt, model and seed. "
        "Figures in %, [95% CI] from a bootstrap over seeds, then prompts, then the images / questions of each.",
        "",
        "## Verdicts",
        "",
        "A claim is *confirmed* when its 95% interval excludes no effect on the claimed side, *refuted* when it "
        "excludes it on the other side, and *not confirmed* otherwise (claim 3 has two parts).",
        "",
        "| # | claim | verdict | key figure |",
        "|---|---|---|---|",
    ]
    key = {
        "1": lambda e: f"non-unification hard - easy {pct(e['test_differences']['hard-easy'], True)}",
        "2": lambda e: f"rejected that the oracle also rejects {pct(e['rejected_oracle_also_rejects'])}",
        "3": lambda e: f"non-unification {pct(e['non_unification_sft_minus_base'], True)}, "
                       f"accuracy {pct(e['oracle_accuracy_sft_minus_base'], True)}",
        "4": lambda e: f"understanding {pct(e['understanding_accuracy_sft_minus_base'], True)}",
        "5": lambda e: "; ".join(f"{label} {pct(e[k], True)}" for label, k in (
            ("C-SFT - SFT accuracy", "oracle_accuracy_csft_minus_sft"),
            ("DPO - SFT accuracy", "oracle_accuracy_dpo_minus_sft")) if k in e),
        "6": lambda e: f"cosine matched {e['cosine_matched']['value']:.3f} vs unmatched "
                       f"{e['cosine_unmatched']['value']:.3f} (difference {e['matched_minus_unmatched']['value']:+.3f} "
                       f"[{e['matched_minus_unmatched']['ci'][0]:+.3f}, {e['matched_minus_unmatched']['ci'][1]:+.3f}])",
    }
    for k in sorted(c):
        lines.append(f"| {k} | {c[k]['claim']} | **{c[k]['verdict']}** | {key[k](c[k])} |")
    lines += ["", "## Per model, test prompts", "",
              "| model | oracle accuracy | easy | medium | hard | non-unification | easy | medium | hard | "
              "understanding acc. | Yes share |", "|---|" + "---|" * 10]
    for m, row in t.items():
        oa, nu = row["oracle_accuracy"], row["non_unification"]
        lines.append(f"| {NAMES[m]} | {pct(oa['all'])} | " + " | ".join(f"{100 * oa[lv]['value']:.1f}" for lv in LEVELS)
                     + f" | {pct(nu['all'])} | " + " | ".join(f"{100 * nu[lv]['value']:.1f}" for lv in LEVELS)
                     + f" | {pct(row['understanding_accuracy'])} | {100 * row['understanding_yes_share']['value']:.1f} |")
    if result.get("seen_table"):
        lines += ["", "Secondary: the same models on the train prompts their self-play data came from (seen prompts, "
                  "half the images per prompt):", "",
                  "| model | oracle accuracy | vs base | non-unification | vs base |", "|---|---|---|---|---|"]
        for m, row in result["seen_table"].items():
            lines.append(f"| {NAMES[m]} | {pct(row['oracle_accuracy'])} | "
                         + (pct(row['oracle_accuracy_minus_base'], True) if m != "base" else "") + " | "
                         + f"{pct(row['non_unification'])} | "
                         + (pct(row['non_unification_minus_base'], True) if m != "base" else "") + " |")
    c1 = c["1"]
    lines += ["", "## Details", "",
              "**1.** Base model, non-unification per level on the test prompts: "
              + ", ".join(f"{lv} {pct(c1['test'][lv])}" for lv in LEVELS)
              + "; differences " + ", ".join(f"{k} {pct(v, True)}" for k, v in c1["test_differences"].items())
              + ". On its own train-prompt self-play (the data it trains on): "
              + ", ".join(f"{lv} {pct(c1['train_selfplay'][lv])}" for lv in LEVELS)
              + f"; hard - easy {pct(c1['train_selfplay_hard_minus_easy'], True)}.",
              "",
              f"**2.** Of {c['2']['rejected_images']} rejected test images, the oracle also rejects "
              f"{pct(c['2']['rejected_oracle_also_rejects'])} (weak generation) and accepts "
              f"{pct(c['2']['rejected_oracle_accepts'])} (misunderstanding). Of the images the judge accepts, "
              f"the oracle accepts {pct(c['2']['accepted_oracle_accepts'])}. Train-prompt self-play: rejected that "
              f"the oracle also rejects {pct(c['2']['train_selfplay_rejected_oracle_also_rejects'])}."]
    if "3" in c:
        lines += ["", "**3.** SFT - base, oracle accuracy per level: " + ", ".join(
            f"{lv} {pct(v, True)}" for lv, v in c["3"]["per_level_oracle_accuracy_sft_minus_base"].items()) + "."]
    if "4" in c:
        lines += ["", "**4.** Understanding accuracy difference vs the base model: SFT "
                  f"{pct(c['4']['understanding_accuracy_sft_minus_base'], True)}"
                  + "".join(f", {NAMES[m]} {pct(v, True)}" for m, v in c["4"]["others"].items()) + "."]
    if "5" in c:
        lines += ["", "**5.** " + "; ".join(f"{k.replace('_', ' ')} {pct(v, True)}" for k, v in c["5"].items()
                                          if isinstance(v, dict)) + "."]
    if "6" in c:
        lines += ["", f"**6.** {c['6']['pairs']} matched and as many unmatched samples over the seeds; gradients over "
                  "every weight of the shared LLM; unmatched = the understanding sample of another prompt."]
    lines += ["", "Rules: " + "; ".join(f"{k}: {c[k]['rule']}" for k in sorted(c)) + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- driver
#: settings that change no cached result (a rerun may add seeds or models to an output directory)
NON_RESULT_KEYS = ("out", "seeds", "models")
CONFIG_FILE = "evidence_config.json"


def _claim_output(cfg: EvidenceConfig, out: Path) -> None:
    """Every stage is cached in ``out``; refuse a directory whose cache was made with other settings."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NON_RESULT_KEYS}
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
        if changed:
            raise EvidenceError(
                f"{out} holds evidence made with other settings ({', '.join(f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
                "its cached runs would be reused: choose another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise EvidenceError(f"{out} is not empty and holds no {CONFIG_FILE}: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def run_evidence(cfg: EvidenceConfig) -> dict[str, Any]:
    model = Path(cfg.model)
    if not (model / "shapesworld.json").exists():
        raise EvidenceError(f"{model} is not a ShapesWorld model (no shapesworld.json): evidence needs the oracle's world")
    for split in ("train", "test"):
        if not (model / "prompts" / f"{split}.jsonl").exists():
            raise EvidenceError(f"{model}/prompts/{split}.jsonl is missing")
    unknown = set(cfg.models) - set(MODELS)
    if unknown or "base" not in cfg.models:
        raise EvidenceError(f"models must include base and be among {MODELS}, got {cfg.models}")
    try:  # a bad --gen key fails here, naming it and the family's keys, before anything is written
        draw = sampling(cfg)
    except UnigapError as err:
        raise EvidenceError(f"{model}: {err}") from None
    out = Path(cfg.out)
    _claim_output(cfg, out)
    test = read_prompt_file(model / "prompts" / "test.jsonl")
    train = read_prompt_file(model / "prompts" / "train.jsonl")
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return value

    evals: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.models}
    grads, selfplay = [], []
    for seed in cfg.seeds:
        sdir = out / f"seed_{seed}"
        sdir.mkdir(exist_ok=True)
        _log(f"seed {seed}: self-play on the train prompts")
        run = timed("self-play", lambda: _selfplay(cfg, seed, sdir, draw))
        selfplay.append(timed("oracle", lambda: oracle_run(run)))
        data = timed("build", lambda: _build(run, sdir))
        dirs = {"base": str(model)}
        for kind in cfg.models:
            if kind != "base":
                _log(f"seed {seed}: llamafactory-cli train ({NAMES[kind]})")
                dirs[kind] = str(timed(f"train {NAMES[kind]}", lambda: _train(cfg, kind, data, sdir, seed)))
        for kind in cfg.models:
            _log(f"seed {seed}: measuring {NAMES[kind]} on the test prompts")
            evals[kind].append(timed("evaluate", lambda: _evaluate(cfg, dirs[kind], test, seed,
                                                                   sdir / "eval" / f"{kind}.json", draw, train)))
        gpath = sdir / "gradients.json"
        if not gpath.exists() and cfg.grad_pairs:
            _log(f"seed {seed}: gradient alignment")
            _write_json(gpath, timed("gradients", lambda: gradient_alignment(str(model), test, cfg.grad_pairs, seed)))
        if gpath.exists():
            grads.append(json.loads(gpath.read_text()))
    result = analyse(evals, grads, selfplay, cfg.threshold)
    public = asdict(cfg)
    public["sampling"] = draw
    result["config"] = public
    result["seconds"] = {k: round(v, 1) for k, v in times.items()}
    _write_json(out / "evidence.json", result)
    write_text_atomic(out / "evidence.md", markdown(result, public))
    return result
