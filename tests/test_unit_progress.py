"""Progress inside a long unit: throttled lines, and their way from a Dask worker to the run."""

from cah_assets.resources import ComputeResource
from cah_resources.fleet.unit_progress import UnitProgress


def test_a_unit_reports_every_tenth_with_rate_and_eta_but_not_its_end():
    lines, now = [], [100.0]
    progress = UnitProgress("shard S/00000", 50, publish=lines.append, clock=lambda: now[0])
    for i in range(50):
        now[0] += 0.5
        progress.step(ok=i % 2 == 0)
    assert len(lines) == 9  # at 5, 10, ... 45 of 50; the 50th is the gather loop's to report
    assert lines[0] == "shard S/00000: 5/50 (10%), 3 images, 1.2 images/s, ETA 22 s"


def test_a_slow_unit_reports_every_30_seconds_between_tenths():
    lines, now = [], [0.0]
    progress = UnitProgress("u", 1000, publish=lines.append, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 31.0
        progress.step()
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == ["1/1,000", "2/1,000", "3/1,000"]


def _counting_unit(n: int) -> int:
    progress = UnitProgress(f"unit {n}", 20)
    for _ in range(20):
        progress.step()
    return n


def test_lines_a_unit_publishes_on_a_dask_worker_reach_the_runs_on_progress():
    heard: list[str] = []
    compute = ComputeResource(n_workers=1, processes=False)
    results = compute.run_units(_counting_unit, [1, 2], on_progress=heard.append)
    assert [r.value for r in results] == [1, 2]
    assert sorted(line.split(":")[0] for line in heard) == ["unit 1"] * 9 + ["unit 2"] * 9
