"""Self-play and self-judge throughput, measured side by side in one run.

1. Drawing images: unigap's KV-cached CFG sampler (``JanusAdapter.generate``,
   what ``unigap selfplay`` runs) vs transformers' own
   ``generate(generation_mode="image")`` on the same model, batch, guidance
   scale and sampling settings (temperature 1, no top-k / top-p).  Greedy codes
   from both are compared for identity.  Goal: >= 2x images/s.
2. Judging: unigap's one-forward P(yes) vs generating an answer with
   transformers' ``generate`` (greedy, ``--answer-tokens`` new tokens) and
   parsing yes / no from the text, on the same images and questions.  Goal: >= 5x.
3. Peak memory of each (peak-RSS growth over the loaded model, a fresh process
   per variant on CPU; ``torch.cuda.max_memory_allocated`` on GPU).

Variants are interleaved, each timed ``--repeats`` times; medians are reported.

Usage: .venv/bin/python benchmarks/bench_selfplay.py [--repeats 5] [--sizes tiny,small] [--device cpu]
       (on a GPU: --sizes 1b --device cuda --dtype bfloat16 measures a Janus-Pro-1B-sized random model)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unigap.models.janus import JanusAdapter
from unigap.models.janus.tiny import TinySpec, build_tiny_janus

SIZES = {
    "tiny": TinySpec(),  # the embedded default: 32 px, 16 image tokens, hidden 64, 2 layers
    "small": TinySpec(image_size=64, patch_size=8, codebook_size=1024, hidden_size=256, num_layers=4, num_heads=8),
    # Janus-Pro-1B's LLM and head sizes (24 layers, hidden 2048, 576 image tokens, 16384 codes), random weights
    "1b": TinySpec(image_size=384, patch_size=16, codebook_size=16384, hidden_size=2048, num_layers=24, num_heads=16),
}
PROMPT = "a red square left of a blue circle"


def _load(size: str, root: Path, device: str, dtype: str):
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    path = root / size
    if not (path / "config.json").is_file():
        build_tiny_janus(path, SIZES[size])
    model = JanusForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return JanusAdapter(model, AutoTokenizer.from_pretrained(path))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_generate(adapter: JanusAdapter, batch: int, cfg: float, greedy: bool, seed: int = 0) -> torch.Tensor:
    ids = torch.tensor([adapter.gen_prompt_ids(PROMPT)] * batch, device=adapter.device)
    torch.manual_seed(seed)
    return adapter.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_mode="image",
        guidance_scale=cfg,
        do_sample=not greedy,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )


def unigap_generate(adapter: JanusAdapter, batch: int, cfg: float, greedy: bool, seed: int = 0) -> torch.Tensor:
    return adapter.generate([PROMPT] * batch, seeds=[seed + i for i in range(batch)], cfg_scale=cfg, greedy=greedy)


def _und_inputs(adapter: JanusAdapter, images, question: str):
    ids = torch.tensor([adapter.und_prompt_ids(question)] * len(images), device=adapter.device)
    side = adapter.model.config.vision_config.image_size
    return ids, adapter.pixels(images, size=side, fit="pad")


def hf_judge_by_text(adapter: JanusAdapter, images, question: str, answer_tokens: int) -> list[bool | None]:
    """Generate an answer and parse it: what one does without a one-pass judge."""
    ids, pixels = _und_inputs(adapter, images, question)
    out = adapter.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        max_new_tokens=answer_tokens,
        do_sample=False,
        generation_mode="text",
    )
    texts = adapter.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    parsed = []
    for text in texts:
        word = text.strip().lower().lstrip("\"'").split(" ")[0].strip(".,!") if text.strip() else ""
        parsed.append(True if word == "yes" else False if word == "no" else None)
    return parsed


def _time(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _variants(adapter: JanusAdapter, batch: int, cfg: float, answer_tokens: int) -> dict:
    """The four measured calls, on one batch of the model's own images."""
    images = adapter.decode_codes(unigap_generate(adapter, batch, cfg, greedy=False))
    question = f"Does this image show {PROMPT}?"
    return {
        "gen_unigap": lambda: unigap_generate(adapter, batch, cfg, greedy=False),
        "gen_hf": lambda: hf_generate(adapter, batch, cfg, greedy=False),
        "judge_unigap": lambda: adapter.judge(images, [question] * batch),
        "judge_hf_text": lambda: hf_judge_by_text(adapter, images, question, answer_tokens),
    }


