"""The Show-o family on a tiny random checkpoint, in process (fast tier).

Effects are measured with the model's plain ``forward`` (full logits over the whole sequence, the
omni-attention mask built by the model), not with the adapter's training path.
"""

from __future__ import annotations

import copy

import pytest
import torch

from showo_helpers import gen_row as _gen_row
from showo_helpers import masked_logp, quadrants

from unigap.models import adapter_class_for, family_for_checkpoint, family_named

PROMPT = "a red square"


@pytest.fixture(scope="module")
def showo(tiny_showo):
    from unigap.models.showo import ShowoAdapter

    return ShowoAdapter.load(str(tiny_showo), dtype=torch.float32)


def _target(seed: int, n: int = 64) -> list[int]:
    return torch.randint(0, 8192, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---------------------------------------------------------------------------------------------- registry, layout


def test_registry_resolves_a_showo_checkpoint(tiny_showo):
    from transformers import AutoConfig, AutoProcessor

    from unigap.models.showo import ShowoAdapter

    assert family_for_checkpoint(str(tiny_showo)) is ShowoAdapter is family_named("showo")
    config = AutoConfig.from_pretrained(tiny_showo)
    assert config.model_type == "showo" and adapter_class_for(config) is ShowoAdapter
    processor = AutoProcessor.from_pretrained(tiny_showo)
    assert type(processor).__name__ == "ShowoProcessor" and processor.image_processor.crop_size["height"] == 32


def test_token_layout(showo):
    spec = showo.spec
    config = showo.model.config
    tok = showo.tokenizer
    # [PAD] and the 9 specials right after the text vocabulary, codes after them, the mask last
    assert [tok.convert_tokens_to_ids(t) for t in ("[PAD]", "<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>", "<|lvg|>")] == [
        config.llm_vocab_size + i for i in (0, 1, 2, 5, 6, 9)
    ]
    assert spec.gen_offset == config.llm_vocab_size + 10 and config.mask_token_id == spec.gen_offset + 8192
    codes = _target(1)
    gen = showo.gen_image_ids(spec, codes)
    assert gen[0] == spec.boi_token_id and gen[-1] == spec.eoi_token_id and gen[1:-1] == [spec.gen_offset + c for c in codes]
    # a generation row is Show-o's T2I layout: <|t2i|> <eos> prompt <eos> <|soi|> codes <|eoi|>
    eos = tok.eos_token_id
    row = _gen_row(showo, PROMPT, codes)
    text = tok.encode(PROMPT, add_special_tokens=False)
    assert row[: len(text) + 4] == [config.t2i_token_id, eos, *text, eos, spec.boi_token_id]
    # an understanding prompt is Show-o's MMU layout, with 64 placeholders where the codes go
    und = showo.und_prompt_ids("Does this image show a red square?")
    assert und[:2] == [config.mmu_token_id, spec.boi_token_id]
    assert und[2:66] == [config.und_placeholder_id] * 64 and und[66:68] == [spec.eoi_token_id, eos]
    assert und[68:] == tok.encode("USER: \nDoes this image show a red square? ASSISTANT:", add_special_tokens=False)
    runs = showo.image_runs(spec, und + row)
    assert runs == [("und", 2, 64), ("gen", len(und) + len(text) + 4, 64)]
    assert showo.gen_codes_in(spec, und + row).tolist() == codes


def test_sampling_parameters_are_checked():
    from unigap.models.base import FamilyError
    from unigap.models.showo import ShowoSampling

    assert ShowoSampling.defaults() == {"guidance_scale": 1.75, "steps": 16, "temperature": 1.0,
                                        "compound_temperature": True}
    with pytest.raises(FamilyError, match="steps must be >= 1"):
        ShowoSampling.from_values({"steps": 0})
    with pytest.raises(FamilyError, match="unknown generation key 'cfg_scale'"):
        ShowoSampling.from_values({"cfg_scale": 2.0})


# ---------------------------------------------------------------------------------------------- the two branches


def test_generate_is_per_seed_and_batch_invariant(showo):
    prompts = [PROMPT, "a blue bar", PROMPT, "two green circles"]
    seeds = [11, 12, 13, 14]
    together = showo.generate(prompts, seeds=seeds, steps=6)
    alone = torch.cat([showo.generate([p], seeds=[s], steps=6) for p, s in zip(prompts, seeds)])
    assert torch.equal(together, alone)
    reordered = showo.generate(prompts[::-1], seeds=seeds[::-1], steps=6)
    assert torch.equal(reordered, together.flip(0))
    assert together.shape == (4, 64) and int(together.min()) >= 0 and int(together.max()) < 8192
    assert not torch.equal(together[0], together[2])  # same prompt, other seed
    unguided = showo.generate(prompts[:1], seeds=seeds[:1], steps=6, guidance_scale=0.0)
    assert not torch.equal(unguided[0], together[0])
    with pytest.raises(Exception, match="more than the 64 codes"):
        showo.generate([PROMPT], seeds=[0], steps=65)


def test_judge_and_codecs_are_batch_invariant(showo):
    codes = torch.tensor([_target(s) for s in range(3)])
    images = showo.decode_codes(codes)
    assert [im.size for im in images] == [(32, 32)] * 3
    one_by_one = [showo.decode_codes(codes[i : i + 1])[0] for i in range(3)]
    assert [im.tobytes() for im in images] == [im.tobytes() for im in one_by_one]
    questions = [f"Does this image show {p}?" for p in ("a red square", "a blue bar", "a red square")]
    together = showo.judge(images, questions)
    alone = torch.cat([showo.judge([im], [q]) for im, q in zip(images, questions)])
    assert torch.equal(together, alone) and together.shape == (3,)
    assert ((together > 0) & (together < 1)).all()
    recoded = showo.encode_images(images)
    assert recoded.shape == (3, 64) and torch.equal(recoded, torch.cat([showo.encode_images([im]) for im in images]))


# ---------------------------------------------------------------------------------------------- training terms


def test_sft_masks_codes_by_a_cosine_schedule_and_drops_prompts_to_the_unconditional_layout(showo):
    spec, config = showo.spec, showo.model.config
    rows = [_gen_row(showo, PROMPT, _target(s)) for s in range(16)]
    ids = torch.tensor(rows)
    masked, mask, targets = showo._t2i_rows(ids, torch.ones_like(ids), dpo=False, prompt_dropout=0.0, step=3)
    first = rows[0].index(spec.boi_token_id) + 1
    is_masked = masked == config.mask_token_id
    counts = is_masked.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 64 and len(set(counts.tolist())) > 4  # ratios differ per row
    # targets: the true code where masked, <|soi|> and <|eoi|> themselves, nothing else
    expected = torch.full_like(ids, -100)
    expected[is_masked] = ids[is_masked]
    expected[:, first - 1] = spec.boi_token_id
    expected[:, first + 64] = spec.eoi_token_id
    assert torch.equal(targets, expected)
    assert torch.equal(masked[~is_masked], ids[~is_masked])
    again = showo._t2i_rows(ids, torch.ones_like(ids), dpo=False, prompt_dropout=0.0, step=3)[0]
    other_step = showo._t2i_rows(ids, torch.ones_like(ids), dpo=False, prompt_dropout=0.0, step=4)[0]
    assert torch.equal(again, masked) and not torch.equal(other_step, masked)
    # prompt dropout: the row becomes [PAD]*k <|t2i|> <eos> <eos> <|soi|> ... with the pads masked out
    dropped, dmask, _ = showo._t2i_rows(ids, torch.ones_like(ids), dpo=False, prompt_dropout=0.999, step=3)
    text = len(showo.tokenizer.encode(PROMPT, add_special_tokens=False))
    eos = showo.tokenizer.eos_token_id
    assert dropped[0, :text].tolist() == [spec.pad_token_id] * text and dmask[0, :text].sum() == 0
    assert dropped[0, text : text + 4].tolist() == [config.t2i_token_id, eos, eos, spec.boi_token_id]
    assert torch.equal(dropped[:, first:], masked[:, first:])


def test_dpo_estimator_shares_one_mask_per_prompt_across_answers_steps_and_calls(showo):
    config = showo.model.config
    chosen, rejected = _gen_row(showo, PROMPT, _target(1)), _gen_row(showo, PROMPT, _target(2))
    other = _gen_row(showo, "a blue bar", _target(1))
    width = max(map(len, (chosen, other)))
    pad = showo.spec.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in (chosen, rejected, other)])
    attn = (torch.arange(width)[None] < torch.tensor([len(chosen), len(rejected), len(other)])[:, None]).long()
    masked = [showo._t2i_rows(ids, attn, dpo=True, prompt_dropout=0.5, step=s)[0] == config.mask_token_id for s in (0, 7)]
    assert torch.equal(masked[0], masked[1])  # the step does not change it: a precomputed reference equals the live one
    assert torch.equal(masked[0][0], masked[0][1])  # chosen and rejected share it
    assert not torch.equal(masked[0][0, : len(other)], masked[0][2, : len(other)])  # another prompt: another mask
    batch = {"input_ids": ids, "attention_mask": attn, "labels": ids}
    logps, length = showo.sequence_logps(showo.model, batch)
    again, _ = showo.sequence_logps(showo.model, batch, step=5)
    assert torch.equal(logps, again) and (logps < 0).all()
    assert length[0] == length[1] == int(masked[0][0].sum()) + 2


