"""Speed of clip_pairs on a registered webdataset beside the same images as the pipeline's own shards.

    .venv/bin/python benchmarks/clip_pairs_webdataset_bench.py     # CPU: ViT-B-32, 192 images in 3 tars x 7 rounds
    .venv/bin/python benchmarks/clip_pairs_webdataset_bench.py --images 20000 --shard-size 5000 --batch-size 256

The images are clip_pairs_bench's (256-pixel JPEGs, alt-text-like captions, ViT-B-32 with random
weights). The same tar bytes are scored two ways, in one process, after a warm-up of both:

* own shards: ``score_image_shard`` on image_shards' shards (rows from the shard's parquet, images
  streamed from its tar);
* webdataset: the same tars registered with ``register_dataset(..., "webdataset")`` and scored from
  where they are: samples grouped by key from the stream, caption and img2dataset's json read from
  the tar, language detected, sha256 taken.

On a machine shared with other work a run's rate swings two-fold from one minute to the next, so
the two routes are interleaved tar by tar: each tar is scored by both, back to back (outputs
rewritten from scratch), the order alternating from tar to tar and round to round so that neither
route always meets the other's leftovers or a load that rises or falls. Each such pair gives one
ratio, the webdataset's images/s over the own shards'; the figure is the median of those ratios
(wall time), with the quartiles, the summed rates and the ratio per CPU second of the process beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import torch
from clip_pairs_bench import WORK, make_shards

from cah_resources.clip_pairs.clip_scorer import load_clip
from cah_resources.clip_pairs.settings import ClipModelSpec, ScoringSettings
from cah_resources.clip_pairs.stage import ClipPairsUnit, pending_units, score_image_shard
from cah_resources.contract import CATEGORIES, FORMAT_WEBDATASET
from cah_resources.crawl.segments import register_dataset
from cah_resources.storage import DataRoot

DATASET = "bench-wds"


def webdataset_units(root: DataRoot, own: list[ClipPairsUnit]) -> list[ClipPairsUnit]:
    """The own shards' tars registered as a webdataset, one segment: its clip_pairs units."""
    registration = register_dataset(
        root, DATASET, [unit.inputs["tar"] for unit in own], FORMAT_WEBDATASET, files_per_segment=len(own)
    )
    return pending_units(root, registration.keys()[0])


def timed(settings: ScoringSettings, unit: ClipPairsUnit) -> tuple[float, float, int]:
    """Seconds (wall, CPU) of score_image_shard on one unit, its outputs written from scratch; images scored."""
    if unit.root.exists(unit.marker):
        unit.root.remove(unit.marker)  # without its marker a shard is scored again and every output rewritten
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(score_image_shard(unit, settings)["scored"].values())
    return time.perf_counter() - wall, time.process_time() - cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    spec = ClipModelSpec("ViT-B-32")
    settings = ScoringSettings(
        models={c: spec for c in CATEGORIES},
        thresholds={c: 0.28 for c in CATEGORIES},
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
    )
    work = WORK.parent / "clip_pairs_webdataset"
    shutil.rmtree(work, ignore_errors=True)
    root = DataRoot(str(work))
    own = make_shards(root, args.images, args.shard_size)
    registered = webdataset_units(root, own)
    loaded = load_clip(spec, args.device, args.precision)
    print(
        f"{args.images} images in {len(own)} tar(s); ViT-B-32 (random weights) on {loaded.device} "
        f"({loaded.precision}), batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    warm_root = DataRoot(str(work / "warm"))
    warm = make_shards(warm_root, min(args.images, 2 * args.batch_size), args.shard_size, seed=1)
    for unit in (*warm, *webdataset_units(warm_root, warm)):
        timed(settings, unit)

    ratios, cpu_ratios = [], []
    totals = {"own": [0.0, 0], "webdataset": [0.0, 0]}  # wall seconds, images
    for round_ in range(args.rounds):
        for i, pair in enumerate(zip(own, registered, strict=True)):
            routes = ("own", "webdataset") if (round_ + i) % 2 == 0 else ("webdataset", "own")
            measured = {route: timed(settings, pair[route == "webdataset"]) for route in routes}
            (o_wall, o_cpu, o_n), (w_wall, w_cpu, w_n) = measured["own"], measured["webdataset"]
            assert o_n == w_n > 0, (o_n, w_n)
            for route, (wall, _, n) in measured.items():
                totals[route][0] += wall
                totals[route][1] += n
            ratios.append((w_n / w_wall) / (o_n / o_wall))
            cpu_ratios.append((w_n / w_cpu) / (o_n / o_cpu))
            print(
                f"round {round_ + 1} tar {i} ({routes[0]} first): own shards {o_n / o_wall:6.1f} images/s "
                f"({o_n / o_cpu:5.1f}/CPU-s)   webdataset {w_n / w_wall:6.1f} images/s ({w_n / w_cpu:5.1f}/CPU-s)"
                f"   ratio {ratios[-1]:.3f}"
            )
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    own_rate, wds_rate = (totals[route][1] / totals[route][0] for route in ("own", "webdataset"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(
        f"clip_pairs webdataset / own shards, median of {len(ratios)} interleaved tar pairs (wall): "
        f"{statistics.median(ratios):.3f}   [quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; "
        f"summed rates {wds_rate:.1f} / {own_rate:.1f} images/s = {wds_rate / own_rate:.3f}; "
        f"per CPU second {statistics.median(cpu_ratios):.3f}]"
    )


if __name__ == "__main__":
    main()
