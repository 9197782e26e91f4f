"""clip_pairs on a GPU: model-only rate, end to end from tar shards, memory and OOM-halving, `cah worker --gpu`.

Run by ``benchmarks/clip_pairs_gpu.sh`` (one device call); ``--dry-run --device cpu`` runs every part on
a tiny input on the CPU, labelled as a dry run, with the GPU-only steps replaced by a "skipped: no CUDA"
line. Everything it measures goes to ``<out>/clip_pairs_gpu.json`` (rewritten after each part, so a
run cut short still returns what it did) and ``<out>/profile_*.txt``.

1. model-only: ViT-B-32 with random weights (nothing is downloaded), image tower, text tower and
   both, on inputs already on the device, per precision and batch size;
2. end to end: ``score_image_shard`` over tar shards this script writes with the project's own
   code (``local_web.photo_like`` pictures of ``WEB_IMAGE_SIZES``, ``shapes.write_image_shard``),
   JPEG decode on the GPU (the stage's ``decode='torch'``: torchvision/nvJPEG) and with PIL on every
   core; the ratio to model-only at the same precision and batch; the parts timed alone (decode,
   host-to-device copy, tokenization) and a torch profiler table per decode path; then the same
   pictures as image_shards stores them (256x256 JPEGs, ``ResizeSettings`` defaults), which is what
   clip_pairs reads in production;
3. peak GPU memory, whether OOM-halving fired, and one run forced into it with an oversized batch
   under a memory cap: does every row still come out scored, and how many images were decoded on
   the CPU because the device could not decode them alone;
4. ``cah worker --gpu`` joining a scheduler started here and scoring one shard;
5. (``processes``, run second) ``cah worker --gpu --processes-per-gpu N`` for N in ``--processes``
   (1, 2, 4): the model alone in all N processes at once, then every 256-px shard end to end through
   the scheduler with ``GPU=1`` tasks; images/s and the ratio to one process's model-only rate. A dry
   run starts the same command's code with a stand-in device (``run_worker(..., devices=...)``);
6. (``webdataset``) the 256-px shards' tars registered as a webdataset (``register_dataset``) and
   scored from where they are, round by round beside the same shards as image_shards' own, on the
   GPU decode path: the median rate of each and their ratio (target 0.95).

``--parts`` picks some of them (the inputs are always made; end_to_end alone times the model at
its own batches and precision for the ratio).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from clip_pairs_bench import WORDS

from cah_resources.clip_pairs import stage as clip_pairs
from cah_resources.clip_pairs.clip_scorer import (
    LoadedClip,
    load_clip,
)
from cah_resources.clip_pairs.settings import SCORING_DEFAULTS, ClipModelSpec, ScoringSettings
from cah_resources.clip_pairs.stage import ClipPairsUnit, iter_tar_images, pending_units, score_image_shard
from cah_resources.contract import (
    CATEGORIES,
    CLIP_PAIRS,
    FORMAT_WEBDATASET,
    IMAGE_SHARDS,
    ClipStats,
    finished_shards,
    stage_folder,
)
from cah_resources.crawl.segments import register_dataset
from cah_resources.image_shards.resizer import ResizeSettings, process_image
from cah_resources.samples.local_web import WEB_IMAGE_SIZES, photo_like
from cah_resources.samples.tiny_clip import TINY_CLIP_CHECKPOINT, TINY_CLIP_CONFIG, TINY_CLIP_NAME, TINY_CLIP_THRESHOLDS
from cah_resources.samples.tiny_clip.shapes import ShardSample, jpeg_bytes, write_image_shard
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-GPUBENCH_00000"
TARGET_IMAGES_PER_S = 5000  # issue 17: twice clip-retrieval's published 2,500/s per A100
TARGET_RATIO = 0.8
NO_CUDA = "skipped: no CUDA"
PARTS = ("model_only", "processes", "memory", "end_to_end", "worker", "webdataset")
WEBDATASET = "gpu-webdataset"  # the 256-px shards' tars registered as a webdataset (issue 29)
TARGET_WEBDATASET_RATIO = 0.95  # its rate over the same shards' as image_shards' own
# Distinct pictures per web size; shards reuse them (decode cost depends on size, not on content).
PHOTO_VARIANTS = 16


class Report:
    """The run's JSON, written again after every part so that a cut-short run keeps what it did."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out, self.data = out, data
        self.started = time.perf_counter()

    def part(self, name: str, value: dict[str, Any]) -> None:
        self.data.setdefault("parts", {})[name] = value
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        tmp = self.out / "clip_pairs_gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "clip_pairs_gpu.json")


STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def skip(what: str, why: str = NO_CUDA) -> str:
    say(f"{what}: {why}")
    return why


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- inputs


def _photo(args: tuple[int, int, int, bool]) -> bytes:
    width, height, seed, stored = args
    # local_web's encoder settings for its jpeg answers: what a web server would send.
    body = jpeg_bytes(photo_like(width, height, seed), quality=90)
    if stored:
        # What image_shards keeps of it with its defaults (256x256, 'border'): what clip_pairs reads.
        outcome = process_image(body, ResizeSettings())
        assert outcome.jpeg is not None, outcome.error_message
        return outcome.jpeg
    return body


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))


def _write_shard(job: tuple[str, int, list[str], int]) -> int:
    root, shard, photo_paths, seed = job
    rng = random.Random(seed)
    photos = {path: Path(path).read_bytes() for path in set(photo_paths)}
    samples = [ShardSample(caption(rng), photos[path], "en", "en") for path in photo_paths]
    write_image_shard(DataRoot(root), SEGMENT, shard, samples)
    return len(samples)


