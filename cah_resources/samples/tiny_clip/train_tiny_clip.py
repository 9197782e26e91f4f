"""Trains the tiny CLIP shipped with cah on generated coloured-shape pictures and their captions.

Run ``python -m cah_resources.samples.tiny_clip.train_tiny_clip`` to reproduce ``cah-tiny-clip.safetensors``
(seeded; a few minutes on one CPU core). The model is a custom small open_clip config registered
with ``open_clip.add_model_config`` and built by ``create_model_and_transforms``, the path a user's
own checkpoint takes. Captions come in English, German, French, Spanish and Russian.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from cah_resources.samples.tiny_clip import TINY_CLIP_CHECKPOINT, TINY_CLIP_CONFIG, TINY_CLIP_NAME, TINY_CLIP_THRESHOLDS
from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, LANGUAGES, captions, draw, jpeg_bytes

# Every step shows each image every shape's captions (random templates and languages), so the
# hardest wrong caption (same colour or same shape) is always in view. The loss pulls the right
# captions above POSITIVE_FLOOR and the nearest wrong one below NEGATIVE_CEILING, so LAION's
# thresholds (0.26 / 0.28) fall in the gap between them.
POSITIVE_FLOOR = 0.55
NEGATIVE_CEILING = 0.05
CONTRASTIVE_SCALE = 20.0
CAPTIONS_PER_SHAPE_PER_STEP = 2


def _pictures(n: int, seed: int, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated pictures, JPEG round-tripped like stage 2's, and the index of what each shows."""
    rng = random.Random(seed)
    pixels, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(ALL_SHAPES))
        picture = draw(ALL_SHAPES[label], rng, size=rng.choice((48, 64, 96)))
        pixels.append(preprocess(Image.open(io.BytesIO(jpeg_bytes(picture))).convert("RGB")))
        labels.append(label)
    return torch.stack(pixels), torch.tensor(labels)


def _caption_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of every caption of every shape [shapes, captions, context], and sampling weights.

    Weights make each language equally likely whatever its number of templates.
    """
    texts, weights = [], []
    for item in ALL_SHAPES:
        row, row_weights = [], []
        for language in LANGUAGES:
            options = captions(item, language)
            row += options
            row_weights += [1.0 / (len(LANGUAGES) * len(options))] * len(options)
        texts.append(row)
        weights.append(row_weights)
    flat = tokenizer([t for row in texts for t in row])
    return flat.view(len(ALL_SHAPES), len(texts[0]), -1), torch.tensor(weights[0])


def _loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor, text_labels: torch.Tensor
) -> torch.Tensor:
    cosine = image_emb @ text_emb.T
    same = labels[:, None] == text_labels[None, :]
    target = same.float() / same.sum(1, keepdim=True)
    contrastive = torch.sum(-target * F.log_softmax(CONTRASTIVE_SCALE * cosine, 1), 1).mean()
    weakest_right = torch.where(same, cosine, torch.full_like(cosine, 2.0)).min(1).values
    strongest_wrong = torch.where(same, torch.full_like(cosine, -2.0), cosine).max(1).values
    calibration = F.relu(POSITIVE_FLOOR - weakest_right).mean() + F.relu(strongest_wrong - NEGATIVE_CEILING).mean()
    return contrastive + calibration


def train(out: Path, *, seed: int = 0, steps: int = 800, batch_size: int = 128, pictures: int = 8000) -> None:
    torch.manual_seed(seed)
    open_clip.add_model_config(TINY_CLIP_CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    started = time.perf_counter()
    pixels, labels = _pictures(pictures, seed, preprocess)
    tokens, weights = _caption_table(tokenizer)
    print(f"generated {len(pixels)} pictures in {time.perf_counter() - started:.1f}s")

    # The random token table stays as initialised (distinct vectors are all the tiny vocabulary
    # needs); training it would cost most of each step on 49k rows the captions never use.
    model.token_embedding.weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    text_labels = torch.arange(len(ALL_SHAPES)).repeat_interleave(CAPTIONS_PER_SHAPE_PER_STEP)
    model.train()
    for step in range(steps):
        rows = torch.randint(len(pixels), (batch_size,), generator=generator)
        which = torch.multinomial(weights, len(text_labels), replacement=True, generator=generator)
        image_emb = model.encode_image(pixels[rows], normalize=True)
        text_emb = model.encode_text(tokens[text_labels, which], normalize=True)
        loss = _loss(image_emb, text_emb, labels[rows], text_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")

    model.eval()
    report_held_out(model, tokenizer, preprocess, seed + 1)
    # fp16 halves the file; loading copies the values back into the fp32 parameters.
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


@torch.inference_mode()
def report_held_out(model, tokenizer, preprocess, seed: int, n: int = 480) -> None:
    """Per language: how often a fresh picture's caption passes the threshold and a wrong one fails."""
    pixels, labels = _pictures(n, seed, preprocess)
    image_emb = model.encode_image(pixels, normalize=True)
    rng = random.Random(seed)
    for language in LANGUAGES:
        wrong_labels = [(i + rng.randrange(1, len(ALL_SHAPES))) % len(ALL_SHAPES) for i in labels.tolist()]
        right = [rng.choice(captions(ALL_SHAPES[i], language)) for i in labels.tolist()]
        wrong = [rng.choice(captions(ALL_SHAPES[i], language)) for i in wrong_labels]
        pos = (image_emb * model.encode_text(tokenizer(right), normalize=True)).sum(1)
        neg = (image_emb * model.encode_text(tokenizer(wrong), normalize=True)).sum(1)
        threshold = TINY_CLIP_THRESHOLDS["en" if language == "en" else "multi"]
        print(
            f"held-out {language}: matching >= {threshold}: {(pos >= threshold).float().mean():.3f}, "
            f"mismatched < {threshold}: {(neg < threshold).float().mean():.3f} "
            f"(mean cosine {pos.mean():.2f} vs {neg.mean():.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_CLIP_CHECKPOINT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    # One thread: on a shared machine, OpenMP threads spinning against other processes are
    # slower than one that doesn't.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
