"""Speed of clip_pairs on a registered webdataset beside the same images as the pipeline's own shards.

    .venv/bin/python benchmarks/clip_pairs_webdataset_bench.py            # CPU: ViT-B-32, 128 images x 5 rounds
    .venv/bin/python benchmarks/clip_pairs_webdataset_bench.py --images 20000 --batch-size 256 --device cuda

The images are clip_pairs_bench's (256-pixel JPEGs, alt-text-like captions, ViT-B-32 with random
weights). The same tar bytes are scored two ways, interleaved round by round after a warm-up:

* own shards: ``score_image_shard`` on image_shards' shards (rows from the shard's parquet, images
  streamed from its tar);
* webdataset: the same tars registered with ``register_dataset(..., "webdataset")`` and scored from
  where they are: samples grouped by key from the stream, caption and img2dataset's json read from
  the tar, language detected, sha256 taken.

The figure is the webdataset's images/s over the own shards' images/s, best round of each (the round
least disturbed by other work on a shared machine); beside it the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import torch
from clip_pairs_bench import WORK, end_to_end, make_shards

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


def webdataset(settings: ScoringSettings, units: list[ClipPairsUnit]) -> tuple[float, float, int]:
    """Seconds (wall, CPU) of score_image_shard over the webdataset's tars, outputs written from scratch."""
    root = units[0].root
    root.remove(root.path("clip_pairs", units[0].segment))
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(sum(score_image_shard(unit, settings)["scored"].values()) for unit in units)
    return time.perf_counter() - wall, time.process_time() - cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
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
    end_to_end(settings, warm)
    webdataset(settings, webdataset_units(warm_root, warm))

    ratios, own_rates, wds_rates = [], [], []
    for round_ in range(args.rounds):
        o_wall, _, o_n = end_to_end(settings, own)
        w_wall, _, w_n = webdataset(settings, registered)
        assert o_n == w_n == args.images, (o_n, w_n)
        own_rates.append(o_n / o_wall)
        wds_rates.append(w_n / w_wall)
        ratios.append(wds_rates[-1] / own_rates[-1])
        print(
            f"round {round_ + 1}: own shards {own_rates[-1]:8.1f} images/s   "
            f"webdataset {wds_rates[-1]:8.1f} images/s   ratio {ratios[-1]:.3f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(
        f"clip_pairs webdataset / own shards, best round of each (wall): {max(wds_rates):.1f} / "
        f"{max(own_rates):.1f} images/s = {max(wds_rates) / max(own_rates):.3f}   "
        f"[median of per-round ratios {statistics.median(ratios):.3f}]"
    )


if __name__ == "__main__":
    main()
