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


def faults_around_scoring(monkeypatch, setup: str, module: str, observed: str, call: str) -> dict:
    """Faults per buffer under Dask's setting in a fresh process, before and while ``module.observed``
    (called by the stage as it scores) runs; the setting's holders then and after ``call``, whose
    result is printed as "summary".

    Not faults after: malloc serves a request from a free heap chunk that fits before its mmap
    threshold applies, and the model's and the decoders' freed memory can leave one of 4 MiB, which
    is then faulted in once and reused whatever the thresholds. That the last holder out restores
    them is the two-holder test's.
    """
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", DASK_MALLOC["MALLOC_TRIM_THRESHOLD_"])
    script = f"""
import {module} as observed_module
from cah_resources.freed_memory import freed_memory_setting
faults = lambda: {FAULTS_PER_BUFFER}
seen = {{"before": faults()}}
{setup}
original = observed_module.{observed}

def observed(*args, **kwargs):
    seen["while scoring"] = faults()
    seen["holders while scoring"] = freed_memory_setting.holders
    return original(*args, **kwargs)

observed_module.{observed} = observed
summary = {call}
seen["holders after"] = freed_memory_setting.holders
print({{**seen, "summary": summary}})
"""
    return eval(run_python(script))


def assert_freed_memory_kept_while_scoring(seen: dict) -> None:
    """Dask's setting before; freed buffers reused while the stage scores (it holds the setting); given back after."""
    assert seen["before"] > 500
    assert seen["while scoring"] < 50
    assert seen["holders while scoring"] == 1
    assert seen["holders after"] == 0


def test_clip_pairs_reuses_freed_buffers_while_it_scores_a_shard_and_gives_them_back_after(monkeypatch, tmp_path):
    setup = f"""
from cah_assets.resources import ClipScorer
from cah_resources.clip_pairs.stage import ClipPairsUnit, score_image_shard
from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot
root, segment = DataRoot({str(tmp_path / "data")!r}), "CC-MAIN-2024-10_00007"
pairs = sample_pairs(8, seed=0, size=256)
write_image_shard(root, segment, 0, [ShardSample(caption, jpeg, "en", "en") for _, _, caption, jpeg in pairs])
"""
    call = 'score_image_shard(ClipPairsUnit(root, segment, 0), ClipScorer.tiny().settings())["pairs"]'
    # The scorer reads the shard's images from the tar as it scores them.
    seen = faults_around_scoring(monkeypatch, setup, "cah_resources.clip_pairs.stage", "iter_tar_images", call)
    assert seen["summary"] == 8
    assert_freed_memory_kept_while_scoring(seen)


def test_page_scores_reuses_freed_buffers_while_it_scores_a_file(monkeypatch, tmp_path):
    setup = f"""
from cah_resources.page_scores.settings import ClassifierSettings
from cah_resources.page_scores.stage import PageScoresUnit, score_page_file
from cah_resources.samples.sample_pages import write_page_dataset
from cah_resources.samples.tiny_text_classifier import TINY_TEXT_CLASSIFIER
from cah_resources.storage import DataRoot
(source,) = write_page_dataset({str(tmp_path / "pages")!r}, files=1, pages_per_file=40)
unit = PageScoresUnit(DataRoot({str(tmp_path / "data")!r}), "pages-test_00000", 0, source, "text")
"""
    call = 'score_page_file(unit, ClassifierSettings(model=str(TINY_TEXT_CLASSIFIER), device="cpu"))["pages"]'
    seen = faults_around_scoring(monkeypatch, setup, "cah_resources.page_scores.classifier", "score_window", call)
    assert seen["summary"] == 40
    assert_freed_memory_kept_while_scoring(seen)
