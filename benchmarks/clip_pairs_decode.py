"""CPU per image of clip_pairs' host decode in a Dask worker's malloc setting: freed memory kept vs not.

    .venv/bin/python benchmarks/clip_pairs_decode.py                 # 6,000 decodes x 3 rounds
    .venv/bin/python benchmarks/clip_pairs_decode.py --images 20000 --threads 8

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``; with it glibc maps and
unmaps every buffer over 128 KiB, and each 256-pixel picture clip_pairs decodes (its pixels, the
resized copy, the tensor) is such a buffer. ``score_image_shard`` keeps freed memory for reuse
while it scores (``cah_resources.freed_memory``). Each round runs two fresh processes with the
nanny's environment, one per contender, interleaved: ``LoadedClip.preprocess_jpeg`` (the stage's
own PIL decode, draft, resize and crop to ViT-B-32's 224 pixels, random weights) over 256-pixel
JPEGs like stage 2 writes, in a pool of ``--threads`` threads like ``decode_workers``; one inside
``freed_memory_kept()`` as the stage runs it, the reference without. Printed: CPU ms and minor page
faults per image of each, and the ratio of CPU per image (best round of each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEPT, AS_IS = "kept", "as is (reference)"


def child(contender: str, images: int, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cah_resources.clip_pairs.clip_scorer import load_clip
    from cah_resources.clip_pairs.settings import ClipModelSpec
    from cah_resources.freed_memory import freed_memory_kept
    from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, draw, jpeg_bytes

    rng = random.Random(0)
    jpegs = [jpeg_bytes(draw(rng.choice(ALL_SHAPES), rng, size=256), quality=95) for _ in range(64)]
    loaded = load_clip(ClipModelSpec("ViT-B-32", ""), "cpu", "fp32")
    with freed_memory_kept() if contender == KEPT else nullcontext(), ThreadPoolExecutor(threads) as pool:
        list(pool.map(loaded.preprocess_jpeg, jpegs))  # warm-up
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        list(pool.map(loaded.preprocess_jpeg, (jpegs[i % len(jpegs)] for i in range(images))))
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        json.dumps(
            {
                "cpu_ms": 1e3 * cpu / images,
                "system_ms": 1e3 * (after.ru_stime - before.ru_stime) / images,
                "faults": (after.ru_minflt - before.ru_minflt) / images,
                "wall_ms": 1e3 * wall / images,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=[KEPT, AS_IS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.threads)
        return
    import distributed  # noqa: F401  (loads the nanny's defaults into dask's config)
    from dask import config

    nanny = {name: str(value) for name, value in config.get("distributed.nanny.pre-spawn-environ").items()}
    env = {**os.environ, **nanny, "PYTHONPATH": str(REPO)}
    print(f"{args.images} decodes in {args.threads} threads per round; the nanny's environment: {nanny}", flush=True)
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for contender in (KEPT, AS_IS):
            command = [sys.executable, __file__, "--child", contender, "--images", str(args.images)]
            command += ["--threads", str(args.threads)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  round {round_ + 1} {contender:18s} {result['cpu_ms']:.3f} ms CPU per image "
                f"({result['system_ms']:.3f} of it system), {result['faults']:.1f} minor faults per image, "
                f"{result['wall_ms']:.3f} ms wall per image",
                flush=True,
            )
            if contender not in best or result["cpu_ms"] < best[contender]["cpu_ms"]:
                best[contender] = result
    kept, as_is = best[KEPT], best[AS_IS]
    print(
        f"\nclip_pairs host decode under Dask's malloc setting, best rounds: kept {kept['cpu_ms']:.3f} ms CPU per "
        f"image, as is {as_is['cpu_ms']:.3f}: kept / as is = {kept['cpu_ms'] / as_is['cpu_ms']:.2f}; "
        f"faults per image {kept['faults']:.1f} / {as_is['faults']:.1f}"
    )


if __name__ == "__main__":
    main()
