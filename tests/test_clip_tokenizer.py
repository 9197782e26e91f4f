"""The Rust twin of CLIP's BPE gives open_clip's ids, and clip_pairs uses it where the model has that BPE."""

from __future__ import annotations

import json
import random
from pathlib import Path

import open_clip
import pytest
import torch

from cah_assets.resources import ClipScorer
from cah_resources.clip_pairs.clip_scorer import load_clip
from cah_resources.clip_pairs.clip_tokenizer import ClipBpeTokenizer, rust_twin

CORPUS = Path(__file__).parent / "data" / "clip_captions.json"


@pytest.fixture(scope="module")
def open_clip_bpe():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def rust_bpe(open_clip_bpe):
    return rust_twin(open_clip_bpe)


def _differences(expected: torch.Tensor, got: torch.Tensor, texts: list[str]) -> list[str]:
    return [texts[i] for i in range(len(texts)) if not torch.equal(expected[i], got[i])]


def test_rust_bpe_gives_open_clips_ids_for_every_caption_of_the_corpus(open_clip_bpe, rust_bpe):
    # Many scripts, emoji and flags, URLs, HTML entities, mojibake, control characters, odd Unicode
    # spaces, the special tokens inside captions, captions past 77 tokens, empty and blank ones.
    captions = json.loads(CORPUS.read_text())
    assert len(captions) > 150 and "" in captions
    assert any(len(open_clip_bpe.encode(c)) > 75 for c in captions)
    expected, got = open_clip_bpe(captions), rust_bpe(captions)
    assert got.shape == expected.shape == (len(captions), 77) and got.dtype == torch.long
    assert _differences(expected, got, captions) == []


def test_rust_bpe_gives_open_clips_ids_for_random_text_across_scripts(open_clip_bpe, rust_bpe):
    # Random code points (recently assigned ones included, where the two regex engines' Unicode
    # tables disagree) mixed with entities, apostrophe suffixes and special tokens; seeded.
    rng = random.Random(20261206)
    blocks = [(0x20, 0x7E), (0x80, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0xDFF), (0xE00, 0xEFF)]
    blocks += [(0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFB00, 0xFFFD)]
    blocks += [(0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF)]
    extras = [" ", "  ", "\t", "\n", "&amp;", "'s", "'T", "&", "<end_of_text>", "\x1b[0m"]
    texts = []
    for _ in range(600):
        chars = [chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(0, 40))]
        texts.append("".join(c + (rng.choice(extras) if rng.random() < 0.2 else "") for c in chars))
    assert _differences(open_clip_bpe(texts), rust_bpe(texts), texts) == []


def test_a_caption_past_the_context_keeps_its_first_75_tokens_and_ends_with_end_of_text(open_clip_bpe, rust_bpe):
    tokens = rust_bpe(["word " * 200])[0]
    assert tokens[0] == rust_bpe.sot_token_id and tokens[-1] == rust_bpe.eot_token_id
    assert tokens[1:76].tolist() == open_clip_bpe.encode("word " * 75)


def test_an_empty_caption_is_start_and_end_of_text_then_padding(rust_bpe):
    assert rust_bpe([""])[0][:3].tolist() == [rust_bpe.sot_token_id, rust_bpe.eot_token_id, 0]


def test_models_with_clips_bpe_score_with_the_rust_twin_and_open_clips_on_request():
    spec = ClipScorer.tiny().settings().models["en"]
    assert isinstance(load_clip(spec, "cpu", "fp32").tokenizer, ClipBpeTokenizer)
    assert isinstance(load_clip(spec, "cpu", "fp32", "open_clip").tokenizer, open_clip.tokenizer.SimpleTokenizer)


def test_tokenizers_that_are_not_clips_plain_bpe_are_kept_as_they_are():
    lower_case_free = open_clip.tokenizer.SimpleTokenizer(clean="whitespace")
    assert rust_twin(lower_case_free) is lower_case_free
    extra_special = open_clip.tokenizer.SimpleTokenizer(additional_special_tokens=["<mask>"])
    assert rust_twin(extra_special) is extra_special


def test_an_unknown_tokenizer_setting_is_refused_in_one_line():
    with pytest.raises(ValueError, match="clip tokenizer must be one of"):
        ClipScorer.tiny(tokenizer="spacy").settings()
