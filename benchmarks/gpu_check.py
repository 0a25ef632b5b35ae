"""The device check: the GPU figures unigap wants, in one short run (``bash benchmarks/gpu_check.sh``).

Sections, each in its own Python process with its own time box (a failure, an out-of-memory or a
time-out is recorded and the next section runs):

- ``device``: the GPU (name, memory, nominal memory bandwidth from ``torch.cuda.get_device_properties``:
  2 x bus width x memory clock, or ``--bandwidth-gbs``) and a measured device-to-device copy bandwidth.
- ``janus_selfplay``: a random Janus with every size of Janus-Pro-1B, all 24 text layers
  (``unigap.models.janus.tiny``'s Janus-Pro-1B sizes), built on the device in bfloat16.  Per batch size:
  ``JanusAdapter.generate`` (576 autoregressive steps, classifier-free guidance), ``decode_codes`` (VQ)
  and ``judge`` (SigLIP + one forward per image), images/s of the three together, peak GPU memory; and the
  decoding step (generate time / 576) against the memory-bandwidth floor: bytes of the weights one
  step reads (text layers, final norm, generation head and aligner) / nominal bandwidth, and the same
  with the mean KV-cache bytes a step reads added.
- ``janus_train``: one LoRA step (rank 8 on every linear of the text layers and the generation head,
  AdamW, bf16 autocast) of generation SFT (``sft_loss``) and of DPO (``sequence_logps`` of chosen and
  rejected, the reference = the same model with the adapter off; also with the reference log-probs
  precomputed, as ``gen_precompute_ref: true``), through ``unigap.training.install_forward`` as the host's
  trainers call it: median step time and peak memory per batch size, and SFT once more with gradient
  checkpointing (what LLaMA-Factory enables by default).
- ``showo_selfplay`` / ``showo_train``: the same for a random Show-o with the released 256-px model's
  shapes (Phi-1.5: 24 layers, hidden 2048; the full MAGVIT-v2; 256 codes; ``benchmarks/bench_showo.py
  --real-shapes``): MaskGIT with 16 steps, the step time against the same floor (every layer and the
  head are read once per step).

``--cpu-smoke`` runs the same code on tiny models on the CPU in under 2 minutes (tests/test_gpu_check.py).
The results go to ``OUT/gpu_check.json`` (``--out``, default ``$OUT`` or ``outputs/gpu_check``), rewritten
atomically after every section, and a table to stdout and ``OUT/gpu_check.txt``.  Exit status 1 when a
section failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("device", "janus_selfplay", "janus_train", "showo_selfplay", "showo_train")
PROMPTS = (
    "a red square left of a blue circle",
    "two green triangles above a yellow star",
    "a small black dog next to a white cat",
    "a big orange ball on a brown table",
)
QUESTION = "Does this image show {prompt}?"
CANDIDATES = 4  # images per prompt in a self-play batch (consecutive rows, as unigap selfplay draws them)
LORA_RANK, LORA_ALPHA, LR, BETA = 8, 16, 1e-4, 0.1
FAIL_HOOK = "UNIGAP_GPU_CHECK_FAIL"  # SECTION or SECTION:hang (tests/test_gpu_check.py)

# per mode: batch sizes, repeats, each section's time box (s) and the whole run's budget (s)
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {"device": "cuda", "dtype": "bfloat16", "selfplay_batches": [8, 32], "train_batches": [1, 4],
            "repeats": 2, "boxes": {"device": 45, "janus_selfplay": 120, "janus_train": 75,
                                    "showo_selfplay": 60, "showo_train": 60}, "budget": 360},
    "cpu-smoke": {"device": "cpu", "dtype": "bfloat16", "selfplay_batches": [1, 2], "train_batches": [1, 2],
                  "repeats": 1, "boxes": {s: 60 for s in SECTIONS}, "budget": 150},
}
JANUS_LORA = (r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
              r"|model\.generation_head\.(proj_out|vision_head)")
SHOWO_LORA = r"showo\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|dense)|mlp\.(fc1|fc2))"


# ------------------------------------------------------------------------------------------ child helpers
class Section:
    """A section's results, written (atomically) after every measurement so a killed section keeps its part."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args, self.torch = args, torch
        self.start = time.perf_counter()
        self.result: dict[str, Any] = {"device": args.device, "dtype": args.dtype,
                                       "memory_kind": "cuda_max_allocated" if self.cuda else "cpu_peak_rss"}

    @property
    def cuda(self) -> bool:
        return self.args.device.startswith("cuda")

    def left(self) -> float:
        return self.args.box - (time.perf_counter() - self.start)

    def save(self) -> None:
        from unigap.fsutil import write_text_atomic

        write_text_atomic(self.args.child_out, json.dumps(self.result, indent=1) + "\n")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        """Peak GPU memory allocated since :meth:`reset_peak`; on CPU the process's peak RSS so far."""
        self.sync()
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def allocated(self) -> int | None:
        return int(self.torch.cuda.memory_allocated()) if self.cuda else None

    def timed(self, fn) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def attempt(self, key: str, fn, store: dict | list | None = None) -> Any:
        """Run one measurement; an error (out-of-memory included) is recorded under ``key`` instead."""
        store = self.result if store is None else store
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 (recorded, and the section goes on)
            value = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}",
                     "traceback": traceback.format_exc()[-1500:]}
            if self.cuda:
                self.torch.cuda.empty_cache()
        if isinstance(store, list):
            store.append(value)
        else:
            store[key] = value
        self.save()
        return value


