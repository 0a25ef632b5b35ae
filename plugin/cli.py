"""The ``unigap`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .errors import UnigapError
from .loading import add_dtype_option


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    import dataclasses

    from .models import family_named

    family = family_named(args.family)
    fields = {f.name for f in dataclasses.fields(family.tiny_spec)}
    given = {k: getattr(args, k) for k in _tiny_keys() if getattr(args, k, None) is not None}
    unknown = [k for k in given if k not in fields]
    if unknown:
        raise UnigapError(f"{', '.join('--' + k.replace('_', '-') for k in unknown)}: not an option of a tiny "
                          f"{family.family} model")
    start = time.perf_counter()
    path = family.build_tiny(args.out, family.tiny_spec(**given), overwrite=args.force)
    print(f"unigap: wrote a tiny random {family.family} model to {path} in {time.perf_counter() - start:.1f}s")
    return 0


def _tiny_keys() -> dict[str, tuple[type, Any, str]]:
    """Every family's tiny-model size: name -> (type, default, family)."""
    import dataclasses
    import typing

    from .models import adapter_classes

    out: dict[str, tuple[type, Any, str]] = {}
    for family in adapter_classes():
        hints = typing.get_type_hints(family.tiny_spec)
        for f in dataclasses.fields(family.tiny_spec):
            out.setdefault(f.name, (hints[f.name], f.default, family.family))
    return out


def _cmd_convert(args: argparse.Namespace) -> int:
    from .models import family_named

    start = time.perf_counter()
    path = family_named(args.family).convert(args)
    print(f"unigap: wrote a {args.family} checkpoint to {path} in {time.perf_counter() - start:.1f}s")
    return 0


def _add_convert(sub: Any, with_families: bool) -> None:
    """``unigap convert <family> ...``: one subcommand per family whose released files need converting."""
    from .models import adapter_classes

    conv = sub.add_parser("convert", help="convert a family's released files into one checkpoint folder")
    families = conv.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in adapter_classes() if with_families else []:
        parser = argparse.ArgumentParser(add_help=False)
        if family.add_convert_arguments(parser):
            one = families.add_parser(family.family, parents=[parser], help=f"released {family.family} files")
            one.set_defaults(func=_cmd_convert)


