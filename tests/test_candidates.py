"""The candidates stage and asset against a generated crawl whose every expected row is known."""

import gzip
import os
import shutil
from collections import Counter

import dagster as dg
import pytest

from cah_assets.crawls import register_crawl_job
from cah_assets.partitions import segments
from cah_assets.resources import CandidateRules, CommonCrawl, DedupIndexResource, PageRulesResource, StorageResource
from cah_assets.stages.candidates import candidates
from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.language import LanguageDetector
from cah_resources.candidates.stage import (
    WatFileUnit,
    extract_pairs,
    extract_wat_file,
    label_pairs,
    output_paths,
    pair_uid,
    part_paths,
    summarize_parts,
)
from cah_resources.contract import CANDIDATES_SCHEMA, CandidatesStats, Damage, DropReason
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.crawl.segments import parse_segment_key, register_crawl


def _rows(table, columns=("url", "text", "page_url", "category", "wat_file")):
    return [tuple(row[c] for c in columns) for row in table.to_pylist()]


def _truth(rows, columns=("url", "text", "page_url", "category", "wat_file")):
    return [tuple(getattr(r, c) for c in columns) for r in rows]


def test_each_wat_file_yields_exactly_the_generated_candidates_and_drop_counts(sample_crawl):
    detector = LanguageDetector()
    for rel in sample_crawl.wat_paths:
        stats = CandidatesStats()
        pairs = extract_pairs(os.path.join(sample_crawl.root, rel), CandidateFilters(), stats)
        table = label_pairs(pairs, rel, detector)
        assert _rows(table) == _truth(sample_crawl.candidates[rel])
        assert stats == sample_crawl.counts[rel]


def _hostile_member(body: bytes, claimed: int) -> bytes:
    head = f"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: https://example.org/\r\nContent-Length: {claimed}\r\n"
    return gzip.compress(head.encode() + b"\r\n" + body + b"\r\n\r\n")


def test_too_deep_and_too_large_records_cost_only_themselves_in_a_wat_file(sample_crawl, data_root, tmp_path):
    # A record nested 100k levels deep and one claiming 10^12 bytes, ahead of a whole generated WAT file.
    rel = sample_crawl.wat_paths[0]
    deep = b'{"HTML-Metadata":1,"Envelope":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    hostile = _hostile_member(deep, len(deep)) + _hostile_member(b'{"HTML-Metadata":1}', 10**12)
    os.makedirs(os.path.dirname(tmp_path / "crawl" / rel))
    with open(tmp_path / "crawl" / rel, "wb") as out, open(os.path.join(sample_crawl.root, rel), "rb") as wat:
        out.write(hostile)
        shutil.copyfileobj(wat, out)
    unit = WatFileUnit("CC-MAIN-SAMPLE_00000", 0, rel, data_root, CrawlSource(base=str(tmp_path / "crawl")))
    stats = CandidatesStats.from_dict(extract_wat_file(unit))
    table = data_root.read_parquet(part_paths(data_root, "CC-MAIN-SAMPLE_00000", 0)[0])
    assert sorted(_rows(table)) == sorted(_truth(sample_crawl.candidates[rel]))
    expected = sample_crawl.counts[rel] + CandidatesStats(
        metadata_records=2, damage=Counter({Damage.TOO_DEEP: 1, Damage.TOO_LARGE: 1})
    )
    assert (stats.metadata_records, stats.html_pages, stats.links_seen, stats.alt_truncated) == (
        expected.metadata_records,
        expected.html_pages,
        expected.links_seen,
        expected.alt_truncated,
    )
    assert (stats.drops, stats.damage) == (expected.drops, expected.damage)
    assert summarize_parts([extract_wat_file(unit)]).damage[Damage.TOO_LARGE] == 1


def test_languages_are_labelled_with_code_and_probability(sample_crawl):
    rel = sample_crawl.wat_paths[0]
    pairs = extract_pairs(os.path.join(sample_crawl.root, rel), CandidateFilters(), CandidatesStats())
    table = label_pairs(pairs, rel, LanguageDetector())
    expected = {(r.url, r.text): r.language for r in sample_crawl.candidates[rel]}
    for row in table.to_pylist():
        if row["category"] == "nolang":
            assert expected[(row["url"], row["text"])] == ""
        else:
            assert row["language"] == expected[(row["url"], row["text"])]
            assert row["language_prob"] > 0.7


