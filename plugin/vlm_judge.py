"""An independent judge for evaluation: any transformers image-text-to-text model from a local folder.

It answers the self-judge's own yes/no question about an image, and P(yes) is read against P(no)
from the next-token distribution of one forward pass (no text generated or parsed), exactly as the
self-judge does.  It only measures: the loop never selects training data with it.

:func:`build_tiny_vlm_judge` writes a tiny random LLaVA (hand-written config, a tokenizer trained
offline on a few sentences, the processor, a chat template) for tests that must run offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UnigapError


class JudgeModelError(UnigapError):
    """An independent judge model that cannot be loaded or asked (the message names the folder)."""


class VLMJudge:
    """P(yes) of a local image-text-to-text model for (image, question) pairs, one image per forward."""

    def __init__(self, path: str, answers: Sequence[str] = ("Yes", "No"), device: str = "cpu",
                 dtype: str = "float32"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not (Path(path) / "config.json").is_file():
            raise JudgeModelError(f"judge model {path} is not a local model folder (no config.json)")
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as err:
            raise JudgeModelError(f"judge model {path} does not load as an image-text-to-text model: "
                                  f"{str(err)[:300]}") from None
        self.model.to(device).eval()
        self.path, self.device = str(path), device
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = []
        for word in answers:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if not encoded:
                raise JudgeModelError(f"judge model {path}: its tokenizer encodes {word!r} to nothing")
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            raise JudgeModelError(f"judge model {path}: the answers {list(answers)} share their first token")
        self.answer_ids = ids
        if not getattr(self.processor, "chat_template", None):
            raise JudgeModelError(f"judge model {path} has no chat template (chat_template.jinja)")

    def prompt(self, question: str) -> str:
        """The model's own chat format: one user turn holding the image and the question."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        """P(yes) against P(no) for each (image, question); each pair runs alone (batch-invariant)."""
        import torch

        if len(images) != len(questions):
            raise JudgeModelError("one question per image is required")
        out = []
        with torch.no_grad():
            for image, question in zip(images, questions):
                inputs = self.processor(text=[self.prompt(question)], images=[image.convert("RGB")],
                                        return_tensors="pt").to(self.device)
                logits = self.model(**inputs).logits[0, -1].float()
                out.append(float(torch.softmax(logits[self.answer_ids], -1)[0]))
        return out


# ---------------------------------------------------------------------------------- a tiny offline judge
#: a chat template of our own (one user turn: the image, then the question; then the assistant's turn)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<image>"]


def build_tiny_vlm_judge(out: str | Path, seed: int = 0, image_size: int = 28) -> Path:
    """A tiny random LLaVA (CLIP vision tower + Llama text model) image-text-to-text model in ``out``:
    hand-written config, a tokenizer trained offline, the processor and a chat template (seconds)."""
    import torch
    from transformers import AutoModelForImageTextToText, LlavaConfig, LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from .textbpe import train_bpe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = [f"Does this image show a {c} {s}? Yes No yes no" for c in ("red", "green", "blue") for s in ("square", "bar")]
    core = train_bpe(words * 4, vocab_size=320, special_tokens=_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|end|>",
                                        pad_token="<|pad|>", extra_special_tokens={"image_token": "<image>"})
    ids = {t: core.token_to_id(t) for t in _SPECIALS}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": image_size, "patch_size": 14,
                       "projection_dim": 32},
        text_config={"model_type": "llama", "vocab_size": core.get_vocab_size(), "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "max_position_embeddings": 256, "bos_token_id": ids["<|bos|>"],
                     "eos_token_id": ids["<|end|>"], "pad_token_id": ids["<|pad|>"]},
        image_token_index=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "unigap_tiny_judge.json").write_text(json.dumps({"made_by": "unigap.vlm_judge.build_tiny_vlm_judge",
                                                             "seed": seed}) + "\n")
    return out
