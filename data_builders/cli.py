"""``unigap build sft|dpo`` and ``unigap encode`` (registered into the main parser).

Heavy imports (torch, transformers, datasets) happen inside the commands only.
"""

from __future__ import annotations

import argparse

from ..host.llamafactory.datasets import FORMAT
from ..loading import add_dtype_option


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import DpoOptions, SftOptions, build_dpo, build_sft, describe

    common = {"allow_partial": args.allow_partial, "overwrite": args.overwrite, "copy": args.copy, "fmt": FORMAT}
    if args.kind == "sft":
        opts = SftOptions(
            threshold=args.threshold, best_of_n=args.best_of_n, max_per_prompt=args.max_per_prompt,
            with_und=args.with_und,
        )
        result = build_sft(args.run_dirs, args.out, args.name, opts, **common)
    else:
        opts = DpoOptions(
            threshold=args.threshold, min_margin=args.min_margin, pairs=args.pairs, all_pairs=args.all_pairs,
            any_outcome=args.any_outcome,
        )
        result = build_dpo(args.run_dirs, args.out, args.name, opts, **common)
    describe(args.kind, result, index_file=FORMAT.index_file)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from .encode import EncodeOptions, describe, encode_dataset

    opts = EncodeOptions(
        fit=args.fit, batch_size=args.batch_size, image_column=args.image_column, text_column=args.text_column,
        split=args.split, png=args.png, limit=args.limit, progress=not args.no_progress,
    )
    result = encode_dataset(
        args.source, args.model, args.out, args.name, opts, adapter_dir=args.adapter, device=args.device,
        dtype=args.dtype, overwrite=args.overwrite, fmt=FORMAT,
    )
    describe(result, index_file=FORMAT.index_file)
    return 0


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DATASET_DIR",
                   help=f"dataset directory (the host's dataset_dir); created if missing, {FORMAT.index_file} merged")
    p.add_argument("--name", required=True,
                   help=f"dataset name: the {FORMAT.index_file} entry and the folder DATASET_DIR/NAME")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset of this name (folder and entry); other entries are never changed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data-builder subcommands to ``unigap``'s parser."""
    build = sub.add_parser("build", help="turn self-play runs into datasets for llamafactory-cli train (sft / dpo)")
    kinds = build.add_subparsers(dest="kind", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="self-play run directory (several: one model)")
        _add_output(p)
        p.add_argument("--threshold", type=float,
                       help="P(yes) needed to accept a candidate (default: the run's judge_threshold)")
        p.add_argument("--allow-partial", action="store_true",
                       help="use the prompts finished so far of a run that is still incomplete")
        p.add_argument("--copy", action="store_true",
                       help="copy image and codes files (default: hard links when on the same filesystem, else copies)")
        p.set_defaults(func=_cmd_build)

    sft = kinds.add_parser("sft", help="accepted candidates -> generation SFT rows (Algorithm 1); rest -> discard pool")
    common(sft)
    sft.add_argument("--best-of-n", action="store_true", help="keep only the highest-P(yes) candidate of a prompt")
    sft.add_argument("--max-per-prompt", type=int, metavar="K", help="at most K rows per prompt (highest P(yes) first)")
    sft.add_argument("--with-und", action="store_true",
                     help="also write every judged candidate as an understanding row (image + judge question -> "
                          "Yes/No) under the entry NAME_und, for mixed training")

    dpo = kinds.add_parser("dpo", help="highest vs lowest P(yes) per prompt -> DPO pairs (ranking: true)")
    common(dpo)
    dpo.add_argument("--min-margin", type=float, default=0.0, help="minimum P(yes) difference chosen - rejected")
    dpo.add_argument("--pairs", type=int, metavar="K",
                     help="at most K pairs per prompt (default 1; 2nd best vs 2nd worst, ...; with --all-pairs: "
                          "a cap, default none)")
    dpo.add_argument("--all-pairs", action="store_true",
                     help="every accepted x rejected pair of a prompt, largest margin first (capped by --pairs)")
    dpo.add_argument("--any-outcome", action="store_true",
                     help="pair by P(yes) alone, even when both candidates are accepted or both rejected")

    enc = sub.add_parser("encode", help="image-text pairs -> generation SFT rows, VQ-encoded by the model")
    enc.add_argument("source", metavar="SOURCE",
                     help="a folder of images (captions in metadata.jsonl or same-name .txt files), a JSONL file "
                          "(image path + text), a datasets save_to_disk folder, or a .parquet/.csv/.arrow file")
    enc.add_argument("--model", required=True, help="model directory or hub id (its own image tokenizer encodes)")
    enc.add_argument("--adapter", help="LoRA adapter directory: accepted and not loaded (a LoRA never changes the "
                                       "image tokenizer, which is always frozen); recorded in the manifest")
    _add_output(enc)
    enc.add_argument("--fit", choices=("crop", "pad"), default="crop",
                     help="non-square images: centre-crop (default) or pad with the processor's mean colour; "
                          "then resized to the model's image size")
    enc.add_argument("--image-column", default="image", help="image column (JSONL / datasets); default 'image'")
    enc.add_argument("--text-column", default="text", help="caption column (JSONL / metadata.jsonl / datasets)")
    enc.add_argument("--split", default="train", help="split of a datasets DatasetDict (default train)")
    enc.add_argument("--png", choices=("recon", "input"), default="recon",
                     help="the PNG beside the codes: what the codes decode to (default) or the resized input")
    enc.add_argument("--batch-size", type=int, default=16)
    enc.add_argument("--limit", type=int, help="encode only the first N pairs")
    enc.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    add_dtype_option(enc)
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    enc.set_defaults(func=_cmd_encode)
