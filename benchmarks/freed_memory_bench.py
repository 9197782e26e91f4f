"""CPU of clip_pairs' host decode and page_scores' model in a Dask worker's malloc setting: freed memory kept vs not.

    .venv/bin/python benchmarks/freed_memory_bench.py                       # both stages, 3 rounds
    .venv/bin/python benchmarks/freed_memory_bench.py --stage clip_pairs --images 20000 --threads 8

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``; with it glibc maps and
unmaps every buffer over 128 KiB, and touching a fresh mapping faults its pages in one by one.
``score_image_shard`` and ``score_page_file`` keep freed memory for reuse while they score
(``cah_resources.freed_memory``). Each round runs, for each stage, two fresh processes with the
nanny's environment, interleaved: one inside ``freed_memory_kept()`` as the stage runs, the
reference without.

- clip_pairs: ``LoadedClip.preprocess_jpeg`` (the stage's PIL decode, draft, resize and crop to
  ViT-B-32's 224 pixels; random weights) over 256-pixel JPEGs like stage 2 writes, in a pool of
  ``--threads`` threads like ``decode_workers``. Per image.
- page_scores: ``score_texts`` (the stage's windows, tokenization and length-sorted batches)
  with a BERT-base-sized classifier (FineWeb-Edu's is one; random weights, the tiny
  classifier's tokenizer) on ``--pages`` pages of 512 tokens, one torch thread as under the
  nanny. Per page.

Printed: CPU ms and minor page faults per item of each, and the ratio of CPU (best round of each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEPT, AS_IS = "kept", "as is (reference)"
STAGES = ("clip_pairs", "page_scores")


def clip_pairs_work(args: argparse.Namespace) -> tuple[object, object, int]:
    """A warm-up and the measured work of clip_pairs' host decode, and its item count."""
    from concurrent.futures import ThreadPoolExecutor

    from cah_resources.clip_pairs.clip_scorer import load_clip
    from cah_resources.clip_pairs.settings import ClipModelSpec
    from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, draw, jpeg_bytes

    rng = random.Random(0)
    jpegs = [jpeg_bytes(draw(rng.choice(ALL_SHAPES), rng, size=256), quality=95) for _ in range(64)]
    loaded = load_clip(ClipModelSpec("ViT-B-32", ""), "cpu", "fp32")
    pool = ThreadPoolExecutor(args.threads)

    def warm() -> None:
        list(pool.map(loaded.preprocess_jpeg, jpegs))

    def work() -> None:
        list(pool.map(loaded.preprocess_jpeg, (jpegs[i % len(jpegs)] for i in range(args.images))))

    return warm, work, args.images


def page_scores_work(args: argparse.Namespace) -> tuple[object, object, int]:
    """A warm-up and the measured work of page_scores' scoring, and its item count."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from cah_resources.page_scores.classifier import load_classifier, score_texts
    from cah_resources.page_scores.settings import ClassifierSettings
    from cah_resources.samples.tiny_text_classifier import TINY_TEXT_CLASSIFIER
    from cah_resources.samples.tiny_text_classifier.texts import pages

    folder = tempfile.mkdtemp(prefix="bert-base-")
    tokenizer = AutoTokenizer.from_pretrained(TINY_TEXT_CLASSIFIER)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), num_labels=1, problem_type="regression")
    BertForSequenceClassification(config).save_pretrained(folder)
    settings = ClassifierSettings(model=folder, device="cpu", batch_tokens=8 * 512)
    loaded = load_classifier(settings)
    texts = [" ".join(p.text for p in pages(8, seed=i)) for i in range(args.pages)]  # each over 512 tokens

    def warm() -> None:
        score_texts(loaded, settings, texts[:8])

    def work() -> None:
        score_texts(loaded, settings, texts)

    return warm, work, args.pages


def child(stage: str, contender: str, args: argparse.Namespace) -> None:
    from cah_resources.freed_memory import freed_memory_kept

    warm, work, items = (clip_pairs_work if stage == "clip_pairs" else page_scores_work)(args)
    with freed_memory_kept() if contender == KEPT else nullcontext():
        warm()  # type: ignore[operator]
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        work()  # type: ignore[operator]
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        json.dumps(
            {
                "cpu_ms": 1e3 * cpu / items,
                "system_ms": 1e3 * (after.ru_stime - before.ru_stime) / items,
                "faults": (after.ru_minflt - before.ru_minflt) / items,
                "wall_ms": 1e3 * wall / items,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*STAGES, "both"], default="both")
    parser.add_argument("--images", type=int, default=6000, help="clip_pairs: decodes per round")
    parser.add_argument("--threads", type=int, default=4, help="clip_pairs: decode threads")
    parser.add_argument("--pages", type=int, default=24, help="page_scores: pages of 512 tokens per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args)
        return
    import distributed  # noqa: F401  (loads the nanny's defaults into dask's config)
    from dask import config

    nanny = {name: str(value) for name, value in config.get("distributed.nanny.pre-spawn-environ").items()}
    env = {**os.environ, **nanny, "PYTHONPATH": str(REPO)}
    print(f"the nanny's environment: {nanny}", flush=True)
    stages = STAGES if args.stage == "both" else (args.stage,)
    best: dict[tuple[str, str], dict] = {}
    for round_ in range(args.rounds):
        for stage in stages:
            for contender in (KEPT, AS_IS):
                command = [sys.executable, __file__, "--child", stage, contender]
                command += ["--images", str(args.images), "--threads", str(args.threads), "--pages", str(args.pages)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                unit = "image" if stage == "clip_pairs" else "page"
                print(
                    f"  round {round_ + 1} {stage:11s} {contender:18s} {result['cpu_ms']:8.3f} ms CPU per {unit} "
                    f"({result['system_ms']:.3f} of it system), {result['faults']:7.1f} minor faults per {unit}, "
                    f"{result['wall_ms']:.3f} ms wall",
                    flush=True,
                )
                key = (stage, contender)
                if key not in best or result["cpu_ms"] < best[key]["cpu_ms"]:
                    best[key] = result
    print()
    for stage in stages:
        kept, as_is = best[(stage, KEPT)], best[(stage, AS_IS)]
        print(
            f"{stage} under Dask's malloc setting, best rounds: kept {kept['cpu_ms']:.3f} ms CPU per item, "
            f"as is {as_is['cpu_ms']:.3f}: kept / as is = {kept['cpu_ms'] / as_is['cpu_ms']:.2f}; "
            f"faults per item {kept['faults']:.1f} / {as_is['faults']:.1f}"
        )


if __name__ == "__main__":
    main()
