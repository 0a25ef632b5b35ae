"""The self-improvement loop, round after round, resumable exactly once.

Round 0 evaluates the starting model on the held-out prompts.  Each round r >= 1 then runs:

1. ``selfplay``: ``unigap selfplay`` on the train prompts with the current model (seed + r);
2. ``build``: ``unigap build sft`` and / or ``unigap build dpo`` of that run into ``round_r/data``;
3. ``train<i>``: the host's unmodified ``llamafactory-cli train`` on each of the user's training YAMLs
   in turn, with only the model, adapter, dataset, dataset_dir and output_dir filled in;
4. ``export<i>``: a LoRA step merged with ``llamafactory-cli export`` (``merge_lora: true``), else the
   adapter is carried into the next step and round;
5. ``eval``: ``unigap selfplay`` on the held-out prompts with the fixed evaluation seed, scored by the
   oracle and / or the independent judge (``unigap.loop.evaluate``).

Every stage is journaled (``unigap.loop.journal``): a finished stage is never run again, an
interrupted one is redone from a clean directory (self-play runs resume themselves, exactly once).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..fsutil import write_text_atomic
from . import commands as cmd
from .config import (
    SCORES,
    LoopConfig,
    LoopConfigError,
    describe_changes,
    read_train_template,
    result_settings,
    round_train_config,
    template_dataset_kind,
)
from .evaluate import SCORES_FILE, load_table, score_run
from .journal import Journal, die, kill_point

LOOP_FILE = "loop.json"
DATASET_NAMES = {"sft": "loop_sft", "dpo": "loop_dpo"}


@dataclass
class Model:
    """Where a round starts: a checkpoint, and a LoRA adapter carried on (not merged) or None."""

    path: str
    adapter: str | None = None


def early_stop(values: list[float], metric: str, patience: int, min_delta: float) -> str | None:
    """Stop when the score (``values``: rounds 0, 1, ...) has not improved on its best by more than
    ``min_delta`` for ``patience`` rounds in a row; returns the reason, or None to go on."""
    sign = SCORES[metric]
    best, since = values[0], 0
    for value in values[1:]:
        if sign * (value - best) > min_delta:
            best, since = value, 0
        else:
            since += 1
    if since >= patience:
        return f"{metric} has not improved by more than {min_delta} for {since} round(s) (patience {patience})"
    return None


def claim_directory(config: LoopConfig) -> Path:
    """Create the loop directory, or check that an existing one was made with these settings."""
    out = Path(config.output_dir)
    settings = result_settings(config)
    meta_path = out / LOOP_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        changes = describe_changes(old.get("settings", {}), settings)
        if changes:
            raise LoopConfigError(
                f"{out} holds a loop made with other settings ({'; '.join(changes)}); refusing to continue it "
                "(its finished stages would not match). Use another output_dir, or the settings it was made with."
            )
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoopConfigError(f"output_dir {out} exists and is not a unigap loop directory (no {LOOP_FILE}); "
                              "refusing to write into it (choose another output_dir)")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_path, json.dumps({"unigap_version": __version__, "settings": settings,
                                             "config": json.loads(json.dumps(config.public(), default=str))},
                                            indent=1) + "\n")
    return out


class Loop:
    """One loop directory being run (or resumed)."""

    def __init__(self, config: LoopConfig):
        self.config = config
        self.templates = [read_train_template(p) for p in config.train_yamls]
        self._check_plan()
        self.out = claim_directory(config).resolve()
        self.journal = Journal(self.out)
        self.live = cmd.Live(config.progress)
        self.total_stages = 1 + config.rounds * (2 + len(self.templates) + self.n_exports + 1)
        self.count = 0

    # ------------------------------------------------------------------ plan
    def _lora(self, template: dict[str, Any]) -> bool:
        return template.get("finetuning_type", "lora") == "lora"  # the host's default is LoRA

    @property
    def n_exports(self) -> int:
        return sum(self._lora(t) for t in self.templates) if self.config.merge_lora else 0

    def _check_plan(self) -> None:
        c = self.config
        for path, template in zip(c.train_yamls, self.templates):
            kind = template_dataset_kind(template)
            if kind not in c.builds:
                raise LoopConfigError(f"train_yaml {path} trains stage {kind} but build is {c.build!r} "
                                      f"(set build: {kind} or both)")
        if not c.merge_lora:
            for i, template in enumerate(self.templates[1:], 1):
                if not self._lora(template) and any(self._lora(t) for t in self.templates[:i]):
                    raise LoopConfigError(f"train_yaml {c.train_yamls[i]} is full fine-tuning after a LoRA step: "
                                          "set merge_lora: true (the adapter must be merged first)")

    def round_dir(self, r: int) -> Path:
        return self.out / f"round_{r}"

    # ------------------------------------------------------------------ one stage
    def stage(self, key: str, title: str, work: Any, clean: tuple[Path, ...] = ()) -> dict[str, Any]:
        self.count += 1
        head = f"[unigap loop] {self.count}/{self.total_stages} {key}: {title}"
        if self.journal.done(key):
            entry = self.journal.entry(key) or {}
            print(f"{head}: done earlier ({entry.get('seconds', 0):.1f}s), skipped", flush=True)
            return self.journal.result(key)
        attempt = self.journal.start(key)
        print(head + (f" (attempt {attempt}: the last one was interrupted; redone cleanly)" if attempt > 1 else ""),
              flush=True)
        for path in clean:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        if kill_point(key, "end"):
            die()
        self.journal.finish(key, seconds, result)
        self.live.done(f"  {key} done in {seconds:.1f}s" + (f": {result['summary']}" if result.get("summary") else ""))
        return result

    def _during(self, key: str, probe_path: Path | None = None, writes: int = 1) -> tuple[Any, dict[str, str]]:
        """The test hook for ``during``: (kill_when, child env).  A unigap command kills itself inside its
        ``writes``-th atomic write (``UNIGAP_KILL_AT_WRITE``); a host command is killed once ``probe_path``
        exists (or when it ends, whichever comes first)."""
        if not kill_point(key, "during"):
            return None, {}
        if probe_path is None:
            return (lambda: False), {"UNIGAP_KILL_AT_WRITE": str(writes)}
        return (lambda: probe_path.exists() and (not probe_path.is_dir() or any(probe_path.iterdir()))), {}

    # ------------------------------------------------------------------ stages
    def selfplay(self, key: str, model: Model, prompts: str, max_prompts: int | None, n: int, seed: int,
                 folder: Path, batch_size: int) -> dict[str, Any]:
        c = self.config
        run_dir = folder / "run"
        if run_dir.is_dir() and not (run_dir / "run.json").exists():
            shutil.rmtree(run_dir)  # killed before the run was claimed: nothing in it to resume
        values: dict[str, Any] = {
            "model_name_or_path": str(Path(model.path).resolve()) if Path(model.path).exists() else model.path,
            "adapter_name_or_path": model.adapter, "prompts": str(Path(prompts).resolve()),
            "max_prompts": max_prompts, "num_candidates": n, "seed": seed, "batch_size": batch_size,
            **{k: getattr(c, k) for k in ("judge_question", "judge_threshold", "device", "dtype")},
            **c.sampling, "output_dir": str(run_dir), "progress": False,
        }
        yaml_path = cmd.write_yaml(folder / "selfplay.yaml", {k: v for k, v in values.items() if v is not None})
        command = cmd.unigap_command(["selfplay", str(yaml_path)], c.selfplay_launcher, c.selfplay_nproc,
                                     c.accelerate_config)
        from ..prompts import load_prompt_file

        count = len(load_prompt_file(prompts)[: max_prompts or None])
        # the hook: run.json, then 2 files per image; so write 2n + 3 comes after the first prompt is published
        kill_when, env = self._during(key, writes=2 * n + 3)
        cmd.run_command(command, folder / "selfplay.log", stage=key, label=key, live=self.live,
                        probe=cmd.selfplay_progress(run_dir, count * n, n), kill_when=kill_when, child_env=env)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        o = summary["overall"]
        return {"run": str(run_dir.relative_to(self.out)), "model_fingerprint": meta["model_fingerprint"],
                "overall": o, "summary": f"{o['n_images']} images, non-unification {100 * o['non_unification']:.1f}%, "
                                        f"pass@{n} {100 * o['pass_at_n']:.1f}%, discard pool {o['discard_pool']}"}

    def build(self, key: str, r: int, run_dir: Path) -> dict[str, Any]:
        c = self.config
        data = self.round_dir(r) / "data"
        out: dict[str, Any] = {"data": str(data.relative_to(self.out))}
        kill_when, env = self._during(key)
        for kind in c.builds:
            name = DATASET_NAMES[kind]
            args = ["build", kind, str(run_dir), "--out", str(data), "--name", name]
            if kind == "sft":
                args += ["--with-und"] * c.sft_with_und + ["--best-of-n"] * c.sft_best_of_n
                args += ["--max-per-prompt", str(c.sft_max_per_prompt)] if c.sft_max_per_prompt else []
                args += ["--threshold", str(c.sft_threshold)] if c.sft_threshold is not None else []
            else:
                args += ["--min-margin", str(c.dpo_min_margin)]
                args += ["--pairs", str(c.dpo_pairs)] if c.dpo_pairs else []
                args += ["--all-pairs"] * c.dpo_all_pairs + ["--any-outcome"] * c.dpo_any_outcome
                args += ["--threshold", str(c.dpo_threshold)] if c.dpo_threshold is not None else []
            cmd.run_command(cmd.Command([cmd._tool("unigap"), *args]), self.round_dir(r) / f"build_{kind}.log",
                            stage=key, label=key, live=self.live, kill_when=kill_when, child_env=env)
            manifest = json.loads((data / name / "manifest.json").read_text(encoding="utf-8"))
            out[kind] = {"name": name, **manifest["counts"]["total"]}
        parts = []
        if "sft" in out:
            parts.append(f"{out['sft'].get('rows', 0)} SFT rows, discard pool {out['sft'].get('discarded', 0)} prompts")
        if "dpo" in out:
            parts.append(f"{out['dpo'].get('pairs', 0)} DPO pairs")
        out["summary"] = "; ".join(parts)
        return out

    def train(self, key: str, r: int, i: int, model: Model, built: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        template = self.templates[i]
        kind = template_dataset_kind(template)
        folder = self.round_dir(r) / f"train_{i}"
        output = folder / "output"
        datasets = [DATASET_NAMES[kind]] + ([DATASET_NAMES["sft"] + "_und"] if kind == "sft" and c.sft_with_und else [])
        config = round_train_config(template, model=model.path, adapter=model.adapter, datasets=datasets,
                                    dataset_dir=str(self.out / built["data"]), output_dir=str(output))
        yaml_path = cmd.write_yaml(folder / "train.yaml", config)
        kill_when, env = self._during(key, output / "trainer_log.jsonl")
        cmd.run_command(cmd.train_command(yaml_path, c.launcher, c.nproc_per_node, c.accelerate_config),
                        folder / "train.log", stage=key, label=key, live=self.live, probe=cmd.train_progress(output),
                        kill_when=kill_when, child_env=env)
        state = json.loads((output / "trainer_state.json").read_text(encoding="utf-8"))
        curve = [[row["step"], row["loss"]] for row in state.get("log_history", []) if "loss" in row]
        results = output / "all_results.json"
        loss = json.loads(results.read_text(encoding="utf-8")).get("train_loss") if results.is_file() else None
        return {"output": str(output.relative_to(self.out)), "yaml": str(yaml_path.relative_to(self.out)),
                "stage": kind, "lora": self._lora(template), "train_loss": loss, "loss_curve": curve,
                "steps": state.get("global_step"), "summary": f"{state.get('global_step')} steps, train loss "
                                                              f"{loss:.4f}" if loss is not None else ""}

    def export(self, key: str, r: int, i: int, model: Model, adapter: str) -> dict[str, Any]:
        folder = self.round_dir(r) / f"export_{i}"
        target = folder / "model"
        template = self.templates[i]
        config: dict[str, Any] = {"model_name_or_path": model.path, "adapter_name_or_path": adapter,
                                  "template": template.get("template"), "finetuning_type": "lora",
                                  "export_dir": str(target)}
        for extra in ("trust_remote_code", "infer_dtype"):
            if extra in template:
                config[extra] = template[extra]
        config.update(self.config.export_keys)
        yaml_path = cmd.write_yaml(folder / "export.yaml", {k: v for k, v in config.items() if v is not None})
        kill_when, env = self._during(key, target)
        cmd.run_command(cmd.export_command(yaml_path), folder / "export.log", stage=key, label=key, live=self.live,
                        kill_when=kill_when, child_env=env)
        return {"model": str(target.relative_to(self.out)), "summary": f"merged into {target}"}

    def evaluate(self, key: str, r: int, model: Model) -> dict[str, Any]:
        c = self.config
        folder = self.round_dir(r) / "eval"
        result = self.selfplay(key, model, c.eval_prompts, c.max_eval_prompts, c.eval_candidates, c.eval_seed,
                               folder, c.eval_batch_size)
        if c.oracle or c.judge_model:
            judge = None
            if c.judge_model:
                from ..vlm_judge import VLMJudge

                judge = VLMJudge(c.judge_model, answers=c.judge_model_answers)
            halfway = die if kill_point(key, "scoring") else None
            score_run(folder / "run", folder / SCORES_FILE, oracle=c.oracle, judge=judge,
                      question=c.judge_question, judge_threshold=c.judge_model_threshold, halfway=halfway)
            table = load_table(folder / "run", folder / SCORES_FILE)
            for metric, label in (("oracle_accuracy", "oracle accuracy"), ("judge_accuracy", "judge accuracy"),
                                  ("judge_agreement", "judge agrees with self")):
                if metric in table.values:
                    values = table.values[metric]
                    result["summary"] += f", {label} {100 * values.sum() / table.counts.sum():.1f}%"
        return result

    # ------------------------------------------------------------------ early stop
    def stop_reason(self, evaluated: int) -> str | None:
        """After rounds 0..evaluated-1: the early-stop verdict (None = go on)."""
        c = self.config
        if not c.early_stop_metric or evaluated < 2:
            return None
        return early_stop([self.score(r) for r in range(evaluated)], c.early_stop_metric, c.early_stop_patience,
                          c.early_stop_min_delta)

    def score(self, r: int) -> float:
        from .evaluate import _rate

        folder = self.round_dir(r) / "eval"
        table = load_table(folder / "run", folder / SCORES_FILE)
        metric = self.config.best_metric()
        return _rate(table.values[metric], table.cells(metric))

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        print(f"[unigap loop] {self.out}: {c.rounds} round(s) from {c.model_name_or_path}; "
              f"{self.total_stages} stages", flush=True)
        model = Model(c.model_name_or_path)
        self.stage("r0.eval", "evaluate the starting model on the held-out prompts",
                   lambda: self.evaluate("r0.eval", 0, model))
        stopped = None
        for r in range(1, c.rounds + 1):
            stopped = self.stop_reason(r)
            if stopped:
                print(f"[unigap loop] early stop before round {r}: {stopped}", flush=True)
                break
            rd = self.round_dir(r)
            sp = self.stage(f"r{r}.selfplay", f"round {r}/{c.rounds}: self-play on the train prompts",
                            lambda: self.selfplay(f"r{r}.selfplay", model, c.train_prompts, c.max_train_prompts,
                                                  c.num_candidates, c.seed + r, rd / "selfplay", c.batch_size))
            built = self.stage(f"r{r}.build", f"round {r}/{c.rounds}: build {' + '.join(c.builds)}",
                               lambda: self.build(f"r{r}.build", r, self.out / sp["run"]), clean=(rd / "data",))
            for i, template in enumerate(self.templates):
                key = f"r{r}.train{i}"
                trained = self.stage(key, f"round {r}/{c.rounds}: llamafactory-cli train ({c.train_yamls[i]})",
                                     lambda: self.train(key, r, i, model, built), clean=(rd / f"train_{i}",))
                output = str(self.out / trained["output"])
                if not self._lora(template):
                    model = Model(output)
                elif c.merge_lora:
                    key = f"r{r}.export{i}"
                    merged = self.stage(key, f"round {r}/{c.rounds}: llamafactory-cli export (merge the LoRA)",
                                        lambda: self.export(key, r, i, model, output), clean=(rd / f"export_{i}",))
                    model = Model(str(self.out / merged["model"]))
                else:
                    model = Model(model.path, output)
            self.stage(f"r{r}.eval", f"round {r}/{c.rounds}: evaluate on the held-out prompts",
                       lambda: self.evaluate(f"r{r}.eval", r, model))
        from .report import write_loop_report

        report = write_loop_report(self, stopped)
        print(f"[unigap loop] finished in {time.perf_counter() - started:.1f}s; report: "
              f"{self.out / 'report' / 'report.md'} (and report.html, report.json)", flush=True)
        return report


def run_loop(config: LoopConfig) -> dict[str, Any]:
    """Run (or resume) a loop; returns its report."""
    sys.stdout.reconfigure(line_buffering=True) if hasattr(sys.stdout, "reconfigure") else None
    return Loop(config).run()
