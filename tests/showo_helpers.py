"""Show-o measurements the tests trust: the model's plain ``forward`` (full logits, the model's own
omni-attention mask), never the adapter's training path."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def gen_row(adapter, prompt: str, codes) -> list[int]:
    """A T2I training row: <|t2i|> <eos> prompt <eos> <|soi|> codes <|eoi|> <eos>."""
    return adapter.gen_prompt_ids(prompt) + adapter.gen_image_ids(adapter.spec, codes) + [adapter.tokenizer.eos_token_id]


def quadrants(seed: int, side: int = 8) -> list[int]:
    """An image of four flat quadrants (four random codes): what a tiny model learns in a few steps."""
    four = torch.randint(0, 8192, (4,), generator=torch.Generator().manual_seed(seed)).tolist()
    half = side // 2
    return [four[(r // half) * 2 + (c // half)] for r in range(side) for c in range(side)]


def masked_logp(model, adapter, prompt: str, codes, masks: int = 4) -> float:
    """Mean log p(target code) at masked positions over a fully masked image and ``masks`` fixed random
    half-masks, from the model's plain forward."""
    spec, config = adapter.spec, model.config
    row = torch.tensor([gen_row(adapter, prompt, codes)])
    first = row[0].tolist().index(spec.boi_token_id) + 1
    total, count = 0.0, 0
    for k in range(masks + 1):
        if k == 0:
            chosen = torch.arange(len(codes))
        else:
            chosen = torch.randperm(len(codes), generator=torch.Generator().manual_seed(k))[: len(codes) // 2]
        ids = row.clone()
        ids[0, first + chosen] = config.mask_token_id
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        total += float(logp[first + chosen, row[0, first + chosen]].sum())
        count += len(chosen)
    return total / count


def answer_logp(model, adapter, image, question: str, answer: str) -> float:
    """log p(first token of " answer") after Show-o's understanding prompt about ``image``."""
    ids = torch.tensor([adapter.und_prompt_ids(question)])
    word = adapter.answer_token_ids((answer,))[0]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=adapter.pixels([image])).logits[0, -1].float()
    return float(logits.log_softmax(-1)[word])


def write_rows(root: Path, name: str, rows: list[dict], ranking: bool = False) -> None:
    from unigap.host.llamafactory.datasets import dataset_info_entry

    (root / f"{name}.json").write_text(json.dumps(rows, indent=1))
    info_path = root / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = dataset_info_entry(f"{name}.json", ranking=ranking)
    info_path.write_text(json.dumps(info, indent=1))
