"""CPU per URL of one image_shards shard task on the real web's shape, and where it goes (py-spy).

    .venv/bin/python benchmarks/image_shards_profile.py --urls 3000              # CPU seconds per process
    py-spy record --nonblocking -r 250 -f raw --subprocesses -o benchmarks/.work/shard.txt -- \\
        .venv/bin/python benchmarks/image_shards_profile.py --urls 3000 > benchmarks/.work/shard.json  # as root
    .venv/bin/python benchmarks/image_shards_profile.py --breakdown benchmarks/.work/shard.txt \\
        --cpu benchmarks/.work/shard.json                                        # the split, ms per URL

``--nonblocking``: py-spy stopping the processes to sample them once cut the fake web's first line
(the URL list, hundreds of kilobytes on one pipe line) at 64 KiB, and the run died reading it.

One shard task (``download_shard`` as a Dask worker runs it: in the environment a Dask nanny gives
its workers, with its one image worker process) fetches ``--urls`` URLs of the benchmark's
web-photos regime: every URL on a hostname of its own behind the local DNS server (30-150 ms per
lookup), photos of 320x240 to 1200x800 (~95 KB JPEGs), 20-300 ms latency, the fake web's fault mix,
opt-out checks on. The fake web and the DNS server run in processes of their own (not counted).
Printed: CPU seconds of the shard process and of the image worker, per URL and per image.
``--breakdown`` sorts py-spy's raw stacks of such a run into the stage's steps (first matching rule
wins) and prints the share of samples and ms of CPU per URL.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# (step, substrings of a stack, any of which puts a sample there); checked in order, first match wins.
# A stack is matched with the source line of its innermost frame when that frame is this project's:
# C work called from our line (hashing, bytes.count) has no frame of its own.
STEPS = [
    ("idle", ["(epoll", "(selectors.py", "wait (threading", "_watch_cpu_budget", "exit_with_parent", "get (queue.py"]),
    ("importing (start-up)", ["<frozen importlib"]),
    ("encode", ["save (PIL", "_save (JpegImagePlugin", "_encode_tile"]),
    ("decode", ["load (PIL/ImageFile", "ImageFile.load", "WebPImageFile", "_open (", "draft (", "Image.open"]),
    ("resize, border, matte", ["_resize (", "resize (", "reduce (", "paste (", "new (PIL", "Image.new", "_matte_on"]),
    ("EXIF orientation", ["exif_transpose", "getexif"]),
    ("body hash", ["hexdigest", "sha256"]),
    ("JPEG scan count, truncation check", ["_scan_refusal", "_missing_data_refusal"]),
    ("image worker: other", ["process_image", "resizer.py", "_run_within_budget"]),
    (
        "pool hand-off (pickle, pipes, wake-ups)",
        ["run_in_executor", "_send_bytes", "_recv_bytes", "ForkingPickler", "futures/process.py", "queues.py"],
    ),
    ("DNS", ["dns.py", "aiodns", "pycares", "address_policy", "_lookup (cah_resources"]),
    ("connect", ["_create_connection", "create_connection", "_connect_sock", "start_connection"]),
    ("opt-outs (robots.txt, tdmrep.json)", ["opt_outs.py", "robotparser", "fetch_site_file"]),
    ("body read", ["read_body", "body_reader.py", "iter_any", "feed_data"]),
    ("tar / parquet write", ["shard_writer.py", "ustar_member", "write_parquet", "pyarrow"]),
    ("HTTP request/response (aiohttp)", ["aiohttp", "yarl", "multidict", "http_parser", "client_proto"]),
    ("bookkeeping (stage, downloader, asyncio)", ["stage.py", "downloader.py", "asyncio", "uvloop", "runners.py"]),
]


def leaf_source(stack: str) -> str:
    """The source line of a stack's innermost frame if it is in ``cah_resources``, else ''."""
    found = re.search(r"\((cah_resources/[^:()]+):(\d+)\)$", stack.rpartition(";")[2])
    return linecache.getline(str(HERE.parent / found[1]), int(found[2])).strip() if found else ""