def make_shards(
    work: Path, images: int, shard_size: int, sizes: tuple[tuple[int, int], ...], procs: int, stored: bool = False
) -> dict[str, Any]:
    """Tar + parquet image shards of web-photo-sized JPEGs, in parallel; returns what was made.

    ``stored``: the same pictures as image_shards stores them (``ResizeSettings`` defaults, 256 pixels).
    """
    started = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    jobs = [(w, h, 1000 * i + v, stored) for i, (w, h) in enumerate(sizes) for v in range(PHOTO_VARIANTS)]
    (work / "photos").mkdir(parents=True)
    with ProcessPoolExecutor(procs) as pool:
        photos = list(pool.map(_photo, jobs))
        paths = [str(work / "photos" / f"{i}.jpg") for i in range(len(photos))]
        for path, photo in zip(paths, photos, strict=False):
            Path(path).write_bytes(photo)
        rng = random.Random(0)
        picks = [rng.randrange(len(photos)) for _ in range(images)]
        # Workers read the pictures from disk: pickling gigabytes of JPEGs through pipes is slower.
        shard_jobs = [
            (str(work), s, [paths[p] for p in picks[lo : lo + shard_size]], s)
            for s, lo in enumerate(range(0, images, shard_size))
        ]
        written = sum(pool.map(_write_shard, shard_jobs))
    pixels = sum(jobs[p][0] * jobs[p][1] for p in picks) if not stored else images * 256 * 256
    made = {
        "images": written,
        "shards": len(shard_jobs),
        "shard_size": shard_size,
        "sizes": [f"{w}x{h}" for w, h in sizes] if not stored else ["256x256: image_shards' defaults, from those"],
        "distinct_pictures": len(photos),
        "mean_megapixels": round(pixels / images / 1e6, 3),
        "jpeg_bytes": sum(len(photos[p]) for p in picks),
        "seconds": round(time.perf_counter() - started, 1),
    }
    kind = " as image_shards stores them" if stored else ""
    say(
        f"inputs{kind}: {written} JPEGs ({made['mean_megapixels']} MP mean, {made['jpeg_bytes'] / 1e9:.2f} GB) in "
        f"{len(shard_jobs)} shard(s), made in {made['seconds']}s"
    )
    return made


def units_of(work: Path) -> list[ClipPairsUnit]:
    root = DataRoot(str(work))
    finished = finished_shards(root, stage_folder(root, IMAGE_SHARDS, SEGMENT))
    return [ClipPairsUnit(root, SEGMENT, int(name)) for name in finished]


def sample_inputs(unit: ClipPairsUnit, limit: int) -> tuple[list[bytes], list[str]]:
    """The first ``limit`` JPEGs of a shard and their captions, read with the stage's tar reader."""
    table = unit.root.read_parquet(unit.inputs["parquet"])
    keys, texts = table.column("key").to_pylist()[:limit], table.column("text").to_pylist()[:limit]
    wanted = {key: row for row, key in enumerate(keys)}
    jpegs: dict[int, bytes] = {}
    with unit.root.fs.open(unit.inputs["tar"], "rb") as handle:
        jpegs.update(iter_tar_images(handle, wanted))
    return [jpegs[r] for r in range(len(keys))], texts


# ---------------------------------------------------------------------------------------------- part 1


def timed(device: str, run: Callable[[], Any], iters: int, warmups: int = 2) -> float:
    for _ in range(warmups):
        run()
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        run()
    sync(device)
    return (time.perf_counter() - started) / iters


def model_only(args: argparse.Namespace, specs: list[ClipModelSpec], texts: list[str]) -> dict[str, Any]:
    """Each model's towers on inputs already on the device: images/s per precision and batch."""
    from cah_resources.clip_pairs.clip_scorer import encode_text, trim_padding

    rows, skipped = [], []
    precisions = args.precisions if args.device == "cuda" else ["fp32"]
    if args.device != "cuda":
        skipped.append(skip(f"model-only bf16/fp16 (ran fp32 on {args.device} instead)"))
    for spec in specs:
        for precision in precisions:
            loaded = load_clip(spec, args.device, precision)
            for batch in args.model_batches:
                size = loaded.image_size
                pixels = torch.randn(batch, 3, size, size, device=args.device).to(loaded.input_dtype)
                captions = [texts[i % len(texts)] for i in range(batch)]
                tokens = trim_padding(loaded.tokenize(captions), loaded.pad_id).to(args.device)
                model = loaded.model
                warmups = 1 if args.dry_run else 2
                with torch.inference_mode():
                    image_s = timed(args.device, functools.partial(model.encode_image, pixels), args.iters, warmups)
                    text_s = timed(args.device, functools.partial(encode_text, model, tokens), args.iters, warmups)
                    both_s = timed(args.device, functools.partial(loaded.embed, pixels, tokens), args.iters, warmups)
                row = {
                    "model": spec.label,
                    "precision": precision,
                    "batch": batch,
                    "tokens": tokens.shape[1],
                    "image_tower_images_per_s": round(batch / image_s, 1),
                    "text_tower_texts_per_s": round(batch / text_s, 1),
                    "both_pairs_per_s": round(batch / both_s, 1),
                }
                rows.append(row)
                say(
                    f"model-only {spec.label} {precision} batch {batch:5d}: image tower "
                    f"{row['image_tower_images_per_s']:10.1f} images/s, "
                    f"text tower {row['text_tower_texts_per_s']:10.1f}/s, "
                    f"both {row['both_pairs_per_s']:10.1f} pairs/s"
                )
    return {"status": "done", "rows": rows, "skipped": skipped}


# ---------------------------------------------------------------------------------------------- part 2


