"""CLIP's BPE tokenizer in Rust (the ``tokenizers`` package): open_clip's ids without holding the interpreter lock."""

from __future__ import annotations

import gzip
import html
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# open_clip's SimpleTokenizer: its vocabulary starts with the 256 byte symbols, then the same with
# the end-of-word suffix, then one entry per merge; the merges file's first line is a header and
# only the first 49152 - 256 - 2 merges are used, which leaves room for the two special tokens.
END_OF_WORD = "</w>"
START_OF_TEXT, END_OF_TEXT = "<start_of_text>", "<end_of_text>"
_MERGES_USED = 49152 - 256 - 2
# open_clip's pre-tokenizer pattern (after its special tokens), applied to cleaned, lower-cased text.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Text that open_clip's cleaning (ftfy.fix_text, html.unescape twice) leaves as it is: printable
# ASCII, tab and line breaks, no '&'; and no special token, which open_clip's pattern finds only where
# a word may start (not in "\\<end_of_text>"), unlike Rust's added tokens. Only that text goes through
# the Rust normalizer and pre-tokenizer; the rest is cleaned by ftfy and split by open_clip's own
# pattern in Python, and only its BPE runs in Rust: the Rust regex engine's Unicode tables differ from
# the ``regex`` module's on recently assigned characters (a fuzz over 20,000 random captions found 32
# such differences, none left so).
_NEEDS_PYTHON = re.compile(r"[^\t\n\r\x20-\x25\x27-\x7e]|<(?:start|end)_of_text>", re.IGNORECASE)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters, which CLIP's vocabulary is written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_clip_bpe(bpe_path: str, context_length: int = 77, *, pre_split: bool = False) -> Any:
    """A ``tokenizers.Tokenizer`` giving open_clip's ids: sot + BPE + eot, truncated and padded to the context.

    By default it normalizes and splits raw text itself (exact for text ``_NEEDS_PYTHON`` lets through);
    with ``pre_split`` it takes words already cleaned and split (``encode_batch(..., is_pretokenized=True)``).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : _MERGES_USED + 1]
    merges = [(first, second) for first, second in (line.split() for line in lines)]
    symbols = list(_bytes_to_unicode().values())
    vocab = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(m) for m in merges), START_OF_TEXT, END_OF_TEXT]
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, end_of_word_suffix=END_OF_WORD, fuse_unk=False))
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if not pre_split:
        # open_clip's whitespace_clean and lower(), then its pattern, keeping the matches only.
        tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        split = pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, to_bytes])
    else:
        tokenizer.pre_tokenizer = to_bytes
        # open_clip's pattern keeps its special tokens whole (after lower-casing): single ids.
        specials = [AddedToken(t, normalized=True, special=True) for t in (START_OF_TEXT, END_OF_TEXT)]
        tokenizer.add_special_tokens(specials)
    tokenizer.decoder = decoders.ByteLevel()
    sot, eot = ids[START_OF_TEXT], ids[END_OF_TEXT]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_OF_TEXT} $A {END_OF_TEXT}", special_tokens=[(START_OF_TEXT, sot), (END_OF_TEXT, eot)]
    )
    # Truncation leaves room for the two special tokens: sot + the first 75 + eot, as open_clip's
    # "cut at 77 and make the last one eot" does.
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=0, pad_token="!")
    return tokenizer


def clean_for_bpe(text: str) -> str:
    """open_clip's cleaning: ftfy, html.unescape twice, whitespace collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipBpeTokenizer:
    """Drop-in for open_clip's ``SimpleTokenizer`` call: texts to a (B, context_length) LongTensor of the same ids.

    The BPE runs in Rust with the interpreter lock released, so pool threads tokenizing beside the
    model no longer queue on it. Captions of printable ASCII (most of the English web's) are normalized
    and split in Rust too; the others are cleaned by ftfy and split by open_clip's pattern in Python first.
    """

    def __init__(self, bpe_path: str, context_length: int = 77) -> None:
        import regex

        self.context_length = context_length
        self.rust = build_clip_bpe(bpe_path, context_length)
        self.rust_words = build_clip_bpe(bpe_path, context_length, pre_split=True)
        self.sot_token_id = self.rust.token_to_id(START_OF_TEXT)
        self.eot_token_id = self.rust.token_to_id(END_OF_TEXT)
        self._words = regex.compile(f"{START_OF_TEXT}|{END_OF_TEXT}|{_WORDS}", regex.IGNORECASE)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length not in (None, self.context_length):
            raise ValueError(f"this tokenizer was built for context length {self.context_length}, not {context_length}")
        ids = np.zeros((len(texts), self.context_length), dtype=np.int64)
        plain: list[int] = []
        other: list[int] = []
        for i, text in enumerate(texts):
            (other if _NEEDS_PYTHON.search(text) else plain).append(i)
        if plain:
            ids[plain] = [e.ids for e in self.rust.encode_batch([texts[i] for i in plain])]
        if other:
            words = [self._words.findall(clean_for_bpe(texts[i])) for i in other]
            ids[other] = [e.ids for e in self.rust_words.encode_batch(words, is_pretokenized=True)]
        return torch.from_numpy(ids)


def rust_twin(tokenizer: Any) -> Any:
    """The Rust twin of an open_clip tokenizer when it is CLIP's plain BPE; otherwise the tokenizer itself.

    Plain means open_clip's own vocabulary, lower-case cleaning, no extra special tokens, no reduction;
    anything else (an HF tokenizer, already Rust; a SigLIP one; a custom vocabulary) is kept as it is.
    """
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower, default_bpe

    if type(tokenizer) is not SimpleTokenizer:
        return tokenizer
    plain = (
        tokenizer.clean_fn is _clean_lower
        and tokenizer.reduction_fn is None
        and tokenizer.vocab_size == 49408
        and tokenizer.all_special_ids == [49406, 49407]
    )
    if not plain:
        return tokenizer
    return ClipBpeTokenizer(default_bpe(), tokenizer.context_length)
