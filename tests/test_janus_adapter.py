"""The Janus adapter against transformers' own Janus code, on the tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import SYSTEM, USER, answer_logp, gen_logp, hf_greedy, prompt_ids
from PIL import Image

from unigap.codes import GenImageError, codes_path_for, load_codes, load_gen_target, save_gen_image
from unigap.models import adapter_class_for
from unigap.models.janus import JanusAdapter

PROMPTS = ["a red square", "two blue circles left of a tree", "a dog"]


@pytest.fixture(scope="module")
def adapter(tiny):
    model, tokenizer, _ = tiny
    return JanusAdapter(model, tokenizer)


def test_spec_is_read_from_the_checkpoint(tiny_model, tmp_path, tiny):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    _, tokenizer, _ = tiny
    config = AutoConfig.from_pretrained(tiny_model)
    spec = JanusAdapter.read_spec(config, tokenizer, GenerationConfig.from_pretrained(tiny_model))
    assert (spec.num_image_tokens, spec.codebook_size, spec.image_size) == (16, 64, 32)
    assert spec.image_token_id == config.image_token_id
    assert spec.gen_offset >= max(len(tokenizer), config.text_config.vocab_size)
    # Janus-Pro-1B and 7B differ in pad id: it must come from the checkpoint, not a constant
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    gen = json.loads((other / "generation_config.json").read_text())
    gen["pad_token_id"] = tokenizer.convert_tokens_to_ids("<|User|>")
    (other / "generation_config.json").write_text(json.dumps(gen))
    spec2 = JanusAdapter.read_spec(
        AutoConfig.from_pretrained(other), AutoTokenizer.from_pretrained(other), GenerationConfig.from_pretrained(other)
    )
    assert spec2.pad_token_id == gen["pad_token_id"] != spec.pad_token_id
    assert adapter_class_for(config) is JanusAdapter


def test_greedy_generation_matches_transformers(adapter, tiny):
    model, tokenizer, _ = tiny
    ours = adapter.generate(PROMPTS, seeds=[0, 1, 2], greedy=True, cfg_scale=5.0)
    for prompt, row in zip(PROMPTS, ours.tolist()):
        assert row == hf_greedy(model, tokenizer, prompt, 5.0)


def test_sampling_depends_on_the_seed_not_the_batch(adapter):
    batch = adapter.generate(PROMPTS, seeds=[11, 12, 13], top_k=20, top_p=0.9)
    alone = adapter.generate(PROMPTS[1:2], seeds=[12], top_k=20, top_p=0.9)
    assert torch.equal(batch[1], alone[0])
    again = adapter.generate(PROMPTS, seeds=[11, 12, 13], top_k=20, top_p=0.9)
    assert torch.equal(batch, again)
    other = adapter.generate(PROMPTS, seeds=[21, 22, 23], top_k=20, top_p=0.9)
    assert not torch.equal(batch, other)
    assert int(batch.min()) >= 0 and int(batch.max()) < adapter.spec.codebook_size


def test_judge_batched_equals_one_by_one(adapter):
    images = adapter.decode_codes(adapter.generate(PROMPTS, seeds=[1, 2, 3]))
    questions = [f"Does this image show {p}?" for p in PROMPTS]
    batched = adapter.judge(images, questions)
    single = torch.cat([adapter.judge([i], [q]) for i, q in zip(images, questions)])
    assert batched.shape == (3,) and ((batched > 0) & (batched < 1)).all()
    # batch-invariant bit for bit (self-play judges in chunks of batch_size and writes the same bytes)
    assert torch.equal(batched, single), (batched, single)
    one_question = adapter.judge(images, questions[:1] * 3)
    assert torch.equal(torch.cat([adapter.judge(images[:2], questions[:1] * 2), adapter.judge(images[2:], questions[:1])]),
                       one_question)
    assert len(set(batched.tolist())) == 3


def test_decode_batched_equals_one_by_one(adapter):
    codes = adapter.generate(PROMPTS, seeds=[1, 2, 3])
    batched = [i.tobytes() for i in adapter.decode_codes(codes)]
    assert batched == [adapter.decode_codes(row[None])[0].tobytes() for row in codes]
    assert len(set(batched)) == 3


def _gen_batch(adapter, tokenizer, prompt, codes):
    spec = adapter.spec
    head = prompt_ids(tokenizer, prompt)
    ids = head + [spec.gen_offset + c for c in codes] + [spec.eoi_token_id, tokenizer.eos_token_id]
    labels = [-100] * (len(head) - 1) + ids[len(head) - 1 :]
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }


def test_generation_nll_matches_transformers_modules(adapter, tiny):
    model, tokenizer, _ = tiny
    codes = np.random.default_rng(0).integers(0, 64, 16).tolist()
    with torch.no_grad():
        out = adapter.target_nll(model, _gen_batch(adapter, tokenizer, PROMPTS[0], codes))
    assert int(out.gen_mask.sum()) == 16
    # BOI / EOI around the image are structure, not targets; the eos after it is a text target
    assert int(out.text_mask.sum()) == 1
    assert float(-(out.nll * out.gen_mask).sum()) == pytest.approx(gen_logp(model, tokenizer, PROMPTS[0], codes), abs=1e-4)


def test_understanding_nll_matches_transformers_loss(adapter, tiny):
    model, tokenizer, processor = tiny
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    question, answer = "Does this image show a red square?", "Yes"
    spec = adapter.spec
    image_text = spec.boi_token + spec.image_token * spec.und_image_tokens + spec.eoi_token
    head = [tokenizer.bos_token_id] + tokenizer.encode(SYSTEM + USER.format(image_text + question), add_special_tokens=False)
    tail = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    batch = {
        "input_ids": torch.tensor([head + tail]),
        "labels": torch.tensor([[-100] * len(head) + tail]),
        "attention_mask": torch.ones(1, len(head + tail), dtype=torch.long),
        "pixel_values": processor.image_processor([image], return_tensors="pt")["pixel_values"],
    }
    with torch.no_grad():
        out = adapter.target_nll(model, batch)
    assert int(out.gen_mask.sum()) == 0 and int(out.text_mask.sum()) == len(tail)
    expected = answer_logp(model, tokenizer, processor, image, question, answer)
    assert float(-(out.nll * out.text_mask).sum()) == pytest.approx(expected, abs=1e-4)


def test_text_head_never_runs_at_image_positions(adapter, tiny):
    model, tokenizer, _ = tiny
    rows = {"lm_head": 0, "generation_head": 0}

    def count(name):
        def hook(module, args, output):
            rows[name] += args[0].reshape(-1, args[0].shape[-1]).shape[0]

        return hook

    handles = [
        model.lm_head.register_forward_hook(count("lm_head")),
        model.model.generation_head.register_forward_hook(count("generation_head")),
    ]
    try:
        with torch.no_grad():
            adapter.target_nll(model, _gen_batch(adapter, tokenizer, PROMPTS[0], list(range(16))))
    finally:
        for handle in handles:
            handle.remove()
    assert rows == {"lm_head": 1, "generation_head": 16}


def test_prompt_dropout_reproduces_the_unconditional_prompt(adapter, tiny):
    """A dropped row looks exactly like the unconditional row of classifier-free guidance."""
    _, tokenizer, _ = tiny
    spec = adapter.spec
    batch = _gen_batch(adapter, tokenizer, PROMPTS[0], list(range(16)))
    ids = batch["input_ids"]
    gen_in = ids >= spec.gen_offset
    text = ids.masked_fill(gen_in, spec.pad_token_id)
    dropped = adapter.drop_prompts(text, gen_in, p=0.999999)
    head = len(prompt_ids(tokenizer, PROMPTS[0]))
    expected = [spec.bos_token_id] + [spec.pad_token_id] * (head - 2) + [spec.boi_token_id]
    assert dropped[0, :head].tolist() == expected
    assert torch.equal(dropped[0, head:], text[0, head:])
    assert torch.equal(adapter.drop_prompts(text, gen_in, p=0.0), text)


def test_codes_files_round_trip_and_fail_clearly(adapter, tmp_path):
    codes = list(range(16))
    image = adapter.decode_codes(torch.tensor([codes]))[0]
    png, sidecar = save_gen_image(tmp_path / "a.png", image, codes)
    assert sidecar == codes_path_for(png) == tmp_path / "a.codes.npy"
    assert load_gen_target(str(png), adapter.spec).tolist() == codes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.codes.npy", "a.png"]  # no temp files left
    np.save(sidecar, np.array(codes[:-1] + [64]))
    with pytest.raises(GenImageError, match="outside the model's codebook"):
        load_codes(sidecar, adapter.spec)
    np.save(sidecar, np.array([0.5] * 16))
    with pytest.raises(GenImageError, match="holds float64 values"):
        load_codes(sidecar, adapter.spec)
    with pytest.raises(GenImageError, match="must be a file path"):
        load_gen_target(image, adapter.spec)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(GenImageError, match="not a readable image"):
        load_gen_target(str(tmp_path / "b.png"), adapter.spec)


def test_encode_decode_shapes(adapter):
    images = [Image.new("RGB", (50, 30), (10, 200, 10)), Image.new("L", (20, 20), 128)]
    codes = adapter.encode_images(images)
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    decoded = adapter.decode_codes(codes)
    assert [img.size for img in decoded] == [(32, 32), (32, 32)]


def test_training_template_matches_the_inference_prompts(adapter, tiny, tmp_path):
    """Rows tokenized by the host's `janus` template end exactly where generation and the judge begin."""
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    model, tokenizer, processor = tiny
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="janus"))
    spec = adapter.spec
    plugin = template.mm_plugin

    question = "Does this image show a red square?"
    und = plugin.process_messages(
        [{"role": "user", "content": "<image>\n" + question}, {"role": "assistant", "content": "Yes"}],
        [Image.new("RGB", (40, 40), "red")], [], [], processor,
    )
    prompt, answer = template.encode_oneturn(tokenizer, und)
    assert prompt == adapter.und_prompt_ids(question)
    assert answer == tokenizer.encode(" Yes", add_special_tokens=False) + [tokenizer.eos_token_id]

    codes = list(range(16))
    png, _ = save_gen_image(tmp_path / "g.png", adapter.decode_codes(torch.tensor([codes]))[0], codes)
    gen = plugin.process_messages(
        [{"role": "user", "content": "a red square"}, {"role": "assistant", "content": "<image>"}],
        [str(png)], [], [], processor,
    )
    prompt, answer = template.encode_oneturn(tokenizer, gen)
    assert prompt + answer[:1] == adapter.gen_prompt_ids("a red square")  # generation starts after <begin_of_image>
    assert answer[1:] == [spec.gen_offset + c for c in codes] + [spec.eoi_token_id, tokenizer.eos_token_id]


def test_direct_decoder_steps_equal_the_language_models_forward(tiny, monkeypatch):
    """The fast one-token decoding path gives the codes of LlamaModel.forward, padded batch included."""
    import unigap.models.janus.adapter as janus

    model, tokenizer, _ = tiny
    adapter = janus.JanusAdapter(model, tokenizer)
    prompts = ["a red square", "two big blue circles left of a green square", "a circle"]
    assert janus._can_step_layers(model.model.language_model)
    fast = [adapter.generate(prompts, seeds=[5, 6, 7], cfg_scale=3.0, greedy=g) for g in (True, False)]
    monkeypatch.setattr(janus, "_can_step_layers", lambda lm: False)
    slow = [adapter.generate(prompts, seeds=[5, 6, 7], cfg_scale=3.0, greedy=g) for g in (True, False)]
    assert all(torch.equal(f, s) for f, s in zip(fast, slow))
    assert not torch.equal(fast[1], adapter.generate(prompts, seeds=[8, 9, 10], cfg_scale=3.0))