class OomCounter(logging.Handler):
    """Keeps the stage's 'ran out of memory' warnings (the first few of each shard; the counts are in its summary)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "ran out of memory" in record.getMessage():
            self.messages.append(record.getMessage())


def score_all(units: list[ClipPairsUnit], settings: ScoringSettings, oom: OomCounter) -> dict[str, Any]:
    """score_image_shard over every unit from scratch: rate, rows, peak memory, OOM-halving."""
    root = units[0].root
    root.remove(root.path(CLIP_PAIRS))
    device = load_clip(settings.models["en"], settings.device, settings.precision).device
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    heard = len(oom.messages)
    started = time.perf_counter()
    summaries = [score_image_shard(unit, settings) for unit in units]
    seconds = time.perf_counter() - started
    rows = sum(s["pairs"] for s in summaries)
    scored = sum(sum(s["scored"].values()) for s in summaries)
    run = {
        "decode": settings.decode,
        "decode_workers": settings.decode_workers,
        "batch": settings.batch_size,
        "precision": summaries[0]["precision"],
        "device": summaries[0]["device"],
        "rows": rows,
        "scored": scored,
        "every_row_scored": rows == scored and rows > 0,
        "not_scored": {
            k: sum(s["not_scored"].get(k, 0) for s in summaries) for s in summaries for k in s["not_scored"]
        },
        "seconds": round(seconds, 3),
        "images_per_s": round(scored / seconds, 1),
        **{
            key: sum(s.get("device_memory", {}).get(key, 0) for s in summaries)
            for key in ("oom_halvings", "oom_alone", "decoded_on_cpu")
        },
        "prepared_on_device_peak": max(s.get("device_memory", {}).get("prepared_on_device_peak", 0) for s in summaries),
        "oom_messages": oom.messages[heard:][:5],
    }
    if device == "cuda":
        run["gpu_allocated_before_bytes"] = before
        run["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
        run["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return run


def labelled(owner: Any, method: str, label: str, clock: dict[str, list[float]]) -> Callable[[], None]:
    """Wrap ``owner.method`` in a profiler range named ``label`` and a wall clock; returns the undo.

    The clock (calls, seconds summed over threads) counts the decode pool's threads too, which the
    profiler records only where it can profile every thread.
    """
    original = getattr(owner, method)
    lock = threading.Lock()
    clock[label] = [0, 0.0]

    @functools.wraps(original)
    def wrapper(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        try:
            with torch.profiler.record_function(label):
                return original(*a, **k)
        finally:
            with lock:
                clock[label][0] += 1
                clock[label][1] += time.perf_counter() - started

    setattr(owner, method, wrapper)
    return lambda: setattr(owner, method, original)


PROFILE_LABELS = (
    (LoadedClip, "preprocess_jpeg", "cah.decode_cpu"),
    (clip_pairs._ShardScorer, "decode_on_device_stream", "cah.decode_gpu"),
    (LoadedClip, "tokenize", "cah.tokenize"),
    (LoadedClip, "embed", "cah.model"),
)


def _profiler_config() -> dict[str, Any]:
    try:
        from torch._C._profiler import _ExperimentalConfig

        return {"experimental_config": _ExperimentalConfig(profile_all_threads=True)}
    except (ImportError, TypeError):
        return {}


def profile_one_shard(unit: ClipPairsUnit, settings: ScoringSettings, out: Path, name: str) -> dict[str, Any]:
    """torch profiler over one shard: the stage's steps as labelled ranges, the table saved under out."""
    from torch.profiler import ProfilerActivity, profile

    unit.root.remove(unit.root.path(CLIP_PAIRS))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device == "cuda" else [])
    clock: dict[str, list[float]] = {}
    undo = [labelled(*entry, clock) for entry in PROFILE_LABELS]
    started = time.perf_counter()
    try:
        with profile(activities=activities, **_profiler_config()) as prof:
            score_image_shard(unit, settings)
            sync(settings.device)
    finally:
        for u in undo:
            u()
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    path = out / f"profile_{name}.txt"
    # torch renamed the cuda columns to device ones; take the first spelling this torch knows.
    sorts = ("self_device_time_total", "self_cuda_time_total") if settings.device == "cuda" else ()
    for sort in (*sorts, "self_cpu_time_total"):
        try:
            path.write_text(averages.table(sort_by=sort, row_limit=40, max_name_column_width=60))
            break
        except (AttributeError, KeyError, ValueError):
            continue

    def device_us(event: Any) -> float:
        return float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0) or 0)

    summary: dict[str, Any] = {"table": path.name, "wall_s": round(wall, 3)}
    for label, (calls, seconds) in clock.items():
        if calls:
            summary[label] = {"calls": calls, "thread_s": round(seconds, 3)}
    for event in averages:
        if event.key in summary:
            summary[event.key].update(
                profiler_cpu_ms=round(event.cpu_time_total / 1e3, 1),
                profiler_device_ms=round(device_us(event) / 1e3, 1),
            )
    h2d = [e for e in averages if "Memcpy HtoD" in e.key]
    if h2d:
        summary["memcpy_htod_device_ms"] = round(sum(device_us(e) for e in h2d) / 1e3, 1)
    say(
        f"profile {name}: {wall:.2f}s wall; "
        + ", ".join(f"{k} {v['thread_s']}s/{v['calls']} calls" for k, v in summary.items() if k.startswith("cah."))
    )
    return summary