def _cmd_example_data(args: argparse.Namespace) -> int:
    from .shapesworld.examples import write_example_datasets

    counts = write_example_datasets(args.model, args.out, seed=args.seed, overwrite=args.force)
    print(f"unigap: wrote example datasets to {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .codes import save_gen_image
    from .fsutil import atomic_directory
    from .loading import load_unified

    from .models import family_for_checkpoint, sampling_keys
    from .seeds import image_seed

    prompts = list(args.prompt or [])
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            raise UnigapError(f"--prompts-file {args.prompts_file} does not exist")
        with open(args.prompts_file, encoding="utf-8") as handle:
            prompts += [line.strip() for line in handle if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise UnigapError("give at least one non-empty --prompt or a --prompts-file")
    if args.num < 1:
        raise UnigapError(f"--num must be >= 1, got {args.num}")
    given = {key: getattr(args, key) for key in sampling_keys() if getattr(args, key, None) is not None}
    family = family_for_checkpoint(args.model)
    unknown = [k for k in given if k not in family.sampling.keys()]
    if unknown:
        raise UnigapError(f"{', '.join('--' + k.replace('_', '-') for k in unknown)}: not a generation option of "
                          f"{family.family} models (theirs: "
                          f"{', '.join('--' + k.replace('_', '-') for k in family.sampling.keys())})")
    params = family.sampling.from_values(given)
    adapter = load_unified(args.model, args.adapter, device=args.device, dtype=args.dtype)
    jobs = [(i, k) for i in range(len(prompts)) for k in range(args.num)]
    with atomic_directory(args.out, overwrite=args.force) as out:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            codes = adapter.generate(
                [prompts[i] for i, _ in chunk],
                seeds=[image_seed(args.seed, i, k) for i, k in chunk],
                params=params,
            )
            for (i, k), image, row in zip(chunk, adapter.decode_codes(codes), codes.tolist()):
                save_gen_image(out / f"prompt{i:03d}_{k:02d}.png", image, row)
        (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    print(f"unigap: wrote {len(jobs)} images (PNG + exact codes) to {args.out}")
    return 0


def _cmd_selfplay(args: argparse.Namespace) -> int:
    from .selfplay import load_config, run_selfplay

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    config = load_config(path, items)
    summary = run_selfplay(config)
    if int(os.environ.get("RANK", "0")) == 0:
        overall = summary["overall"]
        print(
            f"unigap selfplay: {overall['n_images']} images for {overall['n_prompts']} prompts in {config.output_dir}: "
            f"non-unification {100 * overall['non_unification']:.1f}%, pass@{summary['num_candidates']} "
            f"{100 * overall['pass_at_n']:.1f}%, discard pool {overall['discard_pool']}"
        )
        for level, entry in summary["per_difficulty"].items():
            print(f"  {level}: non-unification {100 * entry['non_unification']:.1f}% over {entry['n_prompts']} prompts")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, default_out

    target = args.out or default_out(args.runs)
    report = build_report(args.runs, target, max_html_prompts=args.max_html_prompts, allow_partial=args.allow_partial)
    for run in report["runs"]:
        o = run["overall"]
        lo, hi = o["non_unification"]["ci"]
        print(
            f"unigap report: {run['name']}: non-unification {100 * o['non_unification']['value']:.1f}% "
            f"[{100 * lo:.1f}, {100 * hi:.1f}], pass@N {100 * o['pass_at_n']['value']:.1f}%, "
            f"discard pool {o['discard_pool']}"
        )
    if "comparison" in report:
        d = report["comparison"]["overall"]["non_unification"]
        print(
            f"unigap report: non-unification {100 * d['diff']:+.1f} points "
            f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]{' (outside the CI)' if d['outside_ci'] else ''}"
        )
    print(f"unigap report: wrote report.json, report.md, report.html and a plot to {target}")
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    from .shapesworld.evidence import MODELS, EvidenceConfig, markdown, run_evidence

    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else MODELS
    cfg = EvidenceConfig(model=args.model, out=args.out, seeds=seeds, models=models)
    import yaml

    for item in args.gen or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UnigapError(f"--gen takes KEY=VALUE (a sampling key of the model's family), got {item!r}")
        cfg.generation[key.strip()] = yaml.safe_load(value)
    for key in ("num_candidates", "eval_samples", "und_items", "sft_epochs", "dpo_epochs", "replay_epoch", "grad_pairs"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    result = run_evidence(cfg)
    print(markdown(result, result["config"]))
    print(f"unigap evidence: wrote {args.out}/evidence.md and evidence.json")
    return 0


def _cmd_evidence_compare(args: argparse.Namespace) -> int:
    from .shapesworld.compare import markdown, write_comparison

    comparison = write_comparison(args.runs, args.out)
    print(markdown(comparison))
    print(f"unigap evidence-compare: wrote {args.out}/compare.md and compare.json")
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    from .loop import load_loop_config, run_loop

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    run_loop(load_loop_config(path, items))
    return 0


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """One option per generation parameter of the registered families (default: the model family's)."""
    import typing

    from .models import adapter_classes

    group = parser.add_argument_group("generation (the model family's parameters; default: the family's)")
    seen: set[str] = set()
    for family in adapter_classes():
        hints = typing.get_type_hints(family.sampling)
        helps = family.sampling.field_help()
        defaults = family.sampling.defaults()
        for key in family.sampling.keys():
            if key in seen:
                continue
            seen.add(key)
            flag = "--" + key.replace("_", "-")
            text = f"{helps.get(key, '')} ({family.family}; default {defaults[key]})"
            kind = hints[key]
            if kind is bool:
                group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
                group.add_argument(flag, dest=key, type=base, default=None, help=text)


#: the commands whose options come from the model families (building them imports the families, and torch)
FAMILY_COMMANDS = ("tiny-model", "generate", "convert")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``unigap`` parser.  With ``command`` (the subcommand about to run), the families' options are
    built only when that command needs them, so ``unigap build`` / ``report`` start without torch."""
    with_families = command is None or command in FAMILY_COMMANDS
    parser = argparse.ArgumentParser(prog="unigap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from .models import supported_types

    families = supported_types() if with_families else ["?"]
    tiny = sub.add_parser("tiny-model", help="write a tiny random checkpoint of a model family (offline, seconds)")
    tiny.add_argument("--out", required=True, help="directory to create")
    tiny.add_argument("--family", choices=families, default=families[0], help=f"default: {families[0]}")
    for key, (kind, default, family) in (_tiny_keys() if with_families else {}).items():
        tiny.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, default=None,
                          help=f"{family}: default {default}")
    tiny.add_argument("--force", action="store_true", help="replace an existing directory")
    tiny.set_defaults(func=_cmd_tiny_model)

    _add_convert(sub, with_families)

    ex = sub.add_parser("example-data", help="write the small example datasets for a model (used by yaml_examples)")
    ex.add_argument("--model", required=True, help="model directory")
    ex.add_argument("--out", required=True, help="dataset directory to create")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--force", action="store_true", help="replace an existing directory")
    ex.set_defaults(func=_cmd_example_data)

    gen = sub.add_parser("generate", help="draw images with a (trained) unified model: PNG + exact codes")
    gen.add_argument("--model", required=True, help="model directory or hub id")
    gen.add_argument("--adapter", help="LoRA adapter directory from llamafactory-cli train (merged in memory)")
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", help="a text file with one prompt per line")
    gen.add_argument("--num", type=int, default=1, help="images per prompt")
    gen.add_argument("--seed", type=int, default=0)
    if with_families:
        _add_sampling_options(gen)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    add_dtype_option(gen)
    gen.add_argument("--out", required=True, help="directory to create")
    gen.add_argument("--force", action="store_true", help="replace an existing directory")
    gen.set_defaults(func=_cmd_generate)

    sp = sub.add_parser(
        "selfplay",
        help="draw N images per prompt and judge them with the model's own understanding",
        description="unigap selfplay CONFIG.yaml [key=value ...]: keys as in yaml_examples/selfplay.yaml. "
        "Rerun the same command to resume an interrupted run; under torchrun the prompts are split across ranks.",
    )
    sp.add_argument("items", nargs="+", metavar="CONFIG.yaml|key=value")
    sp.set_defaults(func=_cmd_selfplay)

    rep = sub.add_parser("report", help="non-unification report of one run, or two runs side by side")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run, or two (before, after)")
    rep.add_argument("--out", help="report directory (default: RUN_DIR/report of the last run)")
    rep.add_argument("--max-html-prompts", type=int, default=300, help="prompts shown in report.html")
    rep.add_argument("--allow-partial", action="store_true", help="report the prompts finished so far of a running run")
    rep.set_defaults(func=_cmd_report)

    ev = sub.add_parser(
        "evidence",
        help="the paper's claims measured on ShapesWorld against the exact oracle (several seeds, CIs)",
        description="Self-play on the train prompts, SFT / C-SFT / DPO through llamafactory-cli train, measured on "
        "the test prompts; writes OUT/evidence.md and evidence.json. Rerun to resume.",
    )
    ev.add_argument("--model", default="models/shapes-janus", help="a ShapesWorld model directory")
    ev.add_argument("--out", default="outputs/evidence")
    ev.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each: its own self-play and trainings)")
    ev.add_argument("--models", help="subset of base,sft,csft,dpo (default: all)")
    ev.add_argument("--gen", action="append", metavar="KEY=VALUE",
                    help="a sampling key of the model's family for self-play, replay and measurement (its keys: "
                    "`unigap generate --help`); default: the family's unguided sampling")
    ev.add_argument("--num-candidates", dest="num_candidates", type=int)
    ev.add_argument("--eval-samples", dest="eval_samples", type=int, help="images per test prompt per model and seed")
    ev.add_argument("--und-items", dest="und_items", type=int, help="understanding questions per test prompt")
    ev.add_argument("--sft-epochs", dest="sft_epochs", type=int)
    ev.add_argument("--dpo-epochs", dest="dpo_epochs", type=int)
    ev.add_argument("--replay-epoch", dest="replay_epoch", type=int)
    ev.add_argument("--grad-pairs", dest="grad_pairs", type=int, help="matched samples per seed for claim 6")
    ev.set_defaults(func=_cmd_evidence)

    ec = sub.add_parser(
        "evidence-compare",
        help="the paper's claims side by side for several `unigap evidence` runs (e.g. one per model family)",
        description="One table per claim, one column per evidence run, figures with their 95%% intervals and each "
        "run's verdict; writes OUT/compare.md and compare.json.",
    )
    ec.add_argument("runs", nargs="+", metavar="EVIDENCE_DIR", help="finished `unigap evidence` output directories")
    ec.add_argument("--out", default="outputs/evidence/compare")
    ec.set_defaults(func=_cmd_evidence_compare)

    lp = sub.add_parser(
        "loop",
        help="the whole loop over rounds: self-play, build, llamafactory-cli train, held-out evaluation (resumable)",
        description="unigap loop LOOP.yaml [key=value ...]: keys as in yaml_examples/loop_shapes.yaml. Rerun the same "
        "command to resume an interrupted loop; a loop directory made with other settings is refused.",
    )
    lp.add_argument("items", nargs="+", metavar="LOOP.yaml|key=value")
    lp.set_defaults(func=_cmd_loop)

    from .data_builders.cli import register as register_builders

    register_builders(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`~unigap.errors.UnigapError` is one line on stderr (exit 2), anything
    else (a bug) keeps its traceback."""
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(next((w for w in words if not w.startswith("-")), None)).parse_args(argv)
    try:
        return args.func(args)
    except UnigapError as err:
        print(f"unigap {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
