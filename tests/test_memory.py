"""Memory bounds: streamed weight checksums, and releasing a module's storage while others hold it."""

from __future__ import annotations

import gc
import hashlib
import json

import pytest
import torch
from unigap.errors import UnigapError
from unigap.selfplay import model_fingerprint
from unigap.training import checksum, fingerprint, release_storage


def _whole(t: torch.Tensor) -> tuple[float, float]:
    data = t.detach().double()
    return float(data.sum()), float((data * data).sum())


def _tensors():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(37, 1000, generator=g)
    return {
        "scalar": torch.tensor(3.25),
        "small": torch.randn(7, generator=g),
        "bigger than a chunk": torch.randn(25_013, generator=g) + 0.5,
        "matrix, many chunks": big,
        "transposed": big.t(),
        "strided rows": big[::3, 5:905],
        "row bigger than a chunk": torch.randn(3, 2500, generator=g).t().contiguous().t(),
        "bf16": torch.randn(130, 77, generator=g).to(torch.bfloat16),
        "fp16 3d": torch.randn(9, 40, 31, generator=g).to(torch.float16).permute(2, 0, 1),
        "int64": torch.randint(-1000, 1000, (4321,), generator=g),
        "empty": torch.zeros(0, 5),
    }


@pytest.mark.parametrize("name", list(_tensors()))
def test_streamed_checksum_equals_the_whole_tensor_float64_one(name):
    t = _tensors()[name]
    streamed, whole = checksum(t, chunk=1000), _whole(t)
    assert streamed == pytest.approx(whole, rel=1e-12, abs=1e-12)


def test_checksum_with_the_default_chunk_and_fingerprint_format():
    t = torch.randn(3000, 7)
    assert checksum(t) == pytest.approx(_whole(t), rel=1e-12)
    fp = fingerprint([("w", t), ("b", torch.ones(4))])
    assert fp["b"] == [4.0, 4.0] and fp["w"] == pytest.approx(list(_whole(t)), rel=1e-12)
    assert all(isinstance(v, list) and len(v) == 2 for v in fp.values())


def test_model_fingerprint_is_unchanged_by_streaming():
    """Run records made with the whole-tensor checksum keep their fingerprint."""

    class Config:
        def to_dict(self):
            return {"_name_or_path": "x", "hidden": 16}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 3))
    model.config = Config()
    digest = hashlib.sha256(json.dumps({"hidden": 16}, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        s, q = _whole(tensor)
        digest.update(f"{name}|{tuple(tensor.shape)}|{s:.10e}|{q:.10e}\n".encode())
    assert model_fingerprint(model) == digest.hexdigest()[:16]


def test_release_storage_frees_memory_held_through_other_references():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.BatchNorm1d(40), torch.nn.Linear(40, 50))
    ref[2].weight = torch.nn.Parameter(ref[0].weight.t().contiguous())
    expected = sum(t.numel() * t.element_size() for t in (*ref.parameters(), *ref.buffers()))
    holders = {"module": ref, "params": list(ref.parameters()), "buffers": list(ref.buffers())}  # like the host
    keep = torch.nn.Linear(50, 50)
    before = keep.weight.detach().clone()
    released, storages = release_storage(ref, keep=keep)
    gc.collect()
    assert released == expected > 0
    assert storages and all(s() is None for s in storages), "storage still alive: memory not returned"
    assert all(p.numel() == 0 for p in holders["params"] + holders["buffers"])
    assert torch.equal(keep.weight, before)
    with pytest.raises(RuntimeError):
        holders["module"](torch.randn(2, 50))


def test_release_storage_keeps_storage_alive_when_a_view_escapes_and_refuses_shared_weights():
    ref = torch.nn.Linear(8, 8)
    view = ref.weight.detach()[:2]  # an outside holder of the storage itself
    _, storages = release_storage(ref)
    gc.collect()
    assert any(s() is not None for s in storages)  # the check can fail: it really sees live storage
    del view
    gc.collect()
    assert all(s() is None for s in storages)

    model = torch.nn.Linear(8, 8)
    shared = torch.nn.Linear(8, 8)
    shared.weight = model.weight
    with pytest.raises(UnigapError, match="cannot release weight: it shares its storage"):
        release_storage(shared, keep=model)
    assert model.weight.numel() == 64