def components(
    args: argparse.Namespace, loaded: LoadedClip, jpegs: list[bytes], texts: list[str], label: str = ""
) -> dict[str, Any]:
    """The stage's steps timed alone on the same inputs: decode (GPU, CPU), H2D copy, tokenization."""
    batch = min(args.e2e_batches[0], len(jpegs))
    title = f"components {label}".rstrip()
    result: dict[str, Any] = {"images": len(jpegs), "batch": batch}
    chunks = [jpegs[i : i + batch] for i in range(0, len(jpegs), batch)]

    workers = args.cpu_workers
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loaded.preprocess_jpeg, jpegs[:batch]))
        started = time.perf_counter()
        list(pool.map(loaded.preprocess_jpeg, jpegs))
        result["decode_cpu_pil_images_per_s"] = round(len(jpegs) / (time.perf_counter() - started), 1)
        result["decode_cpu_threads"] = workers

    started = time.perf_counter()
    for lo in range(0, len(texts), batch):
        loaded.tokenize(texts[lo : lo + batch])
    result["tokenize_texts_per_s_one_thread"] = round(len(texts) / (time.perf_counter() - started), 1)
    result["tokenizer"] = type(loaded.tokenizer).__name__
    # open_clip's own Python tokenizer on the same captions, for reference (the stage's is the Rust twin).
    import open_clip

    reference = open_clip.get_tokenizer(loaded.spec.model)
    started = time.perf_counter()
    for lo in range(0, len(texts), batch):
        reference(texts[lo : lo + batch])
    result["tokenize_open_clip_texts_per_s_one_thread"] = round(len(texts) / (time.perf_counter() - started), 1)

    if args.device == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg

        def gpu_decode() -> None:
            for chunk in chunks:
                encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in chunk]
                loaded.preprocess_on_device(decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda"))

        def gpu_decode_only() -> None:
            for chunk in chunks:
                decode_jpeg(
                    [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in chunk],
                    mode=ImageReadMode.RGB,
                    device="cuda",
                )

        result["decode_gpu_nvjpeg_images_per_s"] = round(len(jpegs) / timed("cuda", gpu_decode_only, 1), 1)
        result["decode_gpu_plus_resize_images_per_s"] = round(len(jpegs) / timed("cuda", gpu_decode, 1), 1)
        host = torch.randint(0, 255, (batch, 3, loaded.image_size, loaded.image_size), dtype=torch.uint8)
        seconds = timed("cuda", lambda: host.to("cuda", non_blocking=True), 5)
        result["h2d_uint8_batch_gb_per_s"] = round(host.numel() / seconds / 1e9, 2)
        result["h2d_uint8_images_per_s"] = round(batch / seconds, 1)
        pinned = host.pin_memory()  # what the stage's PIL path now stacks into (clip_pairs._stack_for_copy)
        seconds = timed("cuda", lambda: pinned.to("cuda", non_blocking=True), 5)
        result["h2d_pinned_uint8_images_per_s"] = round(batch / seconds, 1)
    else:
        result["decode_gpu"] = skip(f"{title}: GPU decode and H2D copy")
    say(f"{title}: " + ", ".join(f"{k} {v}" for k, v in result.items() if k.endswith("_per_s")))
    return result


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for run in runs:
        key = f"{run['mode']}_batch{run['batch']}"
        if key not in best or run["images_per_s"] > best[key]["images_per_s"]:
            best[key] = run
    return best


def end_to_end(
    args: argparse.Namespace,
    settings_for: Callable[..., ScoringSettings],
    units: list[ClipPairsUnit],
    stored_units: list[ClipPairsUnit],
    oom: OomCounter,
    model_rows: list[dict[str, Any]],
    out: Path,
) -> dict[str, Any]:
    """score_image_shard over web-photo-sized shards and over the same pictures as image_shards stores them."""
    gpu = args.device == "cuda"
    modes = [("gpu_decode" if gpu else "torch_decode_on_cpu", "torch", 4), ("cpu_decode", "pil", args.cpu_workers)]
    notes = []
    if not gpu:
        notes.append(skip("end-to-end with nvJPEG decode (ran the stage's torch decode path on the CPU instead)"))
    # Warm-up on one shard: model load, cuDNN/cuBLAS autotune, nvJPEG handles.
    for _, decode, workers in modes:
        score_all(units[:1], settings_for(decode=decode, decode_workers=workers, batch_size=args.e2e_batches[0]), oom)
    label = settings_for().models["en"].label

    def timed_run(units_: list[ClipPairsUnit], name: str, decode: str, workers: int, batch: int, round_: int) -> dict:
        run = {
            "mode": name,
            "round": round_,
            **score_all(units_, settings_for(decode=decode, decode_workers=workers, batch_size=batch), oom),
        }
        same = [r for r in model_rows if r["model"] == label and r["precision"] == run["precision"]]
        # The model-only row at the same batch, else the nearest batch measured.
        model = min(same, key=lambda r: abs(r["batch"] - batch), default=None)
        if model:
            run["model_only_pairs_per_s"] = model["both_pairs_per_s"]
            run["model_only_batch"] = model["batch"]
            run["ratio_to_model_only"] = round(run["images_per_s"] / model["both_pairs_per_s"], 3)
        say(
            f"end-to-end {name:20s} batch {batch:5d} round {round_}: {run['images_per_s']:9.1f} images/s, "
            f"{run['scored']}/{run['rows']} rows scored, ratio to model-only {run.get('ratio_to_model_only')}, "
            f"peak GPU {run.get('peak_gpu_allocated_bytes', 0) / 2**30:.2f} GiB, "
            f"OOM halvings {run['oom_halvings']}"
        )
        return run

    runs = []
    for round_ in range(1, args.rounds + 1):
        for batch in args.e2e_batches:
            for name, decode, workers in modes:
                # PIL's figure is decode-bound and steady (490 vs 503 images/s on the H200): one round.
                if name == "cpu_decode" and (batch != args.e2e_batches[0] or round_ > 1):
                    continue
                runs.append(timed_run(units, name, decode, workers, batch, round_))
    # What clip_pairs reads in production: image_shards' 256-pixel JPEGs, at the stage's default batch.
    say("end-to-end on shards as image_shards stores them (256x256):")
    stored_runs = [
        timed_run(stored_units, f"{name}_256px", decode, workers, args.e2e_batches[0], round_)
        for round_ in range(1, args.rounds + 1)
        for name, decode, workers in modes
        if name != "cpu_decode" or round_ == 1
    ]
    profiles = {}
    for name, decode, workers in modes:
        profiles[name] = profile_one_shard(
            units[0], settings_for(decode=decode, decode_workers=workers, batch_size=args.e2e_batches[0]), out, name
        )
    name, decode, workers = modes[0]
    profiles[f"{name}_256px"] = profile_one_shard(
        stored_units[0],
        settings_for(decode=decode, decode_workers=workers, batch_size=args.e2e_batches[0]),
        out,
        f"{name}_256px",
    )
    loaded = load_clip(settings_for().models["en"], args.device, settings_for().precision)
    jpegs, texts = sample_inputs(units[0], args.component_images)
    parts = components(args, loaded, jpegs, texts)
    stored_jpegs, _ = sample_inputs(stored_units[0], args.component_images)
    stored_parts = components(args, loaded, stored_jpegs, texts, "256px")
    return {
        "status": "done",
        "runs": runs,
        "best": best_of(runs),
        "stored": {"runs": stored_runs, "best": best_of(stored_runs), "components": stored_parts},
        "profiles": profiles,
        "components": parts,
        "skipped": notes,
        "every_run_scored_every_row": all(r["every_row_scored"] for r in runs + stored_runs),
    }


def webdataset_part(
    args: argparse.Namespace,
    settings_for: Callable[..., ScoringSettings],
    stored_units: list[ClipPairsUnit],
    oom: OomCounter,
) -> dict[str, Any]:
    """The 256-px shards' tars registered as a webdataset and scored from where they are, beside the same
    shards as image_shards' own: round by round, the order alternating, on the end-to-end GPU decode path."""
    root = stored_units[0].root
    tars = [unit.inputs["tar"] for unit in stored_units]
    registration = register_dataset(root, WEBDATASET, tars, FORMAT_WEBDATASET, files_per_segment=len(tars))
    registered = pending_units(root, registration.keys()[0])
    gpu = args.device == "cuda"
    settings = settings_for(decode="torch" if gpu else "pil", decode_workers=4 if gpu else args.cpu_workers)
    score_all(stored_units[:1], settings, oom)  # warm-up: model load, autotune, nvJPEG handles
    routes = [("own", stored_units), ("webdataset", registered)]
    runs = []
    for round_ in range(1, args.rounds + 1):
        for route, units in routes if round_ % 2 else routes[::-1]:
            runs.append({"route": route, "round": round_, **score_all(units, settings, oom)})
            say(f"webdataset part, {route:10s} round {round_}: {runs[-1]['images_per_s']:9.1f} images/s")
    rates = {route: statistics.median(r["images_per_s"] for r in runs if r["route"] == route) for route, _ in routes}
    return {
        "status": "done",
        "decode": settings.decode,
        "runs": runs,
        "median_images_per_s": rates,
        "ratio": round(rates["webdataset"] / rates["own"], 3),
        "every_run_scored_every_row": all(r["every_row_scored"] for r in runs),
    }


# ---------------------------------------------------------------------------------------------- part 3


def forced_oom(
    args: argparse.Namespace,
    settings_for: Callable[..., ScoringSettings],
    units: list[ClipPairsUnit],
    oom: OomCounter,
    per_image_bytes: float,
) -> dict[str, Any]:
    """One shard as one oversized batch under a memory cap, per decode path: halving fires, every row scored?"""
    unit = units[:1]
    rows = unit[0].root.read_parquet(unit[0].inputs["parquet"]).num_rows
    result: dict[str, Any] = {"batch": rows, "runs": []}
    if args.device != "cuda":
        result["cap"] = skip("forced OOM (a memory cap needs the CUDA allocator; ran the oversized batch uncapped)")
        for decode in ("torch", "pil"):
            run = score_all(unit, settings_for(decode=decode, batch_size=rows, decode_workers=args.cpu_workers), oom)
            result["runs"].append({"capped": False, **run})
        return {"status": "done", **result}
    loaded = load_clip(settings_for().models["en"], args.device, settings_for().precision)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Room for a quarter of the batch at the measured per-image peak, above what the models hold now:
    # the whole batch cannot fit, a quarter of it can, so halving must fire twice and then succeed.
    cap = torch.cuda.memory_allocated() + int(per_image_bytes * rows / 4)
    result.update(cap_bytes=cap, per_image_peak_bytes=round(per_image_bytes))
    say(f"forced OOM: one batch of {rows} under a cap of {cap / 2**30:.2f} GiB of {total / 2**30:.0f} GiB")
    for decode in ("pil", "torch"):
        loaded.max_batch = loaded.max_decode_batch = None
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        try:
            run = score_all(unit, settings_for(decode=decode, batch_size=rows, decode_workers=args.cpu_workers), oom)
        except Exception as error:  # a failed shard is the finding, recorded as such
            run = {"decode": decode, "failed": f"{type(error).__name__}: {str(error)[:300]}", "every_row_scored": False}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
        run["max_batch_after"] = loaded.max_batch
        run["max_decode_batch_after"] = loaded.max_decode_batch
        result["runs"].append({"capped": True, **run})
        say(
            f"forced OOM decode={decode}: halvings {run.get('oom_halvings')}, decoded on the CPU after device "
            f"OOM {run.get('decoded_on_cpu')}, every row scored {run.get('every_row_scored')}, "
            f"not scored {run.get('not_scored', run.get('failed'))}"
        )
    loaded.max_batch = loaded.max_decode_batch = None
    return {"status": "done", **result}


# ---------------------------------------------------------------------------------------------- part 4


def worker_part(
    args: argparse.Namespace, settings_for: Callable[..., ScoringSettings], units: list[ClipPairsUnit], out: Path
) -> dict[str, Any]:
    """``cah worker --gpu`` (``cah worker`` on CPU in a dry run) joins a scheduler started here and scores a shard."""
    from distributed import Client, LocalCluster

    from cah_resources.fleet.compute import GPU

    result: dict[str, Any] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    log = open(out / "worker.log", "w")  # noqa: SIM115 - the worker writes to it until the finally below
    cli = [sys.executable, "-m", "cah_assets.cli", "worker"]
    with (
        LocalCluster(
            n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0", scheduler_port=0
        ) as cluster,
        Client(cluster) as client,
    ):
        address = cluster.scheduler_address
        if args.device == "cuda":
            command, resources = (
                [*cli, "--scheduler", address, "--gpu", "--name", "bench", "--memory-limit", "16GB"],
                {GPU: 1},
            )
        else:
            command, resources = (
                [*cli, "--scheduler", address, "--nworkers", "1", "--name", "bench", "--memory-limit", "4GB"],
                None,
            )
        result["command"] = " ".join(command[1:]).replace(address, "<scheduler>")
        started = time.perf_counter()
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if args.device != "cuda":
                # While the CPU runner starts: what `cah worker --gpu` says on a machine without CUDA.
                refused = subprocess.run(
                    [*cli, "--scheduler", address, "--gpu"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=args.worker_timeout,
                    check=False,
                )
                said = refused.stderr.strip()[-200:]
                result["gpu_refused"] = {"rc": refused.returncode, "stderr": said}
                result["gpu"] = skip(f"cah worker --gpu (it said: {said!r}); a CPU runner scores the shard")
            client.wait_for_workers(1, timeout=args.worker_timeout)
            result["joined_s"] = round(time.perf_counter() - started, 1)
            result["workers"] = {w["name"]: w.get("resources", {}) for w in client.scheduler_info()["workers"].values()}
            unit = units[0]
            unit.root.remove(unit.root.path(CLIP_PAIRS))
            future = client.submit(score_image_shard, unit, settings_for(), resources=resources, pure=False)
            summary = future.result(timeout=args.worker_timeout)
            future.release()
            stats = ClipStats.from_dict(summary)
            result.update(
                status="done",
                scored_by=stats.worker,
                device=stats.device,
                precision=stats.precision,
                rows=stats.pairs,
                scored=stats.pairs_scored,
                every_row_scored=stats.pairs_scored == stats.pairs > 0,
                images_per_s=stats.shard_pairs_per_s,
                seconds_to_result=round(time.perf_counter() - started, 1),
            )
            say(
                f"worker: {result['command']} joined in {result['joined_s']}s; {stats.worker} scored "
                f"{stats.pairs_scored}/{stats.pairs} rows on {stats.device} "
                f"({stats.shard_pairs_per_s} images/s in the shard)"
            )
        finally:
            # The worker's nannies stop on SIGTERM (serve_workers); its session group is ours alone.
            worker.send_signal(signal.SIGTERM)
            try:
                result["worker_rc"] = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                result["worker_rc"] = "killed after 30s"
            log.close()
    return result


# ---------------------------------------------------------------------------------------------- part 5


def _warm(spec: ClipModelSpec, device: str, precision: str) -> str:
    """In a worker: load the model (kept by warm_model for the shards), return where it is."""
    from cah_resources.clip_pairs.clip_scorer import load_clip as load

    return load(spec, device, precision).device


def _model_rate(spec: ClipModelSpec, device: str, precision: str, batch: int, iters: int, texts: list[str]) -> dict:
    """In a worker: both towers on device-resident inputs, ``iters`` batches; wall-clock start and end."""
    import time as clock

    import torch as th

    from cah_resources.clip_pairs.clip_scorer import load_clip as load
    from cah_resources.clip_pairs.clip_scorer import trim_padding

    loaded = load(spec, device, precision)
    size = loaded.image_size
    pixels = th.randn(batch, 3, size, size, device=device).to(loaded.input_dtype)
    tokens = trim_padding(loaded.tokenize([texts[i % len(texts)] for i in range(batch)]), loaded.pad_id).to(device)
    loaded.embed(pixels, tokens)
    if device == "cuda":
        th.cuda.synchronize()
    started = clock.time()
    for _ in range(iters):
        loaded.embed(pixels, tokens)
    if device == "cuda":
        th.cuda.synchronize()
    return {"start": started, "end": clock.time(), "pairs": batch * iters}


def _executor_command(args: argparse.Namespace, address: str, n: int) -> list[str]:
    """`cah worker --gpu` with N processes; on the CPU its own run_worker with a stand-in device."""
    if args.device == "cuda":
        return [
            *(sys.executable, "-m", "cah_assets.cli", "worker", "--scheduler", address, "--gpu"),
            *("--processes-per-gpu", str(n), "--name", f"p{n}", "--memory-limit", "8GB", "--min-free-gb", "2"),
        ]
    code = (
        "import sys\n"
        "from cah_resources.fleet.cuda_devices import GpuDevice\n"
        "from cah_resources.fleet.gpu_worker import run_worker\n"
        "from cah_resources.fleet.settings import GIB, WorkerSettings\n"
        f"s = WorkerSettings(scheduler={address!r}, gpu=True, name='p{n}', processes_per_gpu={n}, memory_limit='2GB')\n"
        "sys.exit(run_worker(s, [GpuDevice(0, 'stand-in for a GPU', 80 * GIB, 80 * GIB)]))\n"
    )
    return [sys.executable, "-c", code]


def processes_part(
    args: argparse.Namespace,
    settings_for: Callable[..., ScoringSettings],
    units: list[ClipPairsUnit],
    texts: list[str],
    model_rows: list[dict[str, Any]],
    out: Path,
) -> dict[str, Any]:
    """N worker processes per GPU (``cah worker --gpu --processes-per-gpu N``): model-only and end to end."""
    from distributed import Client, LocalCluster

    from cah_resources.fleet.compute import GPU

    settings = settings_for()
    spec, batch = settings.models["en"], settings.batch_size
    precision = args.e2e_precision if args.device == "cuda" else "fp32"
    reference = next(
        (r["both_pairs_per_s"] for r in model_rows if r["batch"] == batch and r["precision"] == precision), None
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    runs = []
    with open(out / "worker.log", "a") as log:
        for n in args.processes:
            with (
                LocalCluster(
                    n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0", scheduler_port=0
                ) as cluster,
                Client(cluster) as client,
            ):
                command = _executor_command(args, cluster.scheduler_address, n)
                started = time.perf_counter()
                executor = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                try:
                    client.wait_for_workers(n, timeout=args.worker_timeout)
                    workers = {w["name"]: w.get("resources", {}) for w in client.scheduler_info()["workers"].values()}
                    client.run(_warm, spec, args.device, precision)
                    joined = time.perf_counter() - started
                    rates = client.run(_model_rate, spec, args.device, precision, batch, args.iters, texts[:batch])
                    spans = list(rates.values())
                    model_pairs_per_s = sum(r["pairs"] for r in spans) / (
                        max(r["end"] for r in spans) - min(r["start"] for r in spans)
                    )
                    root = units[0].root
                    root.remove(root.path(CLIP_PAIRS))
                    began = time.perf_counter()
                    futures = client.map(score_image_shard, units, settings=settings, resources={GPU: 1}, pure=False)
                    summaries = client.gather(futures)
                    seconds = time.perf_counter() - began
                    client.cancel(futures)  # nothing of theirs is wanted when the executor stops
                finally:
                    executor.send_signal(signal.SIGTERM)
                    try:
                        executor.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(executor.pid, signal.SIGKILL)
            rows = sum(s["pairs"] for s in summaries)
            scored = sum(sum(s["scored"].values()) for s in summaries)
            run = {
                "processes_per_gpu": n,
                "workers": workers,
                "joined_and_warm_s": round(joined, 1),
                "model_only_pairs_per_s": round(model_pairs_per_s, 1),
                "rows": rows,
                "scored": scored,
                "every_row_scored": rows == scored > 0,
                "shards_by_worker": {w: sum(s["worker"] == w for s in summaries) for w in workers},
                "seconds": round(seconds, 3),
                "images_per_s": round(scored / seconds, 1),
                "ratio_to_own_model_only": round(scored / seconds / model_pairs_per_s, 3),
                "ratio_to_one_process_model_only": round(scored / seconds / reference, 3) if reference else None,
            }
            runs.append(run)
            say(
                f"processes {n}/GPU: model-only {run['model_only_pairs_per_s']} pairs/s in all {n}; end to end "
                f"{run['images_per_s']} images/s on {len(units)} 256-px shard(s), {scored}/{rows} scored; ratio "
                f"{run['ratio_to_own_model_only']} of their model-only, {run['ratio_to_one_process_model_only']} "
                f"of one process's"
            )
    best = max(runs, key=lambda r: r["images_per_s"])
    return {"status": "done", "batch": batch, "precision": precision, "runs": runs, "best": best}


# ---------------------------------------------------------------------------------------------- main


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpus": os.cpu_count(),
        "host": platform.node(),
    }
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        smi = shutil.which("nvidia-smi")
        if smi:
            query = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            )
            env["nvidia_smi"] = query.stdout.strip()
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dry-run", action="store_true", help="tiny input, tiny model end to end; not a measurement")
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/.work/clip_pairs_gpu/out")
    parser.add_argument("--work", default="", help="where the shards go (default: a folder beside --out's parent)")
    parser.add_argument("--images", type=int, default=20_480)
    parser.add_argument("--shard-size", type=int, default=2_560)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    parser.add_argument("--model-batches", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--e2e-batches",
        type=int,
        nargs="+",
        default=[SCORING_DEFAULTS.batch_size, 1024],
        help="the first is the stage's default and the one CPU decode and the profiles use",
    )
    parser.add_argument("--e2e-precision", default="fp16", help="the stage's own default on CUDA (precision auto)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--component-images", type=int, default=2_048)
    parser.add_argument("--worker-timeout", type=float, default=180)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="worker processes per GPU")
    parser.add_argument("--budget-s", type=float, default=280, help="parts that would start after this are skipped")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which parts to run; end_to_end without model_only times the model at its own batches and precision",
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.images, args.shard_size, args.model_batches, args.e2e_batches = 12, 6, [2], [4]
        args.iters, args.rounds, args.component_images, args.cpu_workers = 1, 1, 6, 2
        args.processes = [2]
    return args


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - the script's steps in the order they run
    args = parse_args(argv)
    if args.dry_run:
        # Two shared cores: torch's thread pool spinning against other processes costs more than it gives.
        torch.set_num_threads(1)
    # `timeout` ends the run with SIGTERM: unwind, so that the worker part stops the worker it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out.parent / "shards")
    if args.device == "cuda" and not torch.cuda.is_available():
        say("clip_pairs_gpu: --device cuda but torch sees no CUDA device; use --dry-run --device cpu here")
        return 2
    label = (
        "DRY RUN on the CPU with a tiny input: checks the script, measures nothing"
        if args.dry_run
        else f"measured on {args.device}"
    )
    say(f"== clip_pairs_gpu: {label}")
    report = Report(out, {"dry_run": args.dry_run, "label": label, "args": vars(args)})
    oom = OomCounter()
    logging.getLogger("cah_resources.batching").addHandler(oom)
    logging.getLogger("cah_resources.batching").setLevel(logging.WARNING)

    if args.dry_run:
        models = {
            c: ClipModelSpec(TINY_CLIP_NAME, str(TINY_CLIP_CHECKPOINT), str(TINY_CLIP_CONFIG)) for c in CATEGORIES
        }
        thresholds = dict(TINY_CLIP_THRESHOLDS)
    else:
        # ViT-B-32 with random weights for every category: the cost of a pass does not depend on weights.
        models = {c: ClipModelSpec("ViT-B-32", "") for c in CATEGORIES}
        thresholds = dict(SCORING_DEFAULTS.thresholds)

    def settings_for(**overrides: Any) -> ScoringSettings:
        fields = {
            "device": args.device,
            "precision": args.e2e_precision if args.device == "cuda" else "fp32",
            "batch_size": args.e2e_batches[0],
            **overrides,
        }
        return ScoringSettings(models=models, thresholds=thresholds, **fields)

    deadline = time.perf_counter() + args.budget_s

    def within_budget(name: str) -> bool:
        if time.perf_counter() < deadline:
            return True
        report.part(name, {"status": skip(name, f"skipped: past the {args.budget_s:.0f}s budget")})
        return False

    sizes = WEB_IMAGE_SIZES if not args.dry_run else WEB_IMAGE_SIZES[:2]
    procs = min(16, args.cpu_workers)
    report.data["inputs"] = make_shards(work, args.images, args.shard_size, sizes, procs)
    stored_work = work.parent / f"{work.name}_256px"
    if {"end_to_end", "processes", "webdataset"} & set(args.parts):
        report.data["inputs_256px"] = make_shards(stored_work, args.images, args.shard_size, sizes, procs, stored=True)
    # After the shards: their worker processes are forked from a process that has not touched CUDA yet.
    report.data["environment"] = environment(args)
    units = units_of(work)
    _, texts = sample_inputs(units[0], 1024)

    # Part 1 is about ViT-B-32 (random weights); a dry run times the tiny model it scores with instead
    # (on 2 shared cores ViT-B-32 alone would take most of the dry run's time).
    model: dict[str, Any] = {"rows": []}
    if "model_only" in args.parts:
        model = model_only(args, [settings_for().models["en"]], texts)
        report.part("model_only", model)
    elif "end_to_end" in args.parts or "processes" in args.parts:
        # The end-to-end ratio needs the model alone at the same batch and precision: only those.
        args.precisions, args.model_batches = [args.e2e_precision], sorted(set(args.e2e_batches))
        model = model_only(args, [settings_for().models["en"]], texts)
        report.part("model_only", {**model, "status": "reduced: the end-to-end batches and precision only"})

    if "processes" in args.parts and within_budget("processes"):
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the executor's --gpu check wants free memory on the device
        try:
            stored_units = units_of(stored_work)
            report.part("processes", processes_part(args, settings_for, stored_units, texts, model["rows"], out))
        except Exception as error:  # the other parts' figures still go out
            report.part("processes", {"status": f"failed: {type(error).__name__}: {str(error)[:300]}"})
            say(f"processes: failed: {type(error).__name__}: {error}")

    e2e: dict[str, Any] = {}
    if "memory" in args.parts and within_budget("memory"):
        peaks = [r for r in e2e.get("runs", []) if r.get("peak_gpu_allocated_bytes")]
        # What one image of a batch adds on the GPU when decode runs on the CPU: the embed step alone.
        per_image = max(
            (
                (r["peak_gpu_allocated_bytes"] - r["gpu_allocated_before_bytes"]) / r["batch"]
                for r in peaks
                if r["decode"] == "pil"
            ),
            default=0.0,
        )
        if args.device == "cuda" and not per_image:
            # Without the end-to-end runs: the embed step's need per image, from one shard with PIL.
            run = score_all(units[:1], settings_for(decode="pil", decode_workers=args.cpu_workers), oom)
            per_image = (run["peak_gpu_allocated_bytes"] - run["gpu_allocated_before_bytes"]) / run["batch"]
        memory: dict[str, Any] = {
            "peak_gpu_allocated_bytes": max((r["peak_gpu_allocated_bytes"] for r in peaks), default=None),
            "peak_gpu_reserved_bytes": max((r["peak_gpu_reserved_bytes"] for r in peaks), default=None),
            "oom_halving_fired_in_normal_runs": any(r["oom_halvings"] for r in e2e.get("runs", [])),
            "decoded_on_cpu_in_normal_runs": sum(r["decoded_on_cpu"] for r in e2e.get("runs", [])),
        }
        if args.device != "cuda":
            memory["peak"] = skip("peak GPU memory")
        memory["forced"] = forced_oom(args, settings_for, units, oom, per_image)
        report.part("memory", {"status": "done", **memory})

    if "end_to_end" in args.parts and within_budget("end_to_end"):
        e2e = end_to_end(args, settings_for, units, units_of(stored_work), oom, model["rows"], out)
        report.part("end_to_end", e2e)

    if "worker" in args.parts and within_budget("worker"):
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the worker's --gpu check wants free memory on the device
        # The worker's waits end in time for the verdict before the shell's `timeout` (budget + 70 s).
        args.worker_timeout = max(30.0, min(args.worker_timeout, deadline + 50 - time.perf_counter()))
        try:
            report.part("worker", worker_part(args, settings_for, units, out))
        except Exception as error:  # the other parts' figures still go out
            report.part("worker", {"status": f"failed: {type(error).__name__}: {str(error)[:300]}"})
            say(f"worker: failed: {type(error).__name__}: {error}")

    if "webdataset" in args.parts and within_budget("webdataset"):
        if importlib.util.find_spec("gcld3") is None:  # a webdataset's captions get their language from it
            report.part("webdataset", {"status": skip("registered webdataset", "skipped: gcld3 is not installed")})
        else:
            report.part("webdataset", webdataset_part(args, settings_for, units_of(stored_work), oom))

    verdict(report, args)
    return 0


