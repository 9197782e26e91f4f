"""clip_pairs under a device memory cap: out-of-memory in a batch's device work halves it, an image the device
cannot decode alone is decoded on the CPU, nothing is lost, and the log says so in a few lines.

The cap is torch's own: the torch and torchvision calls that allocate a batch's tensors (JPEG decode,
``empty``, ``stack``, ``interpolate``, ``linear``) raise the real ``torch.OutOfMemoryError`` when their
result is larger than the cap, as the CUDA allocator does under ``set_per_process_memory_fraction``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from cah_assets.resources import ClipScorer
from cah_resources.batching import OOM_WARNINGS_PER_SHARD
from cah_resources.clip_pairs.clip_scorer import load_clip
from cah_resources.clip_pairs.stage import ClipPairsUnit, score_image_shard
from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
SEGMENT = "CC-MAIN-2024-10_00009"
TINY_IMAGE_BYTES = 3 * 64 * 64 * 4  # one float32 input of the tiny model (64 pixels)
CAP_BYTES = TINY_IMAGE_BYTES * 5 // 2  # two and a half images: a batch of 12 cannot fit, one image can


def _nbytes(result: Any) -> int:
    tensors = result if isinstance(result, (list, tuple)) else [result]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _capped(call: Callable[..., Any], cap: int, seen: list[int]) -> Callable[..., Any]:
    @functools.wraps(call)
    def allocate(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        size = _nbytes(result)
        if size > cap:
            seen.append(size)
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} bytes (test cap {cap})")
        return result

    return allocate


@pytest.fixture()
def memory_cap(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[int]]:
    """Call it to cap every batch allocation at ``CAP_BYTES`` from then on; it returns the sizes refused."""
    refused: list[int] = []
    # The batch sizes that fitted are remembered per loaded model and process: start and end without any.
    loaded = load_clip(ClipScorer.tiny().settings().models["en"], "cpu", "fp32")
    loaded.max_batch = loaded.max_decode_batch = None
    monkeypatch.setattr(loaded, "max_batch", None)
    monkeypatch.setattr(loaded, "max_decode_batch", None)
    monkeypatch.setattr(loaded, "fit_streaks", {})

    def cap() -> list[int]:
        for owner, name in (
            (torchvision.io, "decode_jpeg"),
            (torch, "empty"),
            (torch, "stack"),
            (torch.nn.functional, "interpolate"),
            (torch.nn.functional, "linear"),
        ):
            monkeypatch.setattr(owner, name, _capped(getattr(owner, name), CAP_BYTES, refused))
        return refused

    return cap


def _shard(root: DataRoot, sizes: list[int]) -> ClipPairsUnit:
    samples = []
    for i, size in enumerate(sizes):
        (_, caption, _, jpeg) = sample_pairs(1, seed=100 + i, size=size)[0]
        samples.append(ShardSample(caption, jpeg, "en", "en"))
    write_image_shard(root, SEGMENT, 0, samples)
    return ClipPairsUnit(root, SEGMENT, 0)


def _scored(unit: ClipPairsUnit, decode: str, **settings: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    unit.root.remove(unit.root.path("clip_pairs"))
    scorer = ClipScorer.tiny(**{"batch_size": 12, "decode_workers": 2, "decode": decode, **settings})
    summary = score_image_shard(unit, scorer.settings())
    return summary, unit.root.read_parquet(unit.table).to_pylist()


def _similarities(rows: list[dict[str, Any]]) -> list[float]:
    return [r["similarity"] for r in rows]


def test_out_of_memory_in_device_decode_and_resize_halves_the_batch_and_every_row_is_scored_as_uncapped(
    tmp_path, memory_cap, caplog
):
    # decode='pil' decodes on the host: here host and device are one CPU, so the cap would refuse
    # host allocations that no device cap could; its halving (in the model) is covered in test_clip_scorer.
    decode = "torch"
    unit = _shard(DataRoot(str(tmp_path / "data")), [64] * 12)
    _, uncapped = _scored(unit, decode)
    refused = memory_cap()

    with caplog.at_level(logging.WARNING, logger="cah_resources.batching"):
        summary, rows = _scored(unit, decode)

    assert refused, "the cap never refused an allocation: the test would measure nothing"
    assert any("ran out of memory" in record.getMessage() for record in caplog.records)
    assert summary["not_scored"] == {}
    assert [r["clip_status"] for r in rows] == ["scored"] * 12
    np.testing.assert_allclose(_similarities(rows), _similarities(uncapped), atol=1e-4)


def test_an_image_that_alone_does_not_fit_the_device_decode_is_decoded_on_the_cpu_and_scored(tmp_path, memory_cap):
    # 224 pixels decode to 150 KB, more than the cap by themselves; the 64-pixel ones fit.
    unit = _shard(DataRoot(str(tmp_path / "data")), [64] * 5 + [224] + [64] * 6)
    _, on_the_cpu = _scored(unit, "pil")
    memory_cap()

    summary, rows = _scored(unit, "torch")

    assert [r["clip_status"] for r in rows] == ["scored"] * 12
    assert summary["device_memory"]["decoded_on_cpu"] == 1
    np.testing.assert_allclose(rows[5]["similarity"], on_the_cpu[5]["similarity"], atol=1e-4)


def test_when_no_image_alone_fits_the_device_decode_every_row_is_decoded_on_the_cpu_and_scored(tmp_path, memory_cap):
    unit = _shard(DataRoot(str(tmp_path / "data")), [224] * 12)
    _, on_the_cpu = _scored(unit, "pil")
    refused = memory_cap()

    summary, rows = _scored(unit, "torch")

    assert refused.count(3 * 224 * 224) >= 12, "every image alone should have been refused on the device"
    assert summary["not_scored"] == {}
    assert [r["clip_status"] for r in rows] == ["scored"] * 12
    assert summary["device_memory"]["decoded_on_cpu"] == 12
    np.testing.assert_allclose(_similarities(rows), _similarities(on_the_cpu), atol=1e-4)


def test_an_image_neither_the_device_nor_the_cpu_can_hold_is_recorded_as_too_large(tmp_path, memory_cap, monkeypatch):
    unit = _shard(DataRoot(str(tmp_path / "data")), [64] * 5 + [224] + [64] * 6)
    memory_cap()
    # PIL's own limit on pixels per image stands in for the host's memory: 224 x 224 is over it, 64 x 64 not.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 224 * 224 // 4)

    summary, rows = _scored(unit, "torch")

    assert rows[5]["clip_status"] == "image_too_large"
    assert "DecompressionBombError" in rows[5]["clip_error"] and rows[5]["similarity"] is None
    assert [r["clip_status"] for i, r in enumerate(rows) if i != 5] == ["scored"] * 11
    assert summary["not_scored"] == {"image_too_large": 1}


def test_a_huge_picture_does_not_leave_the_rest_of_the_shard_decoding_one_image_at_a_time(tmp_path, memory_cap):
    # Under the cap two 64-pixel images fit a decode and resize; bisecting to the 224-pixel one fits 1.
    unit = _shard(DataRoot(str(tmp_path / "data")), [64] * 5 + [224] + [64] * 26)
    memory_cap()

    summary, rows = _scored(unit, "torch", batch_size=16, prefetch_batches=0)  # one batch decoding at a time

    assert load_clip(ClipScorer.tiny().settings().models["en"], "cpu", "fp32").max_decode_batch == 2
    assert [r["clip_status"] for r in rows] == ["scored"] * 32
    assert summary["device_memory"]["oom_alone"] == 1


def test_a_shard_with_many_out_of_memory_events_logs_a_few_of_them_and_one_summary_line(tmp_path, memory_cap, caplog):
    unit = _shard(DataRoot(str(tmp_path / "data")), [224] * 12)
    memory_cap()

    with caplog.at_level(logging.WARNING):
        summary, _ = _scored(unit, "torch")

    ours = ("cah_resources.clip_pairs", "cah_resources.batching")
    logged = [r.getMessage() for r in caplog.records if r.name.startswith(ours)]
    assert len(logged) == OOM_WARNINGS_PER_SHARD + 1
    assert "12 of them decoded on the CPU" in logged[-1]
    assert summary["device_memory"]["oom_halvings"] + summary["device_memory"]["oom_alone"] > len(logged)


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_at_most_prefetch_batches_plus_one_decoded_batches_wait_on_the_device(tmp_path, monkeypatch, prefetch_batches):
    # Eight decode threads and batches of two: the host side may queue five batches ahead.
    unit = _shard(DataRoot(str(tmp_path / "data")), [64] * 24)
    # Watched from outside the stage: each batch is one torchvision decode and one open_clip image
    # encode. When a decode starts, the batches decoded and not yet encoded are at most those held.
    model = load_clip(ClipScorer.tiny().settings().models["en"], "cpu", "fp32").model
    decode_jpeg, encode_image = torchvision.io.decode_jpeg, model.encode_image
    lock, decoded, encoded, waiting = threading.Lock(), [0], [0], []

    def counted_decode(*args: Any, **kwargs: Any) -> Any:
        with lock:
            decoded[0] += 1
            waiting.append(decoded[0] - encoded[0])
        return decode_jpeg(*args, **kwargs)

    def counted_encode(*args: Any, **kwargs: Any) -> Any:
        result = encode_image(*args, **kwargs)
        with lock:
            encoded[0] += 1
        return result

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counted_decode)
    monkeypatch.setattr(model, "encode_image", counted_encode)

    summary, rows = _scored(unit, "torch", batch_size=2, decode_workers=8, prefetch_batches=prefetch_batches)

    assert [r["clip_status"] for r in rows] == ["scored"] * 24
    assert decoded[0] == encoded[0] == 12
    assert max(waiting) <= prefetch_batches + 1
    assert summary["device_memory"]["prepared_on_device_peak"] >= max(waiting)