def test_gcld3_runs_once_per_distinct_text_and_never_on_dropped_links(sample_crawl):
    rel = sample_crawl.wat_paths[0]
    pairs = extract_pairs(os.path.join(sample_crawl.root, rel), CandidateFilters(), CandidatesStats())
    detector = LanguageDetector()
    label_pairs(pairs, rel, detector)
    distinct_texts = {text for _, text in pairs}
    assert len(distinct_texts) < len(pairs)  # the sample repeats captions, so caching is visible
    assert detector.calls == len(distinct_texts)


def test_uid_is_a_stable_hash_of_url_and_text():
    assert pair_uid("https://a.io/x.jpg", "a red car") == pair_uid("https://a.io/x.jpg", "a red car")
    assert pair_uid("https://a.io/x.jpg", "a red car") != pair_uid("https://a.io/x.jpg", "a red cars")
    assert len(pair_uid("u", "t")) == 32


def test_registration_fixes_the_files_of_every_segment_key(sample_crawl, data_root):
    source = CommonCrawl(base_url=sample_crawl.root).source()
    first = register_crawl(source, data_root, sample_crawl.crawl, files_per_segment=2)
    assert first.keys() == ["CC-MAIN-SAMPLE_00000", "CC-MAIN-SAMPLE_00001"]
    assert first.files_of("CC-MAIN-SAMPLE_00000") == sample_crawl.wat_paths[:2]
    assert first.files_of("CC-MAIN-SAMPLE_00001") == sample_crawl.wat_paths[2:]
    again = register_crawl(source, data_root, sample_crawl.crawl)
    assert again == first
    with pytest.raises(ValueError, match="would change what its keys mean"):
        register_crawl(source, data_root, sample_crawl.crawl, files_per_segment=3)


def test_bad_crawl_ids_and_keys_are_refused_in_one_line(sample_crawl, data_root):
    source = CommonCrawl(base_url=sample_crawl.root).source()
    for bad in ("CC/MAIN", "CC|1", "a,b", "x...y", "[x]", f"{sample_crawl.crawl}\n"):
        with pytest.raises(ValueError, match="not a usable crawl id"):
            register_crawl(source, data_root, bad)
    for bad_key in ("CC-MAIN-2024-10_00001\n", "CC-MAIN-2024-10_\u0660\u0660\u0660\u0660\u0661"):
        with pytest.raises(ValueError, match="is not a segment key"):
            parse_segment_key(bad_key)
    with pytest.raises(FileNotFoundError, match="not in"):
        register_crawl(source, data_root, "CC-MAIN-1999-01")


def _resources(sample_crawl, data_root, compute):
    return {
        "compute": compute,
        "common_crawl": CommonCrawl(base_url=sample_crawl.root),
        "storage": StorageResource(root=data_root.url),
        "candidate_rules": CandidateRules(),
        "page_rules": PageRulesResource(),
        "dedup_index": DedupIndexResource(),
    }


def test_register_job_adds_segments_as_dynamic_partitions(sample_crawl, data_root):
    instance = dg.DagsterInstance.ephemeral()
    resources = _resources(sample_crawl, data_root, None)
    for name in ("compute", "candidate_rules", "dedup_index"):
        resources.pop(name)
    config = {"ops": {"register_crawl_segments": {"config": {"crawl": sample_crawl.crawl, "files_per_segment": 1}}}}
    result = register_crawl_job.execute_in_process(run_config=config, instance=instance, resources=resources)
    assert result.success
    keys = instance.get_dynamic_partitions(segments.name)
    assert keys == [f"CC-MAIN-SAMPLE_{i:05d}" for i in range(3)]
    register_crawl_job.execute_in_process(run_config=config, instance=instance, resources=resources)
    assert instance.get_dynamic_partitions(segments.name) == keys


