"""Rows and ``dataset_info.json`` entries in LLaMA-Factory's sharegpt format.

A generation row is an ordinary conversation whose assistant answer is an
image (``<image>`` in the assistant turn); the image file is a PNG with a
``.codes.npy`` sidecar holding its exact codes.  Image paths are relative to
the dataset directory.  In a DPO row the ``images`` list holds the prompt's
images (if any), then the chosen answer's, then the rejected answer's.
"""

from __future__ import annotations

from typing import Any

IMAGE = "<image>"
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def gen_sft_row(prompt: str, image: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": IMAGE}],
        "images": [image],
    }


def gen_dpo_row(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}],
        "chosen": {"role": "assistant", "content": IMAGE},
        "rejected": {"role": "assistant", "content": IMAGE},
        "images": [chosen, rejected],
    }


def und_sft_row(image: str, question: str, answer: str) -> dict[str, Any]:
    # "<image>\n{question}": Janus-Pro's layout, and the prompt unigap's self-judge asks
    return {
        "messages": [{"role": "user", "content": IMAGE + "\n" + question}, {"role": "assistant", "content": answer}],
        "images": [image],
    }


def dataset_info_entry(file_name: str, ranking: bool = False) -> dict[str, Any]:
    columns = {"messages": "messages", "images": "images"}
    if ranking:
        columns.update(chosen="chosen", rejected="rejected")
    entry: dict[str, Any] = {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(TAGS)}
    if ranking:
        entry["ranking"] = True
    return entry
