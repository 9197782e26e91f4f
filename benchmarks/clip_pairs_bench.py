"""Speed of the clip_pairs stage: tar shards to scored parquet, beside the model-only forward rate.

    .venv/bin/python benchmarks/clip_pairs_bench.py                          # CPU: ViT-B-32, 192 images x 7 rounds
    .venv/bin/python benchmarks/clip_pairs_bench.py --images 40000 --batch-size 256 --device cuda

The model is ViT-B-32 with random weights (the cost of a forward pass does not depend on the
weights, and nothing is downloaded). Images are 256-pixel JPEGs like stage 2 writes; captions are
alt-text-like sentences of 3 to 25 words.

Two contenders run in one process, interleaved round by round, after a warm-up:

* model-only: ``LoadedClip.embed`` on batches already decoded, resized and tokenized in memory:
  what the model alone costs, the ceiling of the stage;
* end-to-end: ``score_image_shard`` on the shards: tar streaming, JPEG decode and resize in the
  prefetching pool, tokenization, the same model calls, NSFW/watermark tags, parquet + marker writes.

The figure is the best round's end-to-end images/s over the best round's model-only images/s
(wall time, since overlapping decode with the model is the point; the best round is the one least
disturbed by other work on a shared machine). Beside it: the median of per-round ratios, and the
same ratio in images per CPU second of the process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import torch

from cah_resources.clip_pairs.clip_scorer import load_clip
from cah_resources.clip_pairs.settings import ClipModelSpec, ScoringSettings
from cah_resources.clip_pairs.stage import ClipPairsUnit, score_image_shard
from cah_resources.contract import CATEGORIES
from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, ShardSample, draw, jpeg_bytes, write_image_shard
from cah_resources.storage import DataRoot

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "clip_pairs"
SEGMENT = "CC-MAIN-BENCH_00000"
WORDS = (
    "photo of the new red house garden kitchen with modern design and wooden table woman man smiling dog "
    "running beach sunset city street night view mountain lake summer dress shoes black leather bag vintage "
    "car engine product image front cover book author wedding party team players stadium football match"
).split()


def make_shards(root: DataRoot, images: int, shard_size: int, seed: int = 0) -> list[ClipPairsUnit]:
    rng = random.Random(seed)
    units = []
    for shard in range(0, (images + shard_size - 1) // shard_size):
        samples = []
        for _ in range(min(shard_size, images - shard * shard_size)):
            picture = draw(rng.choice(ALL_SHAPES), rng, size=256)
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))
            samples.append(ShardSample(text, jpeg_bytes(picture, quality=95), "en", "en"))
        write_image_shard(root, SEGMENT, shard, samples)
        units.append(ClipPairsUnit(root, SEGMENT, shard))
    return units


def model_only(settings: ScoringSettings, units: list[ClipPairsUnit], plain: bool = False) -> tuple[float, float, int]:
    """Seconds (wall, CPU) of the model alone on the shards' pairs, prepared beforehand.

    ``plain``: open_clip's own ``encode_image`` + ``encode_text`` over the whole 77-token context,
    for comparison with the stage's encoding of the used positions only.
    """
    loaded = load_clip(settings.models["en"], settings.device, settings.precision)
    batches = []
    for unit in units:
        table = unit.root.read_parquet(unit.inputs["parquet"])
        with unit.root.fs.open(unit.inputs["tar"], "rb") as handle, tarfile.open(fileobj=handle) as tar:
            jpegs = {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}
        keys, texts = table.column("key").to_pylist(), table.column("text").to_pylist()
        for lo in range(0, len(keys), settings.batch_size):
            pixels = torch.stack([loaded.preprocess_jpeg(jpegs[k]) for k in keys[lo : lo + settings.batch_size]])
            batches.append((pixels, loaded.tokenize(texts[lo : lo + settings.batch_size])))
    count = sum(len(p) for p, _ in batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for pixels, tokens in batches:
        if plain:
            with torch.inference_mode():
                image_emb = loaded.model.encode_image(pixels.to(loaded.device, loaded.input_dtype), normalize=True)
                text_emb = loaded.model.encode_text(tokens.to(loaded.device), normalize=True)
        else:
            image_emb, text_emb = loaded.embed(pixels, tokens)
        (image_emb * text_emb).sum(-1).cpu()
    if loaded.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, count


def end_to_end(settings: ScoringSettings, units: list[ClipPairsUnit]) -> tuple[float, float, int]:
    """Seconds (wall, CPU) of score_image_shard over every shard, outputs written from scratch."""
    root = units[0].root
    root.remove(root.path("clip_pairs"))
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(sum(score_image_shard(unit, settings)["scored"].values()) for unit in units)
    return time.perf_counter() - wall, time.process_time() - cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--prefetch-batches", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    # Many short rounds: on a shared machine the load drifts less within a round.
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--decode", default="auto", help="auto (torch on CUDA, PIL elsewhere), pil or torch")
    args = parser.parse_args()

    spec = ClipModelSpec("ViT-B-32")
    settings = ScoringSettings(
        models={c: spec for c in CATEGORIES},
        thresholds={c: 0.28 for c in CATEGORIES},
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        prefetch_batches=args.prefetch_batches,
        decode=args.decode,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    root = DataRoot(str(WORK))
    started = time.perf_counter()
    units = make_shards(root, args.images, args.shard_size)
    loaded = load_clip(spec, args.device, args.precision)
    print(
        f"{args.images} images in {len(units)} shard(s), made in {time.perf_counter() - started:.1f}s; "
        f"ViT-B-32 (random weights) on {loaded.device} ({loaded.precision}), batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, decode workers {args.decode_workers}"
    )
    warm = make_shards(DataRoot(str(WORK / "warm")), min(args.images, 2 * args.batch_size), args.shard_size, seed=1)
    end_to_end(settings, warm)
    model_only(settings, warm)

    ratios, cpu_ratios, model_rates, stage_rates = [], [], [], []
    for round_ in range(args.rounds):
        m_wall, m_cpu, m_n = model_only(settings, units)
        e_wall, e_cpu, e_n = end_to_end(settings, units)
        assert m_n == e_n == args.images, (m_n, e_n)
        model_rates.append(m_n / m_wall)
        stage_rates.append(e_n / e_wall)
        ratios.append((e_n / e_wall) / (m_n / m_wall))
        cpu_ratios.append((e_n / e_cpu) / (m_n / m_cpu))
        print(
            f"round {round_ + 1}: model-only {m_n / m_wall:8.1f} images/s ({m_n / m_cpu:6.1f}/CPU-s)   "
            f"end-to-end {e_n / e_wall:8.1f} images/s ({e_n / e_cpu:6.1f}/CPU-s)   ratio {ratios[-1]:.3f}"
        )
    p_wall, _, p_n = model_only(settings, units, plain=True)
    print(f"for comparison, open_clip encode_image + encode_text on the full context: {p_n / p_wall:.1f} images/s")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(
        f"clip_pairs end-to-end / model-only, best round of each (wall): {max(stage_rates):.1f} / "
        f"{max(model_rates):.1f} images/s = {max(stage_rates) / max(model_rates):.3f}   "
        f"[median of per-round ratios {statistics.median(ratios):.3f}; "
        f"per CPU second {statistics.median(cpu_ratios):.3f}]"
    )


if __name__ == "__main__":
    main()