def test_materialized_segment_equals_the_ground_truth_and_reruns_identically(sample_crawl, data_root, local_compute):
    instance = dg.DagsterInstance.ephemeral()
    registration = register_crawl(CommonCrawl(base_url=sample_crawl.root).source(), data_root, sample_crawl.crawl, 2)
    instance.add_dynamic_partitions(segments.name, registration.keys())
    key = registration.keys()[0]
    result = dg.materialize(
        [candidates], partition_key=key, instance=instance, resources=_resources(sample_crawl, data_root, local_compute)
    )
    assert result.success
    table_path, stats_path = output_paths(data_root, key)
    table = data_root.read_parquet(table_path)
    assert table.schema == CANDIDATES_SCHEMA
    expected = sample_crawl.expected_segment(registration.files_of(key))
    assert sorted(_rows(table)) == sorted(_truth(expected))
    assert table.column("uid").to_pylist() == sorted(pair_uid(r.url, r.text) for r in expected)
    metadata = result.asset_materializations_for_node("candidates")[0].metadata
    truth = CandidatesStats.total(sample_crawl.counts[rel] for rel in registration.files_of(key))
    assert metadata["metadata_records"].value == truth.metadata_records
    assert metadata["html_pages"].value == truth.html_pages
    assert metadata["links_seen"].value == truth.links_seen
    assert metadata["candidates"].value == len(expected)
    assert sum(metadata[f"candidates_{c}"].value for c in ("en", "multi", "nolang")) == len(expected)
    assert metadata["malformed_records"].value == sum(truth.damage.values())
    on_disk = data_root.read_json(stats_path)
    stats = CandidatesStats.from_dict(on_disk)
    cross_file = sum(len(sample_crawl.candidates[rel]) for rel in registration.files_of(key)) - len(expected)
    assert stats.drops[DropReason.DUPLICATE] == truth.drops[DropReason.DUPLICATE] + cross_file
    assert on_disk["drop_duplicate"] == stats.drops[DropReason.DUPLICATE]  # stats.json keeps its flat drop_ keys
    assert stats.drops["svg"] == truth.drops["svg"] and stats.drops[DropReason.DATA_URL] == truth.drops["data_url"]
    first_bytes = table.to_pylist()
    again = dg.materialize(
        [candidates], partition_key=key, instance=instance, resources=_resources(sample_crawl, data_root, local_compute)
    )
    assert again.success
    assert data_root.read_parquet(table_path).to_pylist() == first_bytes


def test_generated_crawl_on_local_origins_still_matches_its_truth(tmp_path):
    from cah_resources.samples.sample_crawl import generate_crawl, parse_image_name

    crawl = generate_crawl(
        str(tmp_path),
        wat_files=1,
        seed=3,
        mismatch_rate=0.3,
        missing_rate=0.1,
        image_base=["http://127.0.0.2:8000"],
        page_base=["http://127.0.0.3:8000"],
    )
    rel = crawl.wat_paths[0]
    table = label_pairs(
        extract_pairs(os.path.join(crawl.root, rel), CandidateFilters(), CandidatesStats()), rel, LanguageDetector()
    )
    truth = crawl.candidates[rel]
    assert _rows(table) == _truth(truth)
    assert all(r.url.startswith(("http://127.0.0.2:8000/", "http://127.0.0.3:8000/")) for r in truth)
    for row in truth:
        stem = row.url.rsplit("/", 1)[1].split(".")[0]
        assert stem.startswith("missing-") != row.image_exists
        shown = parse_image_name(stem.removeprefix("missing-"))
        assert row.matches == (shown == (row.color, row.shape) and row.category != "nolang")
    assert 0 < sum(r.matches for r in truth) < len(truth)


def test_a_pair_claimed_by_an_earlier_segment_is_dropped_as_a_global_duplicate(tmp_path, local_compute):
    from cah_resources.samples.sample_crawl import generate_crawl

    crawl = generate_crawl(str(tmp_path / "crawl"), wat_files=2, pages_per_file=20, seed=1)
    root = StorageResource(root=str(tmp_path / "data")).data_root()
    registration = register_crawl(CommonCrawl(base_url=crawl.root).source(), root, crawl.crawl, 1)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, registration.keys())
    resources = _resources(crawl, root, local_compute)
    first, second = registration.keys()
    shared = {(r.url, r.text) for r in crawl.candidates[crawl.wat_paths[0]]} & {
        (r.url, r.text) for r in crawl.candidates[crawl.wat_paths[1]]
    }
    assert shared, "the generator repeats links across files"
    for key in (first, second, first):  # the rerun of the first keeps its claims
        assert dg.materialize([candidates], partition_key=key, instance=instance, resources=resources).success
    first_rows = {(r["url"], r["text"]) for r in root.read_parquet(output_paths(root, first)[0]).to_pylist()}
    second_rows = {(r["url"], r["text"]) for r in root.read_parquet(output_paths(root, second)[0]).to_pylist()}
    assert shared <= first_rows and not shared & second_rows
    assert len(first_rows) == len(crawl.candidates[crawl.wat_paths[0]])
    assert root.read_json(output_paths(root, second)[1])["drop_duplicate_global"] == len(shared)
