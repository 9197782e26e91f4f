"""benchmarks/clip_pairs_gpu.sh, the one script a device session runs, runs end to end as a CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "clip_pairs_gpu.sh"
# Seven Python processes import torch (driver, `cah worker` and its Dask worker, `cah worker --gpu`,
# the two-process GPU executor); on two busy shared cores that alone can take minutes.
LIMIT_S = 900


def _dry_run(tmp_path_factory: pytest.TempPathFactory, *options: str) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("clip_pairs_gpu") / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CLIP_PAIRS_GPU_TIMEOUT_S": str(LIMIT_S - 30)}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--device", "cpu", "--budget-s", str(LIMIT_S - 120), *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "clip_pairs_gpu.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    return _dry_run(tmp_path_factory)


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_is_labelled_and_completes_every_part(dry_run: tuple[dict, str]) -> None:
    report, stdout = dry_run
    assert report["dry_run"] is True
    assert report["label"].startswith("DRY RUN")
    assert report["parts_done"] == ["model_only", "processes", "memory", "end_to_end", "worker", "webdataset"]
    assert "verdict: dry run: no figure here is a measurement" in stdout


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_says_which_gpu_steps_it_skipped(dry_run: tuple[dict, str]) -> None:
    report, stdout = dry_run
    skipped = [line for line in stdout.splitlines() if line.endswith("skipped: no CUDA")]
    assert any("model-only bf16/fp16" in line for line in skipped)
    assert any("nvJPEG" in line for line in skipped)
    assert any("forced OOM" in line for line in skipped)
    assert any("cah worker --gpu" in line for line in skipped)
    assert report["parts"]["worker"]["gpu_refused"]["rc"] == 2


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_scores_every_row_in_every_end_to_end_run(dry_run: tuple[dict, str]) -> None:
    report, _ = dry_run
    e2e = report["parts"]["end_to_end"]
    images = report["inputs"]["images"]
    assert {run["mode"] for run in e2e["runs"]} == {"torch_decode_on_cpu", "cpu_decode"}
    assert all(run["rows"] == run["scored"] == images for run in e2e["runs"])
    assert all(run["ratio_to_model_only"] > 0 for run in e2e["runs"])
    stored = e2e["stored"]["runs"]
    assert {run["mode"] for run in stored} == {"torch_decode_on_cpu_256px", "cpu_decode_256px"}
    assert all(run["rows"] == run["scored"] == report["inputs_256px"]["images"] == images for run in stored)
    assert report["inputs_256px"]["mean_megapixels"] == round(256 * 256 / 1e6, 3)
    forced = report["parts"]["memory"]["forced"]["runs"]
    assert [run["decode"] for run in forced] == ["torch", "pil"]
    assert all(run["every_row_scored"] for run in forced)
    assert all(run["decoded_on_cpu"] == 0 and run["oom_halvings"] == 0 for run in forced)  # uncapped on the CPU
    assert report["parts"]["memory"]["decoded_on_cpu_in_normal_runs"] == 0


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_starts_n_processes_per_gpu_and_scores_every_shard_through_them(dry_run: tuple[dict, str]) -> None:
    report, stdout = dry_run
    (run,) = report["parts"]["processes"]["runs"]
    assert run["processes_per_gpu"] == 2
    assert run["workers"] == {"p2-gpu0-0": {"GPU": 1}, "p2-gpu0-1": {"GPU": 1}}
    assert run["rows"] == run["scored"] == report["inputs_256px"]["images"] and run["every_row_scored"]
    assert sum(run["shards_by_worker"].values()) == report["inputs_256px"]["shards"]
    assert run["model_only_pairs_per_s"] > 0 and run["images_per_s"] > 0
    assert "verdict: 2 process(es)/GPU, 256 px:" in stdout


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_scores_the_shards_as_a_registered_webdataset_beside_own_shards(dry_run: tuple[dict, str]) -> None:
    report, stdout = dry_run
    part = report["parts"]["webdataset"]
    assert {run["route"] for run in part["runs"]} == {"own", "webdataset"}
    assert all(run["rows"] == run["scored"] == report["inputs_256px"]["images"] for run in part["runs"])
    assert part["every_run_scored_every_row"] and part["ratio"] > 0
    assert "verdict: registered webdataset / own shards, 256 px:" in stdout


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_runs_the_text_classifier_benchmark_or_says_it_is_missing(dry_run: tuple[dict, str]) -> None:
    _, stdout = dry_run
    bench = REPO / "benchmarks" / "page_scores_bench.py"
    if bench.exists():
        assert "== page_scores: benchmarks/page_scores_bench.py --dry-run --device cpu" in stdout
    else:
        assert "== page_scores: skipped: benchmarks/page_scores_bench.py is not in this tree yet" in stdout


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_worker_joins_the_scheduler_and_scores_a_shard(dry_run: tuple[dict, str]) -> None:
    worker = dry_run[0]["parts"]["worker"]
    assert worker["status"] == "done"
    assert worker["scored_by"] == "bench-0"
    assert worker["every_row_scored"] is True
    assert worker["worker_rc"] == 0


@pytest.mark.timeout(LIMIT_S + 60)
def test_dry_run_writes_a_profile_per_decode_path(dry_run: tuple[dict, str]) -> None:
    profiles = dry_run[0]["parts"]["end_to_end"]["profiles"]
    for name, profile in profiles.items():
        assert profile["cah.model"]["calls"] >= 1, name
        assert profile["cah.tokenize"]["calls"] >= 1, name
    assert profiles["cpu_decode"]["cah.decode_cpu"]["calls"] == dry_run[0]["args"]["shard_size"]


@pytest.mark.timeout(LIMIT_S + 60)
def test_parts_runs_only_the_parts_asked_for_with_the_model_timed_for_the_ratio(tmp_path_factory):
    report, stdout = _dry_run(tmp_path_factory, "--parts", "end_to_end", "memory")

    assert report["parts_done"] == ["memory", "end_to_end"]
    assert "worker" not in report["parts"] and "cah worker" not in stdout
    assert report["parts"]["model_only"]["status"].startswith("reduced")
    assert [row["batch"] for row in report["parts"]["model_only"]["rows"]] == report["args"]["e2e_batches"]
    assert all(run["ratio_to_model_only"] > 0 for run in report["parts"]["end_to_end"]["runs"])