def nominal_bandwidth(device: str, flag_gbs: float | None) -> tuple[float | None, str]:
    """Bytes/s: ``--bandwidth-gbs`` when given, else 2 x bus width x memory clock of the CUDA device."""
    import torch

    if flag_gbs:
        return flag_gbs * 1e9, "flag"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        bus, clock = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)  # bits, kHz
        if bus and clock:
            return 2 * bus / 8 * clock * 1e3, "device_properties"
    return None, "unknown"


def copy_bandwidth(device: str, dtype: Any) -> float:
    """Measured bytes/s of a device-to-device copy (read + write counted), median of 5."""
    import torch

    n = (1 << 29 if device.startswith("cuda") else 1 << 24) // 2  # 1 GiB / 32 MiB of 16-bit values
    a = torch.empty(n, dtype=dtype, device=device).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / statistics.median(times)


def module_bytes(*modules: Any) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def build_janus_adapter(args: argparse.Namespace):
    import torch
    from unigap.models.janus import JanusAdapter, tiny

    if args.cpu_smoke:
        tokenizer = tiny.build_tokenizer(tiny.TinySpec())
        sizes = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_positions": 4096, "vision_hidden": 32,
                 "vision_layers": 1, "vision_heads": 2, "image_size": 32, "patch_size": 8, "codebook_size": 64}
        name = "tiny Janus (smoke)"
    else:
        tokenizer = tiny.janus_bpe_tokenizer(tiny._corpus(0), 600, fixed_ids=tiny.PRO_1B_IDS,
                                             total_size=tiny.PRO_1B_VOCAB)
        sizes = {"num_layers": args.layers or 24, "codebook_size": tiny.PRO_1B_VQ["num_embeddings"], "vq": tiny.PRO_1B_VQ,
                 **tiny.PRO_1B_TEXT, **tiny.PRO_1B_VISION}
        name = f"Janus-Pro-1B shapes, {sizes['num_layers']} of 24 layers, random"
    with torch.device(args.device):
        model, _ = tiny.build_janus(tokenizer, seed=0, dtype=args.dtype, **sizes)
    model = model.to(args.device).eval()
    text = model.config.text_config
    info = {"name": name, "parameters": sum(p.numel() for p in model.parameters()),
            "weight_bytes": module_bytes(model), "text_layers": text.num_hidden_layers, "hidden": text.hidden_size,
            "vocab": text.vocab_size, "image_tokens": model.config.vision_config.num_image_tokens,
            "image_size": model.config.vision_config.image_size,
            "codebook": model.config.vq_config.num_embeddings}
    return JanusAdapter(model, tokenizer), info