def breakdown(path: Path, cpu: dict | None) -> None:
    """Samples of a py-spy raw file (``stack count`` lines) per process and step. py-spy samples
    threads that are running or runnable, so on a busy machine samples overstate CPU; with the
    run's printed JSON (``cpu``) each process's samples are scaled to its measured CPU seconds."""
    counts: dict[str, Counter[str]] = {"shard process": Counter(), "image worker": Counter()}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "cah_resources.samples.local_" in stack or "watch (image_shards_profile" in stack:
            continue  # the fake web, its DNS server and this script's CPU watcher: not the shard task
        role = "image worker" if "spawn_main" in stack else "shard process"
        stack += ";" + leaf_source(stack)
        step = next((name for name, keys in STEPS if any(k in stack for k in keys)), "other")
        counts[role][step] += int(n)
    measured = {"shard process": "shard_process_cpu_s", "image worker": "image_worker_cpu_s"}
    for role, steps in counts.items():
        busy = sum(n for step, n in steps.items() if step not in ("idle", "importing (start-up)"))
        seconds = cpu[measured[role]] if cpu else None
        print(f"{role}: {busy} busy samples" + (f", {seconds} CPU s measured" if seconds else ""))
        for step, n in steps.most_common():
            if step in ("idle", "importing (start-up)"):
                continue  # not in the measured CPU: waiting, or before the measurement began
            ms = f"{1000 * seconds * n / busy / cpu['urls']:6.2f} ms per URL" if seconds else ""
            print(f"  {step:45s} {n:7d}  {100 * n / busy:5.1f}%  {ms}")