def bench_size(size: str, root: Path, batch: int, cfg: float, repeats: int, device: str, dtype: str, answer_tokens: int):
    adapter = _load(size, root, device, dtype)
    spec = adapter.spec
    # identity: greedy codes of both samplers
    ours = unigap_generate(adapter, batch, cfg, greedy=True)
    theirs = hf_generate(adapter, batch, cfg, greedy=True)
    identical = bool(torch.equal(ours.cpu(), theirs.cpu()))
    variants = _variants(adapter, batch, cfg, answer_tokens)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_time(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": size,
        "image_tokens": spec.num_image_tokens,
        "codebook": spec.codebook_size,
        "hidden": adapter.model.config.text_config.hidden_size,
        "batch": batch,
        "greedy_codes_identical": identical,
        "gen_images_per_s": {"unigap": batch / med["gen_unigap"], "hf": batch / med["gen_hf"]},
        "gen_speedup": med["gen_hf"] / med["gen_unigap"],
        "judge_images_per_s": {"unigap": batch / med["judge_unigap"], "hf_generate_parse": batch / med["judge_hf_text"]},
        "judge_speedup": med["judge_hf_text"] / med["judge_unigap"],
    }


def _memory_child(variant: str, size: str, root: str, batch: int, cfg: float, device: str, dtype: str, answer_tokens: int) -> int:
    fn = _variants(_load(size, Path(root), device, dtype), batch, cfg, answer_tokens)[variant]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: sample this process's resident set every 0.2 ms while fn runs (the parent sets the
    # allocator so that tensors are mmapped and given back when freed, so RSS follows them)
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * page

    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample)
    thread.start()
    fn()
    done.set()
    thread.join()
    return max(peak[0], rss()) - base


def bench_memory(size: str, root: Path, batch: int, cfg: float, device: str, dtype: str, answer_tokens: int) -> dict:
    peaks = {}
    for variant in ("gen_unigap", "gen_hf", "judge_unigap", "judge_hf_text"):
        args = [sys.executable, __file__, "--memory-child", variant, "--sizes", size, "--root", str(root),
                "--batch", str(batch), "--cfg", str(cfg), "--device", device, "--dtype", dtype,
                "--answer-tokens", str(answer_tokens)] + (["--threads", str(torch.get_num_threads())])
        # every tensor buffer above 16 KiB is its own mapping, unmapped when freed: RSS follows live tensors
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        peaks[variant] = int(out)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", default="8", help="batch size(s), comma-separated")
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--answer-tokens", type=int, default=8, help="tokens the text-answer judge generates")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--root", help="where the random models are built (default: a temp dir)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(_memory_child(args.memory_child, args.sizes, args.root, int(args.batch), args.cfg, args.device, args.dtype,
                            args.answer_tokens))
        return
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        for size in args.sizes.split(","):
            for batch in map(int, str(args.batch).split(",")):
                row = bench_size(size, root, batch, args.cfg, args.repeats, args.device, args.dtype, args.answer_tokens)
                row["peak_memory_bytes"] = bench_memory(size, root, batch, args.cfg, args.device, args.dtype,
                                                        args.answer_tokens)
                results.append(row)
    print(f"\nself-play benchmark ({args.device}, {args.dtype}, {torch.get_num_threads()} threads, CFG {args.cfg}, "
          f"median of {args.repeats}; text-answer judge generates {args.answer_tokens} tokens)")
    print(f"{'size':6} {'batch':>5} {'img tok':>7} {'gen img/s unigap':>17} {'gen img/s HF':>13} {'ratio':>6} {'greedy =':>9} "
          f"{'judge img/s unigap':>19} {'judge img/s gen+parse':>22} {'ratio':>6}")
    for r in results:
        print(f"{r['size']:6} {r['batch']:5d} {r['image_tokens']:7d} {r['gen_images_per_s']['unigap']:17.1f} "
              f"{r['gen_images_per_s']['hf']:13.1f} {r['gen_speedup']:5.2f}x {str(r['greedy_codes_identical']):>9} "
              f"{r['judge_images_per_s']['unigap']:19.1f} {r['judge_images_per_s']['hf_generate_parse']:22.1f} "
              f"{r['judge_speedup']:5.2f}x")
    print("\npeak memory growth over the loaded model (MiB; CPU: sampled RSS, GPU: max allocated):")
    for r in results:
        m = {k: v / 2**20 for k, v in r["peak_memory_bytes"].items()}
        print(f"  {r['size']:6} batch {r['batch']:3d} generate: unigap {m['gen_unigap']:.1f} vs HF {m['gen_hf']:.1f}; "
              f"judge: unigap {m['judge_unigap']:.1f} vs generate+parse {m['judge_hf_text']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