def build_showo_adapter(args: argparse.Namespace):
    sys.path.insert(0, str(HERE))
    from bench_showo import _build_real  # the released 256-px shapes, built in place
    from unigap.models.showo import ShowoAdapter
    from unigap.models.showo.tiny import TinySpec, build_showo

    if args.cpu_smoke:
        model, tokenizer = build_showo(TinySpec(), dtype=args.dtype)
        adapter = ShowoAdapter(model.to(args.device).eval(), tokenizer)
        name = "tiny Show-o (smoke)"
    else:
        adapter = _build_real(args.device, args.dtype, num_layers=args.layers)
        name = f"Show-o 256-px release shapes, {args.layers or 24} of 24 layers, random"
    model = adapter.model
    phi = model.config.phi_config()
    info = {"name": name, "parameters": sum(p.numel() for p in model.parameters()),
            "weight_bytes": module_bytes(model), "text_layers": phi.num_hidden_layers, "hidden": phi.hidden_size,
            "vocab": model.config.vocab_size, "image_tokens": model.config.num_vq_tokens,
            "image_size": model.config.image_size, "codebook": model.config.codebook_size}
    return adapter, info


# ------------------------------------------------------------------------------------------ sections
def section_device(sec: Section) -> None:
    import torch
    import transformers

    r = sec.result
    r.update({"torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "cuda_available": torch.cuda.is_available()})
    if sec.cuda:
        props = torch.cuda.get_device_properties(sec.args.device)
        r.update({"name": props.name, "total_memory_bytes": int(props.total_memory),
                  "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                  "memory_bus_width_bits": getattr(props, "memory_bus_width", None),
                  "memory_clock_khz": getattr(props, "memory_clock_rate", None), "cuda": torch.version.cuda})
    else:
        r.update({"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()})
    nominal, source = nominal_bandwidth(sec.args.device, sec.args.bandwidth_gbs)
    r.update({"nominal_bandwidth_Bps": nominal, "bandwidth_source": source,
              "copy_bandwidth_Bps": copy_bandwidth(sec.args.device, getattr(torch, sec.args.dtype))})
    sec.save()


def _bandwidth_block(sec: Section, weights: int, kv_mean: int, step_s: float) -> dict[str, Any]:
    nominal, source = nominal_bandwidth(sec.args.device, sec.args.bandwidth_gbs)
    measured = sec.result.get("copy_bandwidth_Bps")
    block = {"step_s": step_s, "weight_bytes_per_step": weights, "kv_cache_bytes_per_step_mean": kv_mean,
             "nominal_bandwidth_Bps": nominal, "bandwidth_source": source, "copy_bandwidth_Bps": measured,
             "weights_Bps_achieved": weights / step_s,
             "weights_and_kv_Bps_achieved": (weights + kv_mean) / step_s}
    for label, bw in (("nominal", nominal), ("copy", measured)):
        if bw:
            block[f"floor_weights_s_{label}"] = weights / bw
            block[f"floor_weights_kv_s_{label}"] = (weights + kv_mean) / bw
            block[f"step_over_floor_weights_{label}"] = step_s / (weights / bw)
            block[f"step_over_floor_weights_kv_{label}"] = step_s / ((weights + kv_mean) / bw)
    return block


def _selfplay(sec: Section, adapter: Any, info: dict, steps_of: Any, bytes_of: Any, **sampling: Any) -> None:
    """Per batch size: generate + decode + judge, images/s, peak memory, the decoding step vs the floor."""
    import torch

    r = sec.result
    r["model"] = info
    r["model_memory_bytes"] = sec.allocated()
    r["copy_bandwidth_Bps"] = copy_bandwidth(sec.args.device, getattr(torch, sec.args.dtype))
    batches = sec.args.selfplay_batches
    r["batches"] = []
    sec.save()

    def draw(batch: int) -> dict[str, Any]:
        prompts = [PROMPTS[(i // CANDIDATES) % len(PROMPTS)] for i in range(batch)]
        seeds = list(range(batch))
        sec.reset_peak()
        gen_s, codes = sec.timed(lambda: adapter.generate(prompts, seeds=seeds, **sampling))
        dec_s, images = sec.timed(lambda: adapter.decode_codes(codes))
        judge_s, p_yes = sec.timed(lambda: adapter.judge(images, [QUESTION.format(prompt=p) for p in prompts]))
        peak = sec.peak()
        spec = adapter.spec
        codes_ok = bool(codes.shape == (batch, spec.num_image_tokens) and int(codes.min()) >= 0
                        and int(codes.max()) < spec.codebook_size)
        p = p_yes.float().cpu()
        steps = steps_of(adapter)
        return {"ok": codes_ok and bool(((p >= 0) & (p <= 1)).all()) and len(images) == batch,
                "batch": batch, "generate_s": gen_s, "decode_s": dec_s, "judge_s": judge_s,
                "total_s": gen_s + dec_s + judge_s, "images_per_s": batch / (gen_s + dec_s + judge_s),
                "generate_images_per_s": batch / gen_s, "decode_images_per_s": batch / dec_s,
                "judge_images_per_s": batch / judge_s, "steps": steps, "step_s": gen_s / steps,
                "peak_memory_bytes": peak, "p_yes_mean": float(p.mean()),
                "bandwidth": _bandwidth_block(sec, *bytes_of(adapter, batch), gen_s / steps)}

    sec.attempt("warmup", lambda: {"ok": True, "seconds": sec.timed(lambda: draw(min(batches)))[0]})
    for batch in batches:
        last = r["batches"][-1] if r["batches"] else None
        if last and last.get("ok") and last["total_s"] * batch / last["batch"] > sec.left() - 5:
            r["batches"].append({"ok": False, "batch": batch, "skipped": "the section's time box"})
            sec.save()
            continue
        sec.attempt(str(batch), lambda b=batch: draw(b), store=r["batches"])


def section_janus_selfplay(sec: Section) -> None:
    adapter, info = build_janus_adapter(sec.args)
    model = adapter.model
    lm = model.model.language_model
    weights = module_bytes(lm.layers, lm.norm, model.model.generation_head, model.model.generation_aligner)
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    prompt_len = max(len(adapter.gen_prompt_ids(p)) for p in PROMPTS)

    def bytes_of(adapter: Any, batch: int) -> tuple[int, int]:
        steps = adapter.spec.num_image_tokens
        rows = 2 * batch  # conditional + unconditional (guidance) rows
        element = next(lm.parameters()).element_size()
        kv = 2 * text.num_hidden_layers * rows * (prompt_len + (steps - 1) / 2) * text.num_key_value_heads * head_dim
        return weights, int(kv * element)

    sec.result["decoding"] = ("autoregressive: one step per image token, conditional and unconditional rows in "
                              "one batch; weights = text layers + final norm + generation head + aligner")
    _selfplay(sec, adapter, info, lambda a: a.spec.num_image_tokens, bytes_of)


def section_showo_selfplay(sec: Section) -> None:
    from unigap.models.showo.adapter import ShowoSampling

    adapter, info = build_showo_adapter(sec.args)
    showo = adapter.model.showo
    weights = module_bytes(showo.model.layers, showo.model.final_layernorm, showo.lm_head)
    sec.result["decoding"] = ("MaskGIT: every step runs the image span of every row (and its unconditional twin) "
                              "against the cached prompt; weights = every layer + final norm + lm_head")
    steps = 4 if sec.args.cpu_smoke else ShowoSampling().steps  # the smoke: fewer steps on the CPU
    _selfplay(sec, adapter, info, lambda a: steps, lambda a, b: (weights, 0), steps=steps)


def _rows(adapter: Any, prompts: list[str], codes: Any, pad: int) -> dict[str, Any]:
    """Right-padded generation rows (prompt, image, EOS) with the prompt masked out of the labels."""
    import torch

    ids, labels = [], []
    for prompt, row_codes in zip(prompts, codes.tolist()):
        head = adapter.gen_prompt_ids(prompt)
        if head and head[-1] == adapter.spec.boi_token_id:  # Janus's prompt already ends with <begin_of_image>
            head = head[:-1]
        row = head + adapter.gen_image_ids(adapter.spec, row_codes) + [adapter.tokenizer.eos_token_id]
        ids.append(row)
        labels.append([-100] * len(head) + row[len(head):])
    width = max(map(len, ids))
    device = adapter.device
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=device),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=device),
    }


def _train(sec: Section, adapter: Any, info: dict, target: str) -> None:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from unigap.training import FORWARD_KEY, install_forward

    r = sec.result
    r["model"] = info
    r["lora"] = {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": target, "optimizer": "AdamW", "lr": LR,
                 "autocast": sec.args.dtype}
    base = adapter.model
    model = get_peft_model(base, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                            target_modules=target))
    install_forward(model, adapter)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    r["lora"]["trainable_parameters"] = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    r["model_memory_bytes"] = sec.allocated()
    spec = adapter.spec
    pad = spec.pad_token_id
    dtype = getattr(torch, sec.args.dtype)
    autocast = torch.autocast(device_type="cuda" if sec.cuda else "cpu", dtype=dtype)
    step_count = [0]
    r["sft"], r["dpo"] = [], []
    sec.save()

    def codes(batch: int, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, spec.codebook_size, (batch, spec.num_image_tokens), generator=g)

    def lora_b_moved() -> bool:
        return any(float(p.detach().abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)

    def run_steps(step, repeats: int) -> tuple[list[float], int, list[float]]:
        losses = [float(step())]  # warm-up
        sec.reset_peak()
        times = []
        for _ in range(repeats):
            seconds, loss = sec.timed(step)
            times.append(seconds)
            losses.append(float(loss))
        return times, sec.peak(), losses

    def sft(batch: int, checkpointing: bool = False) -> dict[str, Any]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        data = _rows(adapter, prompts, codes(batch, batch), pad)

        def step() -> float:
            with autocast:
                out = model(**data, **{FORWARD_KEY: {"mode": "sft", "prompt_dropout": 0.1, "gen_weight": 1.0,
                                                     "step": step_count[0]}})
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_count[0] += 1
            return out["loss"].detach()

        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            times, peak, losses = run_steps(step, sec.args.repeats)
        finally:
            if checkpointing:
                base.gradient_checkpointing_disable()
        return {"ok": all(math.isfinite(x) for x in losses) and lora_b_moved(), "batch": batch,
                "tokens_per_row": int(data["input_ids"].shape[1]), "gradient_checkpointing": checkpointing,
                "step_s": statistics.median(times), "steps_timed": len(times), "peak_memory_bytes": peak,
                "loss": losses[-1]}

    def dpo(batch: int) -> dict[str, Any]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        data = _rows(adapter, prompts + prompts, torch.cat([codes(batch, 1000 + batch), codes(batch, 2000 + batch)]),
                     pad)
        request = {FORWARD_KEY: {"mode": "logps", "average": False, "step": 0}}

        def reference() -> Any:
            with torch.no_grad(), model.disable_adapter(), autocast:
                return model(**data, **request)["logps"].float()

        def step(precomputed: Any = None) -> float:
            ref = reference() if precomputed is None else precomputed
            with autocast:
                logps = model(**data, **request)["logps"].float()
            chosen, rejected = logps.split(batch)
            ref_chosen, ref_rejected = ref.split(batch)
            loss = -F.logsigmoid(BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        times, peak, losses = run_steps(step, sec.args.repeats)
        out = {"ok": all(math.isfinite(x) for x in losses) and lora_b_moved(), "batch": batch, "pairs": batch,
               "tokens_per_row": int(data["input_ids"].shape[1]), "step_s": statistics.median(times),
               "steps_timed": len(times), "peak_memory_bytes": peak, "loss": losses[-1]}
        fixed = reference()
        times, peak, losses = run_steps(lambda: step(fixed), sec.args.repeats)
        out.update({"precomputed_ref_step_s": statistics.median(times), "precomputed_ref_peak_memory_bytes": peak})
        out["ok"] = out["ok"] and all(math.isfinite(x) for x in losses)
        return out

    for batch in sec.args.train_batches:
        if sec.left() < 10:
            r["sft"].append({"ok": False, "batch": batch, "skipped": "the section's time box"})
            continue
        sec.attempt("sft", lambda b=batch: sft(b), store=r["sft"])
        sec.attempt("dpo", lambda b=batch: dpo(b), store=r["dpo"])
    if sec.left() > 10:
        sec.attempt("sft_gradient_checkpointing", lambda: sft(max(sec.args.train_batches), checkpointing=True))


def section_janus_train(sec: Section) -> None:
    adapter, info = build_janus_adapter(sec.args)
    _train(sec, adapter, info, JANUS_LORA)


def section_showo_train(sec: Section) -> None:
    adapter, info = build_showo_adapter(sec.args)
    _train(sec, adapter, info, SHOWO_LORA)


def run_child(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(0)
    sec = Section(args)
    sec.save()
    hook = os.environ.get(FAIL_HOOK, "")  # tests: this section fails (or hangs past its time box) on purpose
    if hook.split(":")[0] == args.section:
        if hook.endswith(":hang"):
            sec.result["hook"] = "hanging"
            sec.save()
            time.sleep(3600)
        raise RuntimeError(f"{FAIL_HOOK} asked {args.section} to fail")
    {"device": section_device, "janus_selfplay": section_janus_selfplay, "janus_train": section_janus_train,
     "showo_selfplay": section_showo_selfplay, "showo_train": section_showo_train}[args.section](sec)
    sec.result["wall_s"] = time.perf_counter() - sec.start
    sec.result["done"] = True
    sec.save()
    return 0


# ------------------------------------------------------------------------------------------ parent
def _failures(name: str, entry: dict[str, Any]) -> list[str]:
    """Every measurement of a section that did not come out right, as ``section.key: why``."""
    if not entry.get("ok"):
        return [f"{name}: {entry.get('error', 'failed')}"]
    out = []
    result = entry.get("result", {})
    for key, value in result.items():
        items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        for item in items:
            if isinstance(item, dict) and item.get("ok") is False:
                why = item.get("skipped") or item.get("error") or "a sanity check failed"
                out.append(f"{name}.{key}{'[' + str(item['batch']) + ']' if 'batch' in item else ''}: {why}")
    return out


def _gib(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x / 2**30:.2f} GiB"


def table(report: dict[str, Any]) -> str:
    s = report["sections"]
    lines = [(f"unigap device check ({report['mode']}, {report['device']}, {report['dtype']}); {report['started']}, "
              f"{report['wall_s']:.0f} s")]
    dev = s.get("device", {}).get("result", {})
    if dev:
        nominal = dev.get("nominal_bandwidth_Bps")
        lines.append(f"device: {dev.get('name')}, memory {_gib(dev.get('total_memory_bytes'))}, nominal bandwidth "
                     f"{'-' if not nominal else f'{nominal / 1e9:.0f} GB/s'} ({dev.get('bandwidth_source')}), "
                     f"measured copy {dev.get('copy_bandwidth_Bps', 0) / 1e9:.0f} GB/s; torch {dev.get('torch')}")
    for family in ("janus", "showo"):
        sp = s.get(f"{family}_selfplay", {}).get("result", {})
        if sp.get("model"):
            m = sp["model"]
            lines.append(f"\n{m['name']}: {m['parameters'] / 1e9:.2f} B parameters ({_gib(m['weight_bytes'])}), "
                         f"{m['image_tokens']} codes per {m['image_size']}-px image")
            lines.append("  self-play batch | img/s (gen+decode+judge) | gen img/s | decode img/s | judge img/s | "
                         "step ms | floor ms (weights / +KV) | step/floor (weights) | peak")
            for b in sp.get("batches", []):
                if not b.get("ok") and "generate_s" not in b:
                    lines.append(f"  {b.get('batch')}: {b.get('skipped') or b.get('error')}")
                    continue
                bw = b["bandwidth"]
                label = "nominal" if "floor_weights_s_nominal" in bw else "copy"  # no nominal figure: the copy's
                floor = (f"{bw[f'floor_weights_s_{label}'] * 1e3:.3f} / {bw[f'floor_weights_kv_s_{label}'] * 1e3:.3f}"
                         + ("" if label == "nominal" else " (copy)") if f"floor_weights_s_{label}" in bw else "-")
                ratio = (f"{bw[f'step_over_floor_weights_{label}']:.1f}x" if f"floor_weights_s_{label}" in bw else "-")
                lines.append(f"  {b['batch']:>5} | {b['images_per_s']:.2f} | {b['generate_images_per_s']:.2f} | "
                             f"{b['decode_images_per_s']:.1f} | {b['judge_images_per_s']:.1f} | "
                             f"{b['step_s'] * 1e3:.2f} | {floor} | {ratio} | {_gib(b['peak_memory_bytes'])}")
        tr = s.get(f"{family}_train", {}).get("result", {})
        if tr.get("sft") is not None:
            lines.append(f"  LoRA step (rank {LORA_RANK}) batch | SFT s | SFT peak | DPO s (live ref) | DPO peak | "
                         "DPO s (precomputed ref) | its peak")
            for sft, dpo in zip(tr.get("sft", []), tr.get("dpo", []) + [{}] * len(tr.get("sft", []))):
                if "step_s" not in sft:
                    lines.append(f"  {sft.get('batch')}: {sft.get('skipped') or sft.get('error')}")
                    continue
                dpo_cells = (f"{dpo['step_s']:.3f} | {_gib(dpo['peak_memory_bytes'])} | "
                             f"{dpo['precomputed_ref_step_s']:.3f} | {_gib(dpo['precomputed_ref_peak_memory_bytes'])}"
                             if "precomputed_ref_step_s" in dpo else str(dpo.get("error", "-")))
                lines.append(f"  {sft['batch']:>5} | {sft['step_s']:.3f} | {_gib(sft['peak_memory_bytes'])} | {dpo_cells}")
            ck = tr.get("sft_gradient_checkpointing", {})
            if "step_s" in ck:
                lines.append(f"  SFT with gradient checkpointing, batch {ck['batch']}: {ck['step_s']:.3f} s, "
                             f"peak {_gib(ck['peak_memory_bytes'])}")
    fails = [f for name, entry in s.items() for f in _failures(name, entry)]
    lines.append("\nall sections ok" if not fails else "\nnot ok:\n  " + "\n  ".join(fails))
    return "\n".join(lines)


def run_parent(args: argparse.Namespace) -> int:
    from unigap.fsutil import write_text_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    mode = "cpu-smoke" if args.cpu_smoke else "real-shapes"
    report: dict[str, Any] = {"schema": 1, "mode": mode, "device": args.device,
                              "dtype": args.dtype, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                              "budget_s": args.budget_s, "selfplay_batches": args.selfplay_batches,
                              "train_batches": args.train_batches, "repeats": args.repeats, "sections": {}}
    json_path = out / "gpu_check.json"

    def publish() -> None:
        report["wall_s"] = time.perf_counter() - start
        write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")

    for name in args.sections:
        left = args.budget_s - (time.perf_counter() - start)
        box = min(args.boxes[name], left)
        entry: dict[str, Any] = {"box_s": box}
        report["sections"][name] = entry
        if box < 15:
            entry.update({"ok": False, "error": f"skipped: {left:.0f} s of the run's budget left"})
            publish()
            continue
        child_out = out / f".{name}.json"
        child_out.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--child-out", str(child_out),
               "--box", str(box), "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats),
               "--selfplay-batches", ",".join(map(str, args.selfplay_batches)),
               "--train-batches", ",".join(map(str, args.train_batches))]
        if args.cpu_smoke:
            cmd.append("--cpu-smoke")
        if args.bandwidth_gbs:
            cmd += ["--bandwidth-gbs", str(args.bandwidth_gbs)]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        print(f"[gpu_check] {name} (time box {box:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=box + 10, check=False)
            rc, tail, timed_out = proc.returncode, (proc.stdout + proc.stderr)[-3000:], False
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"") + (exc.stderr or b"")
            rc, tail, timed_out = None, (output.decode(errors="replace") if isinstance(output, bytes) else output)[-3000:], True
        entry["wall_s"] = time.perf_counter() - t0
        result = json.loads(child_out.read_text()) if child_out.exists() else {}
        child_out.unlink(missing_ok=True)
        entry["result"] = result
        entry["ok"] = rc == 0 and bool(result.get("done"))
        if not entry["ok"]:
            entry["error"] = ("timed out (the time box)" if timed_out else f"exit status {rc}") + ": " + tail[-1500:]
        publish()
        print(f"[gpu_check] {name}: {'ok' if entry['ok'] else 'FAILED'} in {entry['wall_s']:.0f} s", flush=True)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    publish()
    text = table(report)
    write_text_atomic(out / "gpu_check.txt", text + "\n")
    print(text)
    print(f"written: {json_path}")
    return 0 if all(not _failures(n, e) for n, e in report["sections"].items()) else 1


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU (< 2 minutes)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_check",
                        help="folder for gpu_check.json / .txt (default: $OUT, else outputs/gpu_check)")
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--device", help="default cuda (cpu with --cpu-smoke)")
    parser.add_argument("--dtype", help="default bfloat16")
    parser.add_argument("--selfplay-batches", type=_ints, help="self-play batch sizes (gpu: 8,32)")
    parser.add_argument("--train-batches", type=_ints, help="training batch sizes (gpu: 1,4)")
    parser.add_argument("--repeats", type=int, help="timed training steps per measurement (gpu: 2)")
    parser.add_argument("--budget-s", type=float, help="the whole run's time budget (gpu: 360 s)")
    parser.add_argument("--box-s", type=float, help="every section's time box (default: per section, gpu 45-120 s)")
    parser.add_argument("--bandwidth-gbs", type=float, help="the device's nominal memory bandwidth in GB/s "
                        "(default: from torch.cuda.get_device_properties)")
    parser.add_argument("--layers", type=int, help="text layers of both real-shape models (default: all 24; fewer "
                        "to try the real shapes on a CPU)")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--box", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    profile = PROFILES["cpu-smoke" if args.cpu_smoke else "gpu"]
    for key in ("device", "dtype", "selfplay_batches", "train_batches", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    args.boxes = {s: args.box_s for s in SECTIONS} if args.box_s else profile["boxes"]
    args.budget_s = args.budget_s or profile["budget"]
    if args.section:
        return run_child(args)
    args.sections = [s.strip() for s in (args.sections or ",".join(SECTIONS)).split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible to torch (use --cpu-smoke on a CPU machine)", file=sys.stderr)
            return 2
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