def ssim(a, b) -> float:
    """Mean SSIM of two greyscale arrays (Wang et al. 2004; 7x7 uniform windows, as scikit-image's default)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    a, b = a.astype(np.float64), b.astype(np.float64)

    def mean(x):
        return sliding_window_view(x, (7, 7)).mean(axis=(-1, -2))

    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b = mean(a * a) - mu_a**2, mean(b * b) - mu_b**2
    cov = mean(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())


def quality(baseline: Path) -> None:
    """SSIM and PSNR of the stored images against a full-quality reference, for this tree's resizer and
    ``baseline`` (an older resizer.py, e.g. ``git show main:cah_resources/image_shards/resizer.py``).

    The reference decodes every picture at full scale (no JPEG draft), applies its EXIF orientation
    and shrinks it with Lanczos straight to the target, on the same white border; images are the
    fake web's photos in every served format, at web-photo and web-sized sizes.
    """
    import importlib.util
    import io

    import numpy as np
    from PIL import Image, ImageOps

    from cah_resources.image_shards import resizer
    from cah_resources.samples.local_web import WEB_IMAGE_SIZES, WEB_PHOTO_SIZES, LocalImageWeb

    spec = importlib.util.spec_from_file_location("baseline_resizer", baseline)
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up while the class is made
    spec.loader.exec_module(old)
    settings = resizer.ResizeSettings(resize_mode="border", image_size=256, max_aspect_ratio=10)
    old_settings = old.ResizeSettings(resize_mode="border", image_size=256, max_aspect_ratio=10)

    def reference(body: bytes) -> Image.Image:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(body)))
        if img.mode == "RGBA":
            img = img.resize(resizer._target_size(*img.size, settings), Image.Resampling.LANCZOS)
            return resizer._matte_on_white(resizer._resize(img, settings))
        img = img.convert("RGB")
        shrunk = img.resize(resizer._target_size(*img.size, settings), Image.Resampling.LANCZOS)
        return resizer._resize(shrunk, settings)

    def grey(img: Image.Image):
        return np.asarray(img.convert("L"), dtype=np.float64)

    scores: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
    identical = 0
    for sizes in (WEB_PHOTO_SIZES, WEB_IMAGE_SIZES):
        web = LocalImageWeb(1, image_sizes=sizes)
        for kind in ("jpeg", "jpeg_exif_rotated", "png", "png_alpha", "webp"):
            for variant in range(len(sizes)):
                body = web.body(kind, variant)
                ref = grey(reference(body))
                new_jpeg = resizer.process_image(body, settings).jpeg
                old_jpeg = old.process_image(body, old_settings).jpeg
                identical += new_jpeg == old_jpeg
                for name, jpeg in (("baseline", old_jpeg), ("this tree", new_jpeg)):
                    out = grey(Image.open(io.BytesIO(jpeg)))
                    mse = float(((out - ref) ** 2).mean())
                    scores[name].append((ssim(out, ref), 10 * np.log10(255**2 / mse) if mse else 99.0))
    total = len(scores["baseline"])
    print(f"{total} images, {identical} stored byte for byte as the baseline stores them")
    for name, pairs in scores.items():
        ssims, psnrs = [p[0] for p in pairs], [p[1] for p in pairs]
        print(
            f"  {name:10s} SSIM vs full-quality reference: mean {np.mean(ssims):.4f}, min {min(ssims):.4f}; "
            f"PSNR mean {np.mean(psnrs):.2f} dB, min {min(psnrs):.2f} dB"
        )
    worse = sum(n[0] < o[0] - 1e-4 for o, n in zip(scores["baseline"], scores["this tree"], strict=True))
    print(f"  images with a lower SSIM than the baseline's (by > 1e-4): {worse}")


def run_as_a_dask_worker_does() -> None:
    """Run this script again in a child with the environment a Dask nanny gives its workers, unless it has it.

    ``MALLOC_TRIM_THRESHOLD_`` among it changes how malloc serves large blocks in the shard's process
    and in the image workers, which inherit it: a profile without it missed a fifth of their CPU.
    A child, not ``exec``: py-spy follows subprocesses, but loses a process that replaces itself.
    """
    import distributed  # noqa: F401  (loads the nanny's defaults into dask's config)
    from dask import config

    environ = {name: str(value) for name, value in config.get("distributed.nanny.pre-spawn-environ").items()}
    if any(os.environ.get(name) != value for name, value in environ.items()):
        child = subprocess.run([sys.executable, *sys.argv], env={**os.environ, **environ}, check=False)
        sys.exit(child.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--literals", action="store_true", help="the same URLs on the fake web's 64 IP-literal hosts")
    parser.add_argument(
        "--own-origins", action="store_true", help="the same URLs each on an IP-literal origin of its own"
    )
    parser.add_argument("--sizes", choices=["web-photos", "thumbnails", "web-sized"], default="web-photos")
    parser.add_argument("--no-opt-outs", action="store_true")
    parser.add_argument("--breakdown", type=Path, help="a py-spy raw file to sort into steps")
    parser.add_argument("--quality", type=Path, metavar="OLD_RESIZER", help="SSIM of this resizer and an older one")
    parser.add_argument("--cpu", type=Path, help="with --breakdown: the JSON line that run printed (ms per URL)")
    args = parser.parse_args()
    if args.quality:
        quality(args.quality)
        return
    if args.breakdown:
        # The run's JSON line; py-spy writes its own lines to the same stdout.
        lines = args.cpu.read_text().splitlines() if args.cpu else []
        breakdown(args.breakdown, next((json.loads(ln) for ln in reversed(lines) if ln.startswith("{")), None))
        return

    run_as_a_dask_worker_does()
    import pyarrow as pa
    from image_shards_bench import IMAGE_SIZE, PER_HOST, RETRIES, TIMEOUT_S, WORK, FakeWeb

    from cah_resources.candidates.stage import output_paths, pair_uid
    from cah_resources.contract import CANDIDATES_SCHEMA, COUNT, SUCCESSES, URL_ATTRIBUTE_SRC
    from cah_resources.image_shards.downloader import FetchSettings
    from cah_resources.image_shards.resizer import ResizeSettings
    from cah_resources.image_shards.stage import ShardSettings, download_shard, plan_shards
    from cah_resources.storage import DataRoot

    web = FakeWeb(args.urls, 64, (0.02, 0.3), args.seed, args.sizes, hostnames=True)
    try:
        named = not (args.literals or args.own_origins)
        urls = [u for u, _, _ in web.urls]
        urls = web.own_origin_urls if args.own_origins else web.literal_urls if args.literals else urls
        WORK.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            root = DataRoot(tmp)
            rows = sorted(
                (
                    {
                        "uid": pair_uid(u, f"caption {i}"),
                        "url": u,
                        "text": f"caption {i}",
                        "page_url": "http://pages/",
                        "category": "en",
                        "language": "en",
                        "language_prob": 0.9,
                        "wat_file": "bench",
                        "url_attribute": URL_ATTRIBUTE_SRC,
                    }
                    for i, u in enumerate(urls)
                ),
                key=lambda r: r["uid"],
            )
            root.write_parquet(output_paths(root, "PROFILE")[0], pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA))
            checks = not args.no_opt_outs
            settings = ShardSettings(
                fetch=FetchSettings(
                    connect_timeout=TIMEOUT_S,
                    read_timeout=TIMEOUT_S,
                    total_timeout=TIMEOUT_S,
                    retries=RETRIES,
                    per_host_connections=PER_HOST,
                    allowed_networks=("127.0.0.0/8",),
                    nameservers=(web.nameserver,) if named else (),
                    honour_robots_txt=checks,
                    honour_tdmrep=checks,
                    honour_robots_noai=checks,
                ),
                resize=ResizeSettings(resize_mode="border", image_size=IMAGE_SIZE, max_aspect_ratio=10),
                shard_size=len(urls),
            )
            (unit,) = plan_shards(root, "PROFILE", settings.shard_size)
            me = psutil.Process()
            # The fake web and its DNS server are this process's children too: not the shard's CPU.
            simulation = {p.pid for p in (web.process, web.dns, *web.own_webs) if p is not None}
            children: dict[int, psutil.Process] = {}
            cpu_children: dict[int, float] = {}
            before = me.cpu_times()
            started = time.perf_counter()
            import threading

            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    for child in me.children(recursive=True):
                        if child.pid not in simulation:
                            children.setdefault(child.pid, child)
                    for pid, child in list(children.items()):
                        try:
                            times = child.cpu_times()
                            cpu_children[pid] = times.user + times.system
                        except psutil.Error:
                            pass
                    stop.wait(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            marker = download_shard(unit, settings)
            wall = time.perf_counter() - started
            stop.set()
            watcher.join()
            after = me.cpu_times()
            main_cpu = (after.user - before.user) + (after.system - before.system)
            pool_cpu = sum(cpu_children.values())
            ok, count = marker[SUCCESSES], marker[COUNT]
            print(
                json.dumps(
                    {
                        "urls": count,
                        "images": ok,
                        "wall_s": round(wall, 2),
                        "shard_process_cpu_s": round(main_cpu, 2),
                        "image_worker_cpu_s": round(pool_cpu, 2),
                        "ms_per_url_shard_process": round(1000 * main_cpu / count, 3),
                        "ms_per_image_image_worker": round(1000 * pool_cpu / max(ok, 1), 3),
                        "ms_per_image_total": round(1000 * (main_cpu + pool_cpu) / max(ok, 1), 3),
                        "loadavg": os.getloadavg()[0],
                        "statuses": dict(sorted(marker["status_counts"].items())),
                    }
                ),
                flush=True,
            )
    finally:
        web.close()


if __name__ == "__main__":
    main()
