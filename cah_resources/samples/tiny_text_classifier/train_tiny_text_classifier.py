"""Trains the tiny educational-value classifier shipped with cah on generated pages in four languages.

Run ``python -m cah_resources.samples.tiny_text_classifier.train_tiny_text_classifier`` to reproduce
``checkpoint/`` (seeded; a few minutes on one CPU core). Made the way FineWeb-Edu's classifier is
shaped, only smaller: a WordPiece tokenizer trained here (``tokenizers``), a 2-layer BERT encoder
(``transformers.BertConfig``) and a regression head (``num_labels=1``, ``problem_type="regression"``)
predicting the page's 0-5 value, saved with ``save_pretrained`` (safetensors) beside the tokenizer.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from cah_resources.samples.tiny_text_classifier import TINY_TEXT_CLASSIFIER
from cah_resources.samples.tiny_text_classifier.texts import LANGUAGES, MAX_SCORE, page, pages

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 2000
MAX_POSITIONS = 512  # FineWeb-Edu's max_length: pages past it are truncated, as there
LONG_SHARE = 0.1  # steps on long pages (20-45 sentences, up to past 512 tokens), in batches of their own
LONG_BATCH = 8


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer (lower-cased, accents kept) learnt on the generated pages."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MAX_POSITIONS,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(vocab_size: int) -> BertConfig:
    # num_labels, problem_type and the label maps reach PretrainedConfig through **kwargs (untyped there).
    return BertConfig(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=1,
        problem_type="regression",
        id2label={0: "educational_value"},
        label2id={"educational_value": 0},
    )


def _examples(n: int, seed: int, sentences: tuple[int, int]) -> list:
    """Training pages: every value from 0 to 5, every language, ``sentences`` long."""
    rng = random.Random(seed)
    return [page(rng, rng.choice(LANGUAGES), rng.randint(*sentences), rng.random(), i) for i in range(n)]


def train(out: Path, *, seed: int = 0, steps: int = 400, batch_size: int = 32, examples: int = 6000) -> None:
    torch.manual_seed(seed)
    started = time.perf_counter()
    short, long = _examples(examples, seed, (1, 10)), _examples(examples // 10, seed + 7, (20, 45))
    tokenizer = train_tokenizer([p.text for p in short + long])
    model = BertForSequenceClassification(tiny_config(len(tokenizer)))
    sets = []
    for data in (short, long):
        encoded = tokenizer([p.text for p in data], truncation=True, max_length=MAX_POSITIONS)["input_ids"]
        sets.append((encoded, torch.tensor([p.value for p in data])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        is_long = torch.rand((), generator=generator).item() < LONG_SHARE
        encoded, targets = sets[is_long]
        rows = torch.randint(len(encoded), (LONG_BATCH if is_long else batch_size,), generator=generator).tolist()
        batch = tokenizer.pad({"input_ids": [encoded[r] for r in rows]}, return_tensors="pt")
        loss = model(**batch, labels=targets[rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    model.eval()
    report_held_out(model, tokenizer, seed + 1)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)  # config.json + model.safetensors
    tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


@torch.inference_mode()
def report_held_out(model, tokenizer, seed: int, n: int = 800) -> None:
    """Per language: mean absolute error, and how often a page is kept at 3 exactly when its value is >= 3."""
    held_out = pages(n, seed)
    for language in LANGUAGES:
        mine = [p for p in held_out if p.language == language]
        batch = tokenizer([p.text for p in mine], truncation=True, max_length=MAX_POSITIONS, padding=True,
                          return_tensors="pt")  # fmt: skip
        scores = model(**batch).logits[:, 0]
        values = torch.tensor([p.value for p in mine])
        agree = ((scores >= 3) == (values >= 3)).float().mean()
        print(
            f"held-out {language}: MAE {(scores - values).abs().mean():.2f} of {MAX_SCORE:.0f}, keep agrees {agree:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_TEXT_CLASSIFIER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
