"""The contract's vocabulary: statuses and stats spelled once, stats that add up, older files that still load."""

import ast
import json
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pyarrow as pa

from cah_resources import vocabulary
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    CLIP_FIELDS,
    COUNT,
    DOWNLOAD_FIELDS,
    STAGES,
    SUCCESSES,
    CandidatesStats,
    ClipStats,
    ClipStatus,
    Damage,
    DownloadStatus,
    DropReason,
    OptOutSignal,
    PageScoreStats,
    ShardStats,
)

REPO = Path(__file__).resolve().parents[1]
STATS = (CandidatesStats, ShardStats, ClipStats, PageScoreStats)
STATUS_WORDS = {str(m) for e in (DownloadStatus, ClipStatus, DropReason, Damage, OptOutSignal) for m in e}
# Stat names made of several words (metadata_records, status_counts, task_seconds, dns_lookups, ...):
# one-word ones (count, pairs, segment) are plain words elsewhere, and column names are the schemas'.
COLUMNS = {*CANDIDATES_SCHEMA.names, *DOWNLOAD_FIELDS.names, *CLIP_FIELDS.names}
STAT_WORDS = {f.name for cls in STATS for f in fields(cls) if "_" in f.name} - COLUMNS
# Other vocabularies that share a word with a status, each of them its own thing:
ELSEWHERE = {
    # the fake web's URL kinds are named after the outcome they provoke
    "cah_resources/samples/local_web.py": {"redirect_loop", "robots_noai", "tdmrep", "robots_txt"},
    # the sample crawl's link and damage kinds
    "cah_resources/samples/sample_crawl.py": {"data_url", "no_alt", "duplicate", "corrupt_gzip"},
    # the sample WARC crawl's image kinds
    "cah_resources/samples/sample_warc.py": {"no_alt", "duplicate"},
    # FetchSettings.dns_timeout, a setting named after what it bounds
    "cah_resources/image_shards/downloader.py": {"dns_timeout"},
    "cah_assets/resources.py": {"dns_timeout"},
    # a candidates check's count of rows whose category is unknown; a clip check's count of scored rows
    "cah_resources/candidates/checks.py": {"unknown_category"},
    "cah_resources/clip_pairs/checks.py": {"scored"},
    # keys of a worker's own report and of a thread's result box; SQLite's connect argument
    "cah_resources/fleet/cuda_devices.py": {"error"},
    "cah_assets/rehearsal.py": {"error"},
    "cah_resources/dataset/dedup_index.py": {"timeout"},
}


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are neither docstrings nor pieces of an f-string."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skipped.add(id(first.value))
        if isinstance(node, ast.JoinedStr):
            skipped.update(id(part) for part in node.values)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped
    ]


