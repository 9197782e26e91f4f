"""CLIP scoring: the shipped tiny model, LAION's defaults, exact short-text encoding, OOM halving, tags."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cah_assets.resources import ClipScorer
from cah_resources.batching import GROW_AFTER_FITS, OOM_WARNINGS_PER_SHARD, OomTally, map_halving_on_oom
from cah_resources.clip_pairs.clip_scorer import (
    encode_text,
    load_clip,
    nsfw_tags,
    resolve_device,
    resolve_precision,
    trim_padding,
    watermark_scores,
)
from cah_resources.clip_pairs.settings import ClipModelSpec, ScoringSettings
from cah_resources.samples.tiny_clip import TINY_CLIP_CHECKPOINT
from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, LANGUAGES, captions, sample_pairs


@pytest.fixture(scope="module")
def tiny():
    return load_clip(ClipScorer.tiny().settings().models["en"], "cpu", "fp32")


def _cosines(loaded, images: list[bytes], texts: list[str]) -> np.ndarray:
    pixels = torch.stack([loaded.preprocess_jpeg(data) for data in images])
    image_emb, text_emb = loaded.embed(pixels, loaded.tokenize(texts))
    return (image_emb * text_emb).sum(-1).numpy()


@pytest.mark.parametrize("language", LANGUAGES)
def test_tiny_clip_passes_matching_and_fails_mismatched_captions_on_held_out_pictures(tiny, language):
    settings = ClipScorer.tiny().settings()
    threshold = settings.thresholds["en" if language == "en" else "multi"]
    rng = random.Random(f"held-out-{language}")
    pairs = sample_pairs(120, seed=rng.randrange(10**9))
    right = [rng.choice(captions(item, language)) for item, *_ in pairs]
    wrong = [rng.choice(captions(rng.choice([s for s in ALL_SHAPES if s != item]), language)) for item, *_ in pairs]
    images = [jpeg for *_, jpeg in pairs]

    passes = _cosines(tiny, images, right) >= threshold
    fails = _cosines(tiny, images, wrong) < threshold

    assert passes.mean() >= 0.9 and fails.mean() >= 0.9, (passes.mean(), fails.mean())


def test_tiny_clip_checkpoint_is_small_enough_to_ship():
    assert TINY_CLIP_CHECKPOINT.stat().st_size <= 5_000_000


def test_default_scorer_uses_laion5b_models_and_thresholds():
    settings = ClipScorer().settings()

    assert (settings.models["en"], settings.thresholds["en"]) == (ClipModelSpec("ViT-B-32", "openai"), 0.28)
    assert (settings.models["nolang"], settings.thresholds["nolang"]) == (ClipModelSpec("ViT-B-32", "openai"), 0.28)
    assert settings.models["multi"] == ClipModelSpec("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")
    assert settings.thresholds["multi"] == 0.26
    assert (settings.device, settings.precision) == ("auto", "auto")


def test_model_is_loaded_once_per_process(tiny):
    assert load_clip(ClipScorer.tiny().settings().models["multi"], "cpu", "fp32") is tiny


@pytest.mark.parametrize("which", ["tiny", "ViT-B-32"])
def test_text_encoding_on_used_positions_equals_open_clip_encode_text(tiny, which):
    loaded = tiny if which == "tiny" else load_clip(ClipModelSpec("ViT-B-32"), "cpu", "fp32")
    texts = ["a red circle", "Ein Bild mit einem Stern in der Farbe orange auf weißem Hintergrund", "x", ""]
    tokens = loaded.tokenize(texts)

    with torch.inference_mode():
        reference = loaded.model.encode_text(tokens)
        trimmed = encode_text(loaded.model, trim_padding(tokens, loaded.pad_id))

    assert trim_padding(tokens, loaded.pad_id).shape[1] < tokens.shape[1]
    torch.testing.assert_close(trimmed, reference, atol=1e-4, rtol=1e-4)


def test_out_of_memory_halves_the_batch_and_later_batches_start_at_the_size_that_fit(tiny):
    calls = []

    def run(lo, hi):
        calls.append(hi - lo)
        if hi - lo > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(lo, hi))

    tiny.max_batch = None
    try:
        first = map_halving_on_oom(run, 10, tiny)
        calls.clear()
        second = map_halving_on_oom(run, 6, tiny)
    finally:
        tiny.max_batch = None

    assert [i for part in first for i in part] == list(range(10))
    assert [i for part in second for i in part] == list(range(6))
    assert calls == [2, 2, 2]


def test_a_single_row_that_runs_out_of_memory_is_raised():
    def run(lo, hi):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        map_halving_on_oom(run, 4)


def test_a_row_that_alone_runs_out_of_memory_goes_to_alone_and_does_not_shrink_later_batches(tiny):
    def run(lo, hi):
        if lo <= 2 < hi:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return list(range(lo, hi))

    tiny.max_batch = None
    try:
        parts = map_halving_on_oom(run, 8, tiny, alone=lambda row, error: ("alone", row, type(error).__name__))
        remembered = tiny.max_batch
    finally:
        tiny.max_batch = None

    assert ("alone", 2, "OutOfMemoryError") in parts
    assert sorted(i for part in parts if part[0] != "alone" for i in part) == [0, 1, 3, 4, 5, 6, 7]
    assert remembered == 2  # the size that fitted, not the single row that did not


def test_the_halvings_toward_a_row_that_alone_runs_out_of_memory_are_not_remembered(tiny):
    # Slices over 16 rows do not fit; row 37 does not fit in any slice. Bisecting to it fits 4 and
    # then 1 row on the way: sizes that say nothing about the batch size.
    def run(lo, hi):
        if hi - lo > 16 or lo <= 37 < hi:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return list(range(lo, hi))

    tiny.max_batch = None
    try:
        parts = map_halving_on_oom(run, 64, tiny, alone=lambda row, error: ("alone", row))
        remembered = tiny.max_batch
    finally:
        tiny.max_batch = None

    assert ("alone", 37) in parts
    assert remembered == 16


def test_a_remembered_batch_size_grows_again_once_slices_in_a_row_fit_at_it(tiny):
    calls = []

    def run(lo, hi):
        calls.append(hi - lo)
        return list(range(lo, hi))

    tiny.max_batch, tiny.fit_streaks = 1, {}  # as left by a moment when the device was full
    try:
        parts = map_halving_on_oom(run, 256, tiny)
        remembered = tiny.max_batch
    finally:
        tiny.max_batch, tiny.fit_streaks = None, {}

    assert [i for part in parts for i in part] == list(range(256))
    assert calls[:GROW_AFTER_FITS] == [1] * GROW_AFTER_FITS
    assert max(calls) > 8 and len(calls) < 100
    assert remembered == max(calls)


def test_out_of_memory_events_are_counted_and_only_the_first_few_logged(caplog):
    tally = OomTally()

    def run(lo, hi):
        if hi - lo > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return lo

    with caplog.at_level(logging.WARNING, logger="cah_resources.batching"):
        for _ in range(10):
            map_halving_on_oom(run, 64, tally=tally)

    assert tally.halvings >= 10 * 6  # 64 rows down to 1, then each try to grow again
    assert len(caplog.records) == OOM_WARNINGS_PER_SHARD


def test_errors_other_than_out_of_memory_are_not_retried():
    calls = []

    def run(lo, hi):
        calls.append((lo, hi))
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        map_halving_on_oom(run, 8)
    assert calls == [(0, 8)]


def _unit(i: int, dim: int = 8) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), dim).float()


def test_nsfw_tag_follows_laion_rule_on_the_two_nearest_prompts():
    safe = torch.stack([_unit(0), _unit(1), _unit(2)])
    nsfw = torch.stack([_unit(3), _unit(4)])
    images = F.normalize(torch.stack([_unit(3) + _unit(4), _unit(0) + _unit(1), _unit(0) + _unit(3)]), dim=-1)

    labels, scores = nsfw_tags(images, safe, nsfw)

    assert labels == ["NSFW", "UNLIKELY", "UNSURE"]
    assert scores[0] > 0.99 and scores[1] < 0.01 and 0.3 < scores[2] < 0.7


def test_watermark_score_is_the_probability_of_the_watermark_prompts():
    watermark = torch.stack([_unit(0), _unit(1)])
    clean = torch.stack([_unit(2), _unit(3)])
    images = F.normalize(torch.stack([_unit(0), _unit(2), _unit(1) + _unit(3)]), dim=-1)

    scores = watermark_scores(images, watermark, clean)

    assert scores[0] > 0.99 and scores[1] < 0.01 and abs(scores[2] - 0.5) < 0.01


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_device_preprocessing_matches_pil_preprocessing(tiny):
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [jpeg for *_, jpeg in sample_pairs(6, seed=3, size=97)]
    on_device = tiny.preprocess_on_device(
        [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8), mode=ImageReadMode.RGB) for j in jpegs]
    )
    with_pil = tiny.normalize(torch.stack([tiny.preprocess_jpeg(j) for j in jpegs]))

    assert on_device.shape == with_pil.shape
    # Different JPEG decoders and resamplers: close, not bit-equal.
    assert (on_device - with_pil).abs().mean() < 0.05


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_device_preprocessing_of_mixed_sizes_keeps_the_order_and_equals_one_image_at_a_time(tiny):
    from torchvision.io import ImageReadMode, decode_jpeg

    sizes = [97, 64, 97, 40, 64, 97, 128]
    jpegs = [sample_pairs(1, seed=i, size=size)[0][-1] for i, size in enumerate(sizes)]
    images = [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8), mode=ImageReadMode.RGB) for j in jpegs]

    together = tiny.preprocess_on_device(images)
    alone = torch.cat([tiny.preprocess_on_device([image]) for image in images])

    assert together.shape == (len(sizes), 3, tiny.image_size, tiny.image_size)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0], together[2])  # different pictures stay apart


def test_preprocessing_in_two_halves_equals_open_clips_own_transform(tiny):
    from PIL import Image

    jpegs = [jpeg for *_, jpeg in sample_pairs(4, seed=5, size=80)]
    split = tiny.normalize(torch.stack([tiny.preprocess_jpeg(j) for j in jpegs]))
    whole = torch.stack([tiny.preprocess(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])

    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)


def test_auto_device_and_precision_fall_back_to_cpu_fp32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") in ("cpu", "mps")
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"


def test_gpu_only_settings_on_cpu_fail_with_one_line_errors():
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_unknown_model_fails_with_one_line_error():
    with pytest.raises(ValueError, match="cannot load CLIP model no-such-model") as error:
        load_clip(ClipModelSpec("no-such-model"), "cpu", "fp32")
    assert "\n" not in str(error.value)


def test_bad_settings_are_refused_with_what_is_allowed():
    settings = ClipScorer.tiny().settings()
    with pytest.raises(ValueError, match="device must be one of"):
        ScoringSettings(settings.models, settings.thresholds, device="tpu")
    with pytest.raises(ValueError, match="categories"):
        ScoringSettings({"en": settings.models["en"]}, settings.thresholds)


def test_only_open_clips_published_weights_have_known_tags():
    from cah_resources.samples.tiny_clip import TINY_CLIP_CHECKPOINT, TINY_CLIP_CONFIG, TINY_CLIP_NAME

    assert ClipModelSpec("ViT-B-32", "openai").tags_known
    assert ClipModelSpec("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k").tags_known
    assert not ClipModelSpec(TINY_CLIP_NAME, str(TINY_CLIP_CHECKPOINT), str(TINY_CLIP_CONFIG)).tags_known
    assert not ClipModelSpec("ViT-B-32", "/models/my-finetune.pt").tags_known
    assert not ClipModelSpec("ViT-B-32", "").tags_known  # random weights
