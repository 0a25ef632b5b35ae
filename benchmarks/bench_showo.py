"""Show-o self-play throughput, measured side by side in one run.

1. Drawing images: unigap's MaskGIT sampler (``maskgit_generate``: all N candidates of every prompt in one
   call, as ``unigap selfplay`` draws them, each prompt's text part prefilled once into a KV cache and every
   step running only the image span) against the straightforward implementation of the published sampler
   (``maskgit_generate_reference``: one image at a time, the whole sequence, text included, through the
   model at every step), with the same prompts, seeds, steps, guidance and temperature.  In float32 both
   must give identical codes (asserted); in 16-bit the two forwards round differently (the cached text keys
   come from GEMMs of other shapes), logits differ by ~1e-2 and a few draws flip, so the share of equal codes
   is reported instead.
2. Judging: ``ShowoAdapter.judge`` (one forward per image, the image re-encoded by MAGVIT-v2), images/s.
3. Decoding: ``ShowoAdapter.decode_codes`` (MAGVIT-v2 decoder), images/s.

Variants are interleaved and each timed ``--repeats`` times; medians are reported with the ratio
ours / reference of images/s, and the results are written as JSON (``--out``).

Default model: a random Show-o small enough for a CPU yet shaped like the real 256-px one where it
matters for the sampler: 64 px -> 16 x 16 = 256 codes of 8192 (the real 256-px model's grid), a 129-token
text part, hidden 256, 4 layers, 8 heads.  ``--real-shapes`` builds the released 256-px Show-o's shapes
instead (Phi-1.5: hidden 2048, 32 heads, MLP 8192, all 24 layers, the 58498-token vocabulary; the full
MAGVIT-v2) directly on ``--device`` in ``--dtype`` without writing it anywhere, and also reports peak memory.

Usage: .venv/bin/python benchmarks/bench_showo.py [--quick] [--out outputs/bench/showo.json]
       .venv/bin/python benchmarks/bench_showo.py --device cuda --dtype bfloat16 --real-shapes   (a GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from unigap.fsutil import write_text_atomic
from unigap.models.showo import ShowoAdapter
from unigap.models.showo.sampler import maskgit_generate, maskgit_generate_reference, t2i_prompt_ids

PROMPTS = (
    "a red square left of a blue circle",
    "two green triangles above a yellow star",
    "a small black dog next to a white cat",
    "a big orange ball on a brown table",
)
QUESTION = "Does this image show {prompt}?"

# the bench's default model: the tiny family's builder with the real 256-px model's code grid and text part
BENCH_SPEC = {"image_size": 64, "hidden_size": 256, "num_layers": 4, "num_heads": 8, "intermediate_size": 1024,
                  "text_vocab": 600, "max_text_len": 129, "vq_channels": 32}

EOS = "<|endoftext|>"
REAL_TEXT_VOCAB, REAL_EOS_ID = 50295, 50256


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build_bench(device: str, dtype: str) -> ShowoAdapter:
    from unigap.models.showo.tiny import TinySpec, build_showo

    model, tokenizer = build_showo(TinySpec(**BENCH_SPEC))
    return ShowoAdapter(model.to(device=device, dtype=getattr(torch, dtype)).eval(), tokenizer)


def _real_tokenizer() -> Any:
    """An offline BPE padded to Phi-1.5's 50295 text ids (``<|endoftext|>`` at 50256), then Show-o's
    ``[PAD]`` and 9 special tokens at 50295..50304, as in the released checkpoints."""
    from unigap.models.showo.checkpoint import add_showo_tokens
    from unigap.textbpe import build_bpe_tokenizer

    rng = random.Random(0)
    words = " ".join(PROMPTS).split() + ["does", "this", "image", "show", "Yes", "No"]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(1000)]
    corpus += ["USER: \n", " ASSISTANT:", " Yes", " No", "Does this image show", *PROMPTS]
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=400, special_tokens=[EOS], bos_token=EOS, eos_token=EOS,
                                    prepend_bos=False, model_max_length=2048, fixed_ids={EOS: REAL_EOS_ID},
                                    total_size=REAL_TEXT_VOCAB)
    return add_showo_tokens(tokenizer, REAL_TEXT_VOCAB)


def _build_real(device: str, dtype: str, num_layers: int | None = None) -> ShowoAdapter:
    """The released 256-px Show-o's shapes (24 layers, or ``num_layers``), random, built in place on ``device`` in
    ``dtype``."""
    from unigap.models.showo.magvit import MagvitConfig
    from unigap.models.showo.modeling import ShowoConfig, ShowoForConditionalGeneration, phi_1_5_config_dict

    llm = phi_1_5_config_dict()
    if num_layers:
        llm["num_hidden_layers"] = num_layers
    config = ShowoConfig(llm_config=llm, vq_config=MagvitConfig().to_dict(),
                         llm_vocab_size=REAL_TEXT_VOCAB, codebook_size=8192, num_vq_tokens=256, image_size=256,
                         max_text_len=129, bos_token_id=REAL_EOS_ID, eos_token_id=REAL_EOS_ID)
    tokenizer = _real_tokenizer()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = ShowoForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return ShowoAdapter(model, tokenizer)


def _peak_start(device: str) -> int:
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _peak_end(device: str, base: int) -> int | None:
    """Peak bytes above ``base`` since :func:`_peak_start` (GPU); None on CPU (see the process's peak RSS)."""
    _sync(device)
    return torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    start = time.perf_counter()
    adapter = _build_real(args.device, args.dtype) if args.real_shapes else _build_bench(args.device, args.dtype)
    build_s = time.perf_counter() - start
    model, config = adapter.model, adapter.model.config
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    # the candidates of a prompt are consecutive rows, as unigap selfplay batches them
    rows = [t2i_prompt_ids(config, adapter.text_ids(p)) for p in prompts for _ in range(args.candidates)]
    seeds = [1000 + i for i in range(len(rows))]
    n = len(rows)
    kwargs = {"steps": args.steps, "guidance_scale": args.guidance, "temperature": args.temperature}

    def ours() -> torch.Tensor:
        return maskgit_generate(model, rows, seeds, **kwargs)

    def reference() -> torch.Tensor:
        return torch.cat([maskgit_generate_reference(model, [row], [seed], **kwargs) for row, seed in zip(rows, seeds)])

    codes_ours, codes_ref = ours(), reference()  # also the warm-up
    identical = bool(torch.equal(codes_ours.cpu(), codes_ref.cpu()))
    same_fraction = float((codes_ours.cpu() == codes_ref.cpu()).float().mean())
    if not identical:
        differ = (codes_ours.cpu() != codes_ref.cpu()).any(1).nonzero().flatten().tolist()
        message = (f"the two samplers drew different codes for rows {differ} of {n} "
                   f"({100 * (1 - same_fraction):.2f}% of the codes)")
        if args.dtype == "float32":
            raise AssertionError(message)
        # in 16-bit the cached span forward and the whole-sequence forward round differently (the text keys come
        # from GEMMs of other shapes), logits differ by ~1e-2 and a few multinomial draws flip: report, not fail
        print(f"warning: {message}; exact identity is checked in float32 only", file=sys.stderr)
    images = adapter.decode_codes(codes_ours)
    questions = [QUESTION.format(prompt=p) for p in prompts for _ in range(args.candidates)]
    p_yes = adapter.judge(images, questions)  # warm-up
    variants = {
        "generate_ours": ours,
        "generate_reference": reference,
        "judge": lambda: adapter.judge(images, questions),
        "decode": lambda: adapter.decode_codes(codes_ours),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, int | None] = {}
    for repeat in range(args.repeats):
        for name, fn in variants.items():
            base = _peak_start(args.device)
            t0 = time.perf_counter()
            fn()
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
            peak = _peak_end(args.device, base)
            if peak is not None:
                peaks[name] = max(peaks.get(name) or 0, peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: n / v for k, v in med.items()}
    llm = config.phi_config()
    result = {
        "model": "real-shapes" if args.real_shapes else "bench",
        "shapes": {"hidden": llm.hidden_size, "layers": llm.num_hidden_layers, "heads": llm.num_attention_heads,
                   "intermediate": llm.intermediate_size, "vocab": config.vocab_size, "image_size": config.image_size,
                   "codes_per_image": config.num_vq_tokens, "codebook": config.codebook_size,
                   "max_text_len": config.max_text_len,
                   "parameters": sum(p.numel() for p in model.parameters())},
        "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "prompts": args.prompts, "candidates_per_prompt": args.candidates, "images": n,
        "steps": args.steps, "guidance_scale": args.guidance, "temperature": args.temperature,
        "repeats": args.repeats, "build_s": build_s,
        "codes_identical": identical, "codes_same_fraction": same_fraction,
        "seconds": times, "median_s": med,
        "images_per_s": {"generate_ours": ips["generate_ours"], "generate_reference": ips["generate_reference"],
                         "judge": ips["judge"], "decode": ips["decode"]},
        "generate_ratio_ours_over_reference": ips["generate_ours"] / ips["generate_reference"],
        "p_yes_mean": float(p_yes.float().mean()),
        "peak_memory_bytes": peaks or None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    return result


def report(r: dict[str, Any]) -> str:
    s, ips = r["shapes"], r["images_per_s"]
    lines = [
        (f"Show-o self-play benchmark ({r['model']}: hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads, "
         f"vocab {s['vocab']}, {s['image_size']} px -> {s['codes_per_image']} codes, text part {s['max_text_len']}; "
         f"{s['parameters'] / 1e6:.1f} M parameters)"),
        (f"{r['device']} {r['dtype']}, {r['threads']} threads; {r['prompts']} prompts x {r['candidates_per_prompt']} "
         f"candidates = {r['images']} images, {r['steps']} steps, guidance {r['guidance_scale']}, "
         f"median of {r['repeats']}; codes identical: {r['codes_identical']} "
         f"({100 * r['codes_same_fraction']:.2f}% of the codes equal)"),
        (f"  generate  ours (one call, shared prefill)   {ips['generate_ours']:9.3f} img/s  "
         f"(median {r['median_s']['generate_ours']:.3f} s)"),
        (f"  generate  reference (one image at a time)   {ips['generate_reference']:9.3f} img/s  "
         f"(median {r['median_s']['generate_reference']:.3f} s)"),
        f"  ratio ours / reference                      {r['generate_ratio_ours_over_reference']:9.2f}x",
        f"  judge     (re-encode + one forward)         {ips['judge']:9.3f} img/s  (median {r['median_s']['judge']:.3f} s)",
        f"  decode    (MAGVIT-v2)                       {ips['decode']:9.3f} img/s  (median {r['median_s']['decode']:.3f} s)",
    ]
    if r["peak_memory_bytes"]:
        lines.append("  peak GPU memory above the loaded model: " + ", ".join(
            f"{k} {v / 2**20:.0f} MiB" for k, v in r["peak_memory_bytes"].items()))
    lines.append(f"  peak RSS of this process: {r['peak_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 prompt x 2 candidates, 3 repeats (a smoke run)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4, help="images per prompt (drawn in one call)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=1.75, help="Show-o's w: (1 + w) cond - w uncond")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--real-shapes", action="store_true",
                        help="the released 256-px Show-o's shapes (1.4 B LLM + MAGVIT-v2), built on --device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="outputs/bench/showo.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.candidates, args.repeats = 1, 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible to torch")
    result = bench(args)
    print(report(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