def test_bad_rows_are_named(showo):
    from unigap.models.base import FamilyError

    spec = showo.spec
    short = showo.gen_prompt_ids(PROMPT) + showo.gen_image_ids(spec, _target(1, 10))
    good = _gen_row(showo, PROMPT, _target(2))
    width = len(good)
    ids = torch.tensor([good, short + [spec.pad_token_id] * (width - len(short))])
    with pytest.raises(FamilyError, match="row 1 has 10 image codes where a Show-o image has 64"):
        showo.sft_loss(showo.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    no_soi = torch.tensor([good[: good.index(spec.boi_token_id)] + good[good.index(spec.boi_token_id) + 1 :]])
    with pytest.raises(FamilyError, match="row 0: a generated image's codes must follow <|soi|>"):
        showo.sft_loss(showo.model, {"input_ids": no_soi, "labels": no_soi})


def test_generation_sft_raises_likelihood_and_the_codes_the_sampler_reproduces(tiny_showo):
    from unigap.models.showo import ShowoAdapter

    adapter = ShowoAdapter.load(str(tiny_showo), dtype=torch.float32)
    model = adapter.model
    target = quadrants(7)  # four flat quadrants (four codes of 8192): learnable by a 2-layer model in seconds
    row = torch.tensor([_gen_row(adapter, PROMPT, target)] * 4)
    batch = {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row}

    def reproduced() -> float:
        codes = adapter.generate([PROMPT] * 4, seeds=[0, 1, 2, 3], steps=8)
        return float((codes == torch.tensor(target)).float().mean())

    vq_before = copy.deepcopy(model.vq_model.state_dict())
    before_logp, before_share = masked_logp(model, adapter, PROMPT, target), reproduced()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(45):
        out = adapter.sft_loss(model, batch, prompt_dropout=0.1, step=step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    model.eval()
    after_logp, after_share = masked_logp(model, adapter, PROMPT, target), reproduced()
    assert after_logp > before_logp + 3.0, (before_logp, after_logp)
    assert before_share < 0.02 and after_share > 0.3, (before_share, after_share)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(torch.equal(v, model.vq_model.state_dict()[k]) for k, v in vq_before.items())


def test_dpo_raises_the_margin_against_an_unchanged_reference(tiny_showo):
    import torch.nn.functional as F

    from unigap.models.showo import ShowoAdapter

    adapter = ShowoAdapter.load(str(tiny_showo), dtype=torch.float32)
    policy = adapter.model
    reference = copy.deepcopy(policy).eval()
    ref_state = copy.deepcopy(reference.state_dict())
    chosen, rejected = _target(21), _target(22)
    ids = torch.tensor([_gen_row(adapter, PROMPT, chosen), _gen_row(adapter, PROMPT, rejected)])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def margin(model) -> float:
        return masked_logp(model, adapter, PROMPT, chosen) - masked_logp(model, adapter, PROMPT, rejected)

    before = margin(policy)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    policy.train()
    for step in range(15):
        logps, _ = adapter.sequence_logps(policy, batch, step=step)
        with torch.no_grad():
            ref, _ = adapter.sequence_logps(reference, batch, step=step)
        loss = -F.logsigmoid(0.1 * ((logps[0] - ref[0]) - (logps[1] - ref[1])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    assert margin(policy) > before + 0.3, (before, margin(policy))  # mean log-prob per code
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ref_state.items())