def test_no_status_or_stat_name_is_a_string_literal_outside_the_vocabulary():
    found = []
    for path in sorted([*REPO.glob("cah_resources/**/*.py"), *REPO.glob("cah_assets/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel == "cah_resources/vocabulary.py":
            continue
        allowed = ELSEWHERE.get(rel, set())
        found += [
            f"{rel}:{line}: {value!r}"
            for line, value in _string_literals(path)
            if value in (STATUS_WORDS | STAT_WORDS) - allowed
        ]
    assert found == [], "spell these through the vocabulary (DownloadStatus.OK, stats.task_seconds, ...)"


def test_the_scan_catches_a_status_typed_as_a_literal(tmp_path):
    module = tmp_path / "stage.py"
    module.write_text('"""A module."""\n\nok = row["status"] == "ok"\nseconds = stats["task_seconds"]\n')
    assert [v for _, v in _string_literals(module) if v in STATUS_WORDS | STAT_WORDS] == ["ok", "task_seconds"]


def test_statuses_are_written_as_the_same_strings_as_before():
    assert (DownloadStatus.OK, ClipStatus.SCORED, DropReason.DUPLICATE, Damage.CORRUPT_GZIP) == (
        "ok",
        "scored",
        "duplicate",
        "corrupt_gzip",
    )
    assert json.dumps({DownloadStatus.DNS_ERROR: [DownloadStatus.OK]}) == '{"dns_error": ["ok"]}'
    assert pa.array([ClipStatus.IMAGE_MISSING], pa.string()).to_pylist() == ["image_missing"]


def test_markers_of_older_builds_read_their_task_time_under_its_one_name():
    shard = ShardStats.from_dict({COUNT: 3, SUCCESSES: 2, "duration": 9.0, "download_seconds": 7.5})
    clip = ClipStats.from_dict({"pairs": 2, "seconds": 4.0, "pairs_per_s": 0.5})
    part = CandidatesStats.from_dict({"metadata_records": 5, "seconds": 1.25, "drop_svg": 2})
    assert (shard.task_seconds, clip.task_seconds, part.task_seconds) == (7.5, 4.0, 1.25)
    assert "duration" not in shard.to_dict() and shard.to_dict()["task_seconds"] == 7.5


def test_candidates_stats_keep_their_flat_keys_on_disk_and_read_back_typed():
    stats = CandidatesStats(
        links_seen=9,
        candidates=4,
        categories=Counter(en=3, multi=1, nolang=0),
        drops=Counter({DropReason.NO_ALT: 2, "svg": 3}),
        damage=Counter({Damage.LINK: 1}),
    )
    on_disk = stats.to_dict()
    assert {
        k: on_disk[k] for k in ("drop_no_alt", "drop_svg", "malformed_link", "candidates_en", "candidates_nolang")
    } == {
        "drop_no_alt": 2,
        "drop_svg": 3,
        "malformed_link": 1,
        "candidates_en": 3,
        "candidates_nolang": 0,
    }
    assert CandidatesStats.from_dict(json.loads(json.dumps(on_disk))) == stats


def test_shard_stats_add_up_counters_peaks_and_claims():
    a = ShardStats(
        count=3,
        successes=2,
        status_counts=Counter(ok=2, http_404=1),
        dns_peak_in_flight=4,
        start_time=10.0,
        end_time=12.0,
        opt_out_signals=["robots_noai", "robots_txt"],
        blocklists=[{"kind": "image", "source": "b", "entries": 1, "sha256": "2"}],
    )
    b = ShardStats(
        count=2,
        successes=1,
        status_counts=Counter(ok=1, timeout=1),
        dns_peak_in_flight=7,
        start_time=9.0,
        end_time=11.0,
        opt_out_signals=["robots_txt"],
        blocklists=[{"kind": "image", "source": "a", "entries": 1, "sha256": "1"}],
    )
    total = ShardStats.total([a, b])
    assert (total.count, total.successes, total.success_rate) == (5, 3, 0.6)
    assert total.status_counts == {"ok": 3, "http_404": 1, "timeout": 1}
    assert (total.dns_peak_in_flight, total.start_time, total.end_time) == (7, 9.0, 12.0)
    assert total.opt_out_signals == ["robots_txt"]  # what every shard honoured, no more
    assert [b["source"] for b in total.blocklists] == ["a", "b"]


def test_clip_stats_add_histograms_and_leave_out_one_binned_otherwise():
    one = ClipStats(scored=Counter(en=2), kept=Counter(en=1), histogram=[1] * 200, task_seconds=2.0)
    old = ClipStats.from_dict({"scored": {"en": 4}, "histogram": [1] * 100, "seconds": 2.0})
    total = one + old
    assert (total.pairs_scored, total.pairs_kept, total.kept_rate, total.shard_pairs_per_s) == (6, 1, 0.1667, 1.5)
    assert total.histogram == [1] * 200


def test_the_names_other_code_keys_by_are_the_stats_fields():
    shard_fields = {f.name for f in fields(ShardStats)}
    assert {COUNT, SUCCESSES, *ShardStats.FROM_ROWS} <= shard_fields and vocabulary.COUNT == COUNT
    assert set(CandidatesStats.HEADLINE) <= {f.name for f in fields(CandidatesStats)}
    assert set(ClipStats.HEADLINE) <= set(ClipStats().metadata())
    assert set(STAGES).isdisjoint(STAT_WORDS)
