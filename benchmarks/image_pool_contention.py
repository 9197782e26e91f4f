"""Pillow's CPU per image in a pool running alone, and beside busy processes (the pipeline's case).

    .venv/bin/python benchmarks/image_pool_contention.py --images 2000 --rounds 2

The floor of ``image_shards_bench.py`` runs its ``process_image`` pool alone, after the fetch;
in image_shards the image workers share the two cores with the shard loops, the fake web and its
DNS server the whole time. This measures what that sharing alone costs: the same bodies (the fake
web's photo kinds in ``WEB_MIX`` proportions, web-photo sizes) through a 2-process pool at the
image workers' niceness, alone, then beside two processes spinning in Python, then beside two
streaming through a 64 MB array (cache pressure). Printed: the pool's CPU per image in each case,
the first as the reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cah_resources.freed_memory import keep_freed_memory
from cah_resources.image_shards.image_pool import IMAGE_WORKER_NICENESS
from cah_resources.image_shards.resizer import ResizeSettings, process_image
from cah_resources.samples.local_web import WEB_MIX, WEB_PHOTO_SIZES, LocalImageWeb

SETTINGS = ResizeSettings(resize_mode="border", image_size=256, max_aspect_ratio=10)
PHOTO_KINDS = ("jpeg", "png", "png_alpha", "webp")


def _niced() -> None:
    os.nice(IMAGE_WORKER_NICENESS)
    keep_freed_memory()  # as the image workers do


def _check(body: bytes) -> bool:
    return process_image(body, SETTINGS).status == "ok"


def _busy(stop, kind: str) -> None:
    if kind == "python":
        total = 0
        while not stop.is_set():
            for i in range(10_000):
                total += i
    else:
        import numpy as np

        array = np.zeros(8_000_000)  # 64 MB: more than the caches hold
        while not stop.is_set():
            array += 1.0


def pool_cpu(bodies: list[bytes], beside: str) -> tuple[int, float, float]:
    """(images ok, the pool's CPU seconds, wall seconds) with two ``beside`` processes busy, or none."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    busy = [context.Process(target=_busy, args=(stop, beside)) for _ in range(2 if beside != "none" else 0)]
    for process in busy:
        process.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # busy processes are reaped after: not counted
    started = time.perf_counter()
    with context.Pool(2, initializer=_niced) as pool:
        ok = sum(pool.imap_unordered(_check, bodies, chunksize=32))
        pool.close()
        pool.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop.set()
    for process in busy:
        process.join()
    return ok, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    weights = [WEB_MIX[kind] for kind in PHOTO_KINDS]
    rng = random.Random(0)
    with LocalImageWeb(n_hosts=1, image_sizes=WEB_PHOTO_SIZES) as web:
        kinds = rng.choices(PHOTO_KINDS, weights=weights, k=args.images)
        bodies = [web.body(kind, rng.randrange(1000)) for kind in kinds]
    print(f"{len(bodies)} bodies, {sum(map(len, bodies)) / len(bodies) / 1000:.0f} KB mean", flush=True)
    for round_ in range(args.rounds):
        reference = None
        for beside in ("none", "python", "memory"):
            ok, cpu, wall = pool_cpu(bodies, beside)
            per_image = 1000 * cpu / len(bodies)
            reference = reference or per_image
            print(
                f"  round {round_ + 1} beside {beside:6s} {per_image:5.2f} ms of pool CPU per image "
                f"({per_image / reference:.2f}x alone; {ok} ok, {wall:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
