"""malloc keeps freed buffers for reuse in image workers and, while shards run, in the shard's process.

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` and the processes they start
inherit it; with it glibc maps and unmaps every large buffer, so each image faulted its pages in
again. Page faults are counted in processes of their own: the thresholds are process-wide.
"""

import subprocess
import sys
import textwrap

from shard_inputs import SETTINGS

from cah_resources.image_shards.image_pool import ImageWorkers

DASK_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "65536"}

# Minor page faults per 4 MiB buffer made, filled and freed 50 times in a row (one expression, so
# that an image worker can evaluate it); a buffer of fresh pages is 1,024 faults.
FAULTS_PER_BUFFER = (
    "(lambda resource: (lambda before: sum(len(bytearray(4 << 20)) for _ in range(50))"
    " and (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)"
    "(resource.getrusage(resource.RUSAGE_SELF).ru_minflt))(__import__('resource'))"
)


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return done.stdout


def test_image_workers_started_under_dasks_setting_reuse_freed_buffers(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", DASK_MALLOC["MALLOC_TRIM_THRESHOLD_"])
    assert float(run_python(f"print({FAULTS_PER_BUFFER})")) > 500  # what a process with it alone does
    with ImageWorkers(SETTINGS.image_processes) as workers:
        faults = workers.executor.submit(eval, FAULTS_PER_BUFFER).result()
    assert faults < 50


def test_a_shard_process_reuses_freed_buffers_while_shards_run_and_gives_them_back_after(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", DASK_MALLOC["MALLOC_TRIM_THRESHOLD_"])
    out = run_python(
        f"""
        import threading
        from cah_resources.freed_memory import freed_memory_kept
        faults = lambda: {FAULTS_PER_BUFFER}
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = {{"before": faults()}}

        def first():
            with freed_memory_kept():
                first_in.set()
                second_in.wait(10)
            first_out.set()

        def second():
            first_in.wait(10)
            with freed_memory_kept():
                second_in.set()
                first_out.wait(10)
                seen["after the first left"] = faults()
            seen["after both left"] = faults()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        print(seen)
        """
    )
    seen = eval(out)
    assert seen["before"] > 500
    assert seen["after the first left"] < 50
    assert seen["after both left"] > 500  # Dask's setting is back once no shard runs


def test_clip_pairs_reuses_freed_buffers_while_it_scores_a_shard_and_gives_them_back_after(monkeypatch, tmp_path):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", DASK_MALLOC["MALLOC_TRIM_THRESHOLD_"])
    out = run_python(
        f"""
        from cah_assets.resources import ClipScorer
        from cah_resources.clip_pairs import stage
        from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
        from cah_resources.storage import DataRoot

        faults = lambda: {FAULTS_PER_BUFFER}
        seen = {{"before": faults()}}
        root, segment = DataRoot({str(tmp_path / "data")!r}), "CC-MAIN-2024-10_00007"
        pairs = sample_pairs(8, seed=0, size=256)
        write_image_shard(root, segment, 0, [ShardSample(caption, jpeg, "en", "en") for _, _, caption, jpeg in pairs])
        read_images = stage.iter_tar_images

        def observed(*args, **kwargs):  # the scorer reads the shard's images: it is scoring now
            seen["while scoring"] = faults()
            yield from read_images(*args, **kwargs)

        stage.iter_tar_images = observed
        summary = stage.score_image_shard(stage.ClipPairsUnit(root, segment, 0), ClipScorer.tiny().settings())
        seen["after"] = faults()
        print({{**seen, "pairs": summary["pairs"]}})
        """
    )
    seen = eval(out)
    assert seen["pairs"] == 8
    assert seen["before"] > 500
    assert seen["while scoring"] < 50
    assert seen["after"] > 500  # Dask's setting is back once no shard is scored
