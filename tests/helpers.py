"""Measurements made with transformers' own Janus modules, independent of unigap's forward."""

from __future__ import annotations

import json
from pathlib import Path

import torch

USER = "<|User|>: {}\n\n<|Assistant|>:"
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.\n\n"
)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    boi = tokenizer.convert_tokens_to_ids("<begin_of_image>")
    return [tokenizer.bos_token_id] + tokenizer.encode(USER.format(prompt), add_special_tokens=False) + [boi]


@torch.no_grad()
def gen_logp(model, tokenizer, prompt: str, codes) -> float:
    """Teacher-forced log p(codes | prompt) of the generation branch (no guidance)."""
    codes = torch.as_tensor(codes).long().view(1, -1)
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    text = model.get_input_embeddings()(ids)
    image = model.prepare_embeddings_for_image_generation(codes[:, :-1])
    hidden = model.model.language_model(inputs_embeds=torch.cat([text, image], 1)).last_hidden_state
    logits = model.model.generation_head(hidden[:, ids.shape[1] - 1 :]).float()
    return float(torch.log_softmax(logits, -1).gather(-1, codes.unsqueeze(-1)).sum())


@torch.no_grad()
def hf_greedy(model, tokenizer, prompt: str, guidance_scale: float = 5.0) -> list[int]:
    """transformers' own ``generate(generation_mode="image")``, greedy."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_mode="image",
        do_sample=False,
        guidance_scale=guidance_scale,
    )
    return out[0].tolist()


@torch.no_grad()
def answer_logp(model, tokenizer, processor, image, question: str, answer: str) -> float:
    """log p(answer | image, question) from transformers' own forward and loss."""
    n = model.config.vision_config.num_image_tokens
    image_text = "<begin_of_image>" + "<image_placeholder>" * n + "<end_of_image>"
    head = [tokenizer.bos_token_id] + tokenizer.encode(SYSTEM + USER.format(image_text + question), add_special_tokens=False)
    tail = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = torch.tensor([head + tail])
    labels = torch.tensor([[-100] * len(head) + tail])
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    return float(-loss * len(tail))


def write_gen_dataset(root: Path, name: str, rows, model, tokenizer, ranking: bool = False) -> None:
    """Write generation rows (prompt, codes) or DPO rows (prompt, chosen codes, rejected codes)."""
    from unigap.codes import save_gen_image
    from unigap.host.llamafactory.datasets import dataset_info_entry, gen_dpo_row, gen_sft_row
    from unigap.models.janus import JanusAdapter

    adapter = JanusAdapter(model, tokenizer)
    records = []
    for i, row in enumerate(rows):
        prompt, *targets = row
        rels = []
        for j, codes in enumerate(targets):
            rel = f"{name}/img_{i:03d}_{j}.png"
            save_gen_image(root / rel, adapter.decode_codes(torch.as_tensor(codes).view(1, -1))[0], list(codes))
            rels.append(rel)
        records.append(gen_dpo_row(prompt, *rels) if ranking else gen_sft_row(prompt, rels[0]))
    (root / f"{name}.json").write_text(json.dumps(records, indent=1))
    info_path = root / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = dataset_info_entry(f"{name}.json", ranking=ranking)
    info_path.write_text(json.dumps(info, indent=1))


def load_trained(base_dir: Path, output_dir: Path):
    """The trained model: a full checkpoint, or the base with the LoRA adapter merged."""
    from transformers import JanusForConditionalGeneration

    if (output_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = JanusForConditionalGeneration.from_pretrained(base_dir)
        return PeftModel.from_pretrained(base, output_dir).merge_and_unload().eval()
    return JanusForConditionalGeneration.from_pretrained(output_dir).eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_keys(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}