def verdict(report: Report, args: argparse.Namespace) -> None:
    """The issue's targets against the best end-to-end run (nothing is claimed in a dry run)."""
    parts = report.data.get("parts", {})
    e2e = parts.get("end_to_end", {})
    # Web-photo sizes beside image_shards' 256-pixel JPEGs (what clip_pairs reads in production).
    best = {**e2e.get("best", {}), **e2e.get("stored", {}).get("best", {})}
    lines = []
    for run in parts.get("processes", {}).get("runs", []):
        lines.append(
            f"{run['processes_per_gpu']} process(es)/GPU, 256 px: {run['images_per_s']} images/s (target "
            f"{TARGET_IMAGES_PER_S}), ratio {run['ratio_to_one_process_model_only']} of one process's model-only, "
            f"{run['ratio_to_own_model_only']} of theirs (target {TARGET_RATIO})"
        )
    for key, run in sorted(best.items()):
        lines.append(
            f"{key}: {run['images_per_s']} images/s (target {TARGET_IMAGES_PER_S}), ratio "
            f"{run.get('ratio_to_model_only')} (target {TARGET_RATIO})"
        )
    webdataset = parts.get("webdataset", {})
    if webdataset.get("status") == "done":
        rates = webdataset["median_images_per_s"]
        lines.append(
            f"registered webdataset / own shards, 256 px: {rates['webdataset']} / {rates['own']} images/s = "
            f"{webdataset['ratio']} (target {TARGET_WEBDATASET_RATIO})"
        )
    report.data["verdict"] = ["dry run: no figure here is a measurement", *lines] if args.dry_run else lines
    done = [name for name, part in parts.items() if part.get("status") == "done"]
    report.data["parts_done"] = done
    report.save()
    for line in report.data["verdict"]:
        say(f"verdict: {line}")
    say(f"== clip_pairs_gpu done: parts {', '.join(done)}; JSON {report.out / 'clip_pairs_gpu.json'}")


if __name__ == "__main__":
    sys.exit(main())
