"""Generation-SFT cost, measured side by side in one run.

1. Step time (forward + backward) of a generation-SFT batch through unigap's
   forward vs a text-only SFT batch of the same token count through
   transformers' own forward + loss (what the host runs for text), on the tiny
   default model and on a wider "small" model.  Variants are interleaved and
   medians reported.  Goal: ratio <= 1.2.
2. Peak memory of the logits at image positions: unigap evaluates the image
   head (codebook) there and the text head only at text targets; a joint
   text+image vocabulary evaluates both everywhere.  Measured as peak-RSS
   growth of a forward + backward in a fresh process per variant, with
   Janus-Pro-1B head sizes.  Goal: at most codebook / (text vocab + codebook)
   of the joint footprint.

Usage: .venv/bin/python benchmarks/bench_gen_training.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unigap.models.janus import JanusAdapter
from unigap.models.janus.tiny import TinySpec, build_tiny_janus
from unigap.models.base import weighted_sft_loss as sft_loss


def _model(spec: TinySpec, root: Path, text_vocab: int | None = None):
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    path = build_tiny_janus(root / f"m{spec.hidden_size}_{spec.image_size}", spec)
    model = JanusForConditionalGeneration.from_pretrained(path).train()
    if text_vocab:  # a realistic text head: a real LLM's vocabulary is much larger than its image codebook
        model.resize_token_embeddings(text_vocab)
    return model, AutoTokenizer.from_pretrained(path)


def _batches(adapter: JanusAdapter, tokenizer, batch: int):
    spec = adapter.spec
    gen = torch.Generator().manual_seed(0)
    head = [spec.bos_token_id] + tokenizer.encode("<|User|>: a red square left of a blue circle\n\n<|Assistant|>:",
                                                  add_special_tokens=False) + [spec.boi_token_id]
    tail_len = spec.num_image_tokens + 2
    codes = torch.randint(0, spec.codebook_size, (batch, spec.num_image_tokens), generator=gen)
    ids = torch.cat(
        [torch.tensor([head] * batch), codes + spec.gen_offset,
         torch.tensor([[spec.eoi_token_id, tokenizer.eos_token_id]] * batch)], 1
    )
    labels = ids.clone()
    labels[:, : len(head) - 1] = -100
    gen_batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    text_ids = ids.clone()
    text_ids[:, len(head):] = torch.randint(8, len(tokenizer), (batch, tail_len), generator=gen)
    text_labels = text_ids.clone()
    text_labels[:, : len(head) - 1] = -100
    text_batch = {"input_ids": text_ids, "labels": text_labels, "attention_mask": torch.ones_like(ids)}
    return gen_batch, text_batch


def bench_steps(spec: TinySpec, root: Path, batch: int, repeats: int, text_vocab: int | None = None) -> dict:
    model, tokenizer = _model(spec, root, text_vocab)
    adapter = JanusAdapter(model, tokenizer)
    gen_batch, text_batch = _batches(adapter, tokenizer, batch)

    def gen_step():
        sft_loss(adapter.target_nll(model, gen_batch))["loss"].backward()

    def text_hf_step():
        model(**text_batch).loss.backward()

    def text_unigap_step():
        sft_loss(adapter.target_nll(model, text_batch))["loss"].backward()

    variants = {"generation SFT (unigap)": gen_step, "text SFT (transformers)": text_hf_step,
                "text SFT (unigap)": text_unigap_step}
    times = {name: [] for name in variants}
    for _ in range(3):  # warm-up
        for step in variants.values():
            step()
            model.zero_grad(set_to_none=True)
    for _ in range(repeats):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {
        "model": f"hidden {spec.hidden_size}, {spec.num_layers} layers, {adapter.spec.num_image_tokens} image tokens, "
                 f"codebook {spec.codebook_size}, text vocab {model.config.text_config.vocab_size}",
        "tokens per row": int(gen_batch["input_ids"].shape[1]),
        "batch": batch,
        "median ms": {k: round(v, 2) for k, v in medians.items()},
        "ratio gen/text(transformers)": round(medians["generation SFT (unigap)"] / medians["text SFT (transformers)"], 3),
        "ratio gen/text(unigap)": round(medians["generation SFT (unigap)"] / medians["text SFT (unigap)"], 3),
    }


# ----------------------------------------------------------------------------- logits memory (child process)
def _memory_child(variant: str, batch: int, positions: int, hidden: int, text_vocab: int, codebook: int) -> int:
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(hidden, text_vocab, bias=False)
    gen_head = torch.nn.Linear(hidden, codebook, bias=False)
    states = torch.randn(batch, positions, hidden, requires_grad=True)
    targets = torch.randint(0, codebook, (batch, positions))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flat = states.reshape(-1, hidden)
    lm_head.requires_grad_(False), gen_head.requires_grad_(False)  # isolate the logits, not weight grads
    if variant == "none":  # what both variants share: the gradient flowing back into the hidden states
        loss = (flat * 1.0).sum()
    elif variant == "split":  # unigap: image head only at image positions
        logits = gen_head(flat).float()
        loss = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))
    else:  # joint text+image vocabulary at every image position
        logits = torch.cat([lm_head(flat), gen_head(flat)], -1).float()
        loss = torch.nn.functional.cross_entropy(logits, targets.reshape(-1) + text_vocab)
    loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024


def bench_memory(batch=4, positions=576, hidden=2048, text_vocab=102400, codebook=16384) -> dict:
    peaks = {}
    for variant in ("none", "split", "joint"):
        args = [sys.executable, __file__, "--memory-child", variant, str(batch), str(positions), str(hidden),
                str(text_vocab), str(codebook)]
        peaks[variant] = int(subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip())
    goal = codebook / (text_vocab + codebook)
    return {
        "shape": f"batch {batch} x {positions} image positions, hidden {hidden}, text vocab {text_vocab}, codebook {codebook}",
        "peak MiB (image head only, unigap)": round(peaks["split"] / 2**20, 1),
        "peak MiB (joint text+image vocab)": round(peaks["joint"] / 2**20, 1),
        "shared MiB (hidden-state gradient, in both)": round(peaks["none"] / 2**20, 1),
        "measured ratio": round(peaks["split"] / peaks["joint"], 4),
        "measured ratio of the logits (shared part removed)": round(
            (peaks["split"] - peaks["none"]) / (peaks["joint"] - peaks["none"]), 4
        ),
        "goal (codebook / (text vocab + codebook))": round(goal, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--memory-child", nargs=6)
    args = parser.parse_args()
    if args.memory_child:
        variant, *sizes = args.memory_child
        print(_memory_child(variant, *map(int, sizes)))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {
            "step time, tiny default": bench_steps(TinySpec(), root, batch=8, repeats=args.repeats),
            "step time, small": bench_steps(
                TinySpec(hidden_size=256, num_layers=4, image_size=128, patch_size=8, codebook_size=4096),
                root, batch=4, repeats=max(5, args.repeats // 3), text_vocab=32000,
            ),
            "image-position logits memory": bench_memory(),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
