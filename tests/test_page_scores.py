"""page_scores: the shipped tiny classifier through transformers, length-sorted batches, scored Parquet out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from s3_peer import new_bucket_root, s3_endpoint
from stops import files_under, stopped_on_open

from cah_resources.contract import PAGE_SCORE_FIELDS, SCORE_EDGES, PageScoreStats
from cah_resources.page_scores.classifier import int_scores, load_classifier, score_texts, sorted_batches, tokenize
from cah_resources.page_scores.settings import ClassifierSettings
from cah_resources.page_scores.stage import PageScoresUnit, score_page_file, summarize
from cah_resources.samples.sample_pages import pages_table, write_page_dataset
from cah_resources.samples.tiny_text_classifier import TINY_TEXT_CLASSIFIER
from cah_resources.samples.tiny_text_classifier.texts import LANGUAGES, pages
from cah_resources.storage import TEMPORARY, DataRoot

REPO = Path(__file__).resolve().parents[1]
TINY = ClassifierSettings(model=str(TINY_TEXT_CLASSIFIER), device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return load_classifier(TINY)


@pytest.fixture(scope="module")
def s3_peer():
    with s3_endpoint() as endpoint:
        yield endpoint


def test_the_tiny_classifier_is_a_few_mb_and_loads_as_a_users_checkpoint_would(tiny):
    from transformers import AutoConfig

    size = sum(f.stat().st_size for f in TINY_TEXT_CLASSIFIER.iterdir())
    config = AutoConfig.from_pretrained(TINY_TEXT_CLASSIFIER)
    assert size < 8e6
    assert (TINY_TEXT_CLASSIFIER / "model.safetensors").exists() and (TINY_TEXT_CLASSIFIER / "tokenizer.json").exists()
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert type(tiny.loaded.model).__name__ == "BertForSequenceClassification" and tiny.loaded.tokenizer.is_fast
    assert tiny.revision.startswith("sha256:")


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_tiny_classifier_keeps_teaching_pages_and_drops_the_rest(tiny, language):
    held_out = [p for p in pages(400, seed=4242, languages=(language,)) if abs(p.value - 3) >= 1]
    scores = score_texts(tiny, TINY, [p.text for p in held_out])
    agree = np.mean([(s >= 3) == (p.value >= 3) for s, p in zip(scores, held_out, strict=True)])
    assert agree >= 0.9, agree


def test_scores_come_back_in_the_pages_order_whatever_the_batches(tiny):
    texts = [p.text for p in pages(60, seed=5)]
    one_by_one = np.array([score_texts(tiny, TINY, [t])[0] for t in texts])
    small = ClassifierSettings(model=TINY.model, device="cpu", batch_size=3, batch_tokens=600, window=17)
    assert np.allclose(score_texts(tiny, small, texts), one_by_one, atol=1e-4)
    assert np.allclose(score_texts(tiny, TINY, texts), one_by_one, atol=1e-4)


def test_batches_are_length_sorted_and_bounded_in_pages_and_padded_tokens(tiny):
    ids = tokenize(tiny, [p.text for p in pages(300, seed=6)], 512)
    batches = sorted_batches(ids, tiny.pad_id, batch_size=32, batch_tokens=4096)
    lengths = [len(x) for x in ids]
    padded = sum(b.input_ids.numel() for b in batches)

    assert sorted(int(p) for b in batches for p in b.positions) == list(range(len(ids)))
    assert all(len(b.positions) <= 32 and b.input_ids.numel() <= max(4096, b.input_ids.shape[1]) for b in batches)
    assert max(lengths) == 512  # the web's mix has pages past max_length: truncated
    assert padded <= 1.1 * sum(lengths)  # length-sorted: under 10% padding


def test_int_score_is_rounded_and_clamped_as_fineweb_edu_publishes_it():
    scores = np.array([-0.7, 0.49, 2.5, 2.51, 3.5, 4.6, 7.2], dtype=np.float32)
    expected = [round(max(0, min(float(s), 5))) for s in scores]
    assert int_scores(scores).tolist() == expected == [0, 0, 2, 3, 4, 5, 5]


def test_the_probability_of_a_named_label_is_a_score_rule(tiny):
    texts = [p.text for p in pages(20, seed=8)]
    rule = ClassifierSettings(model=TINY.model, device="cpu", score_rule="label_probability", label="educational_value")
    probability = score_texts(load_classifier(rule), rule, texts)
    assert np.allclose(probability, torch.sigmoid(torch.from_numpy(score_texts(tiny, TINY, texts))).numpy(), atol=1e-5)
    wrong = ClassifierSettings(model=TINY.model, device="cpu", score_rule="label_probability", label="toxic")
    with pytest.raises(ValueError, match="has no label 'toxic'; its labels: educational_value"):
        load_classifier(wrong)


def test_the_model_is_loaded_once_per_process():
    other_rule = ClassifierSettings(
        model=TINY.model, device="cpu", score_rule="label_probability", label="educational_value"
    )
    assert load_classifier(TINY).loaded is load_classifier(other_rule).loaded


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="cannot load text classifier") as error:
        load_classifier(ClassifierSettings(model=str(tmp_path / "nothing-here"), device="cpu"))
    assert "\n" not in str(error.value)


def test_a_batch_that_runs_out_of_device_memory_is_halved_and_every_page_scored(tiny, monkeypatch):
    texts = [p.text for p in pages(80, seed=9)]
    expected = score_texts(tiny, TINY, texts)
    real, sizes = tiny.score_batch, []

    def capped(input_ids, attention_mask):  # a device that holds 2,000 padded tokens at most
        sizes.append(input_ids.numel())
        if input_ids.numel() > 2000:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(input_ids, attention_mask)

    monkeypatch.setattr(tiny, "score_batch", capped)
    try:
        halved = score_texts(tiny, TINY, texts)
    finally:
        tiny.loaded.max_batch, tiny.loaded.fit_streaks = None, {}
    assert np.allclose(halved, expected, atol=1e-4)
    assert any(s > 2000 for s in sizes) and not np.isnan(halved).any()


def _unit(root: DataRoot, source: str, shard: int = 0, **options) -> PageScoresUnit:
    return PageScoresUnit(root, "pages-test_00000", shard, source, "text", options)


def test_a_page_file_is_scored_in_its_order_with_its_columns_and_a_kept_view(tmp_path, data_root):
    (source,) = write_page_dataset(str(tmp_path / "pages"), files=1, pages_per_file=300, seed=3)
    unit = _unit(data_root, source)
    summary = PageScoreStats.from_dict(
        score_page_file(unit, ClassifierSettings(model=TINY.model, device="cpu", window=64))
    )
    pages_in, scored = pq.read_table(source), data_root.read_parquet(unit.table)
    kept = data_root.read_parquet(unit.kept)

    assert scored.column_names == pages_in.column_names + PAGE_SCORE_FIELDS.names
    assert scored.column("id").to_pylist() == pages_in.column("id").to_pylist()
    score = scored.column("score").to_numpy()
    assert scored.column("kept").to_pylist() == (score >= 3).tolist()
    assert scored.column("int_score").to_pylist() == int_scores(score).tolist()
    assert kept.column("id").to_pylist() == [i for i, k in zip(scored["id"].to_pylist(), score >= 3, strict=True) if k]
    assert set(scored.column("classifier_model").to_pylist()) == {TINY.model}
    assert summary.pages == summary.pages_scored == 300 and summary.pages_kept == kept.num_rows
    assert set(summary.histograms) == set(summary.scored) == set(pages_in.column("language").to_pylist())
    assert all(sum(summary.histograms[lang]) == n for lang, n in summary.scored.items())
    assert len(summary.histograms["en"]) == len(SCORE_EDGES) - 1
    truth = np.array(pages_in.column("value").to_pylist())
    assert np.mean((score >= 3) == (truth >= 3)) >= 0.85


def test_a_finished_file_is_not_redone_and_a_rerun_writes_the_same_rows(tmp_path, data_root):
    (source,) = write_page_dataset(str(tmp_path / "pages"), files=1, pages_per_file=50, seed=4)
    unit = _unit(data_root, source)
    first = score_page_file(unit, TINY)
    rows = data_root.read_parquet(unit.table)
    assert score_page_file(unit, TINY) == first
    data_root.remove(unit.marker)
    score_page_file(unit, TINY)
    assert data_root.read_parquet(unit.table).equals(rows)


def test_a_redo_keeps_the_scored_file_and_its_marker_until_new_outputs_replace_them(tmp_path, data_root):
    """A redo run stopped part way (Ctrl-C, Terminate) must not leave a scored file unmarked."""
    (source,) = write_page_dataset(str(tmp_path / "pages"), files=1, pages_per_file=50, seed=5)
    unit = _unit(data_root, source)
    first = score_page_file(unit, TINY)
    folder = str(Path(unit.marker).parent)
    before = files_under(folder)

    with stopped_on_open(f"{unit.kept}{TEMPORARY}*"):  # the new table is being written, the pages not yet scored
        score_page_file(unit, TINY, redo=True)

    assert files_under(folder) == before  # nothing removed, nothing left behind
    again = score_page_file(unit, TINY, redo=True)
    assert again != first and data_root.read_json(unit.marker) == again  # made again: its own timings
    assert again["pages"] == first["pages"] == 50


def test_a_file_whose_text_column_holds_no_text_fails_in_one_line_and_leaves_nothing(tmp_path, data_root):
    """The plan checks a dataset's first file; a later file with another type fails by its name."""
    source = str(tmp_path / "binary.parquet")
    pq.write_table(pa.table({"text": pa.array([b"a page", b"\xff"])}), source)
    with pytest.raises(ValueError) as failed:
        score_page_file(_unit(data_root, source), TINY)
    assert str(failed.value) == f"{source} has column 'text' of type binary, not text; the dataset's plan names it"
    assert data_root.listdir(data_root.path("page_scores", "pages-test_00000")) == []


def test_pages_without_text_keep_their_row_unscored_and_are_counted(tmp_path, data_root):
    table = pages_table(pages(10, seed=2))
    texts = table.column("text").to_pylist()
    texts[3] = texts[7] = None
    table = table.set_column(0, "text", pa.array(texts, pa.string()))
    source = str(tmp_path / "holes.parquet")
    pq.write_table(table, source)
    unit = _unit(data_root, source)

    summary = PageScoreStats.from_dict(score_page_file(unit, TINY))
    scored = data_root.read_parquet(unit.table)

    assert scored.num_rows == 10 and summary.no_text == 2 and summary.pages_scored == 8
    assert scored.column("score").null_count == 2 and scored.column("score")[3].as_py() is None
    assert scored.column("kept")[3].as_py() is False and scored.column("kept")[7].as_py() is False


def test_a_file_without_the_text_column_fails_in_one_line(tmp_path, data_root):
    source = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"body": ["a page"]}), source)
    with pytest.raises(ValueError, match="has no column 'text'"):
        score_page_file(_unit(data_root, source), TINY)
    assert not data_root.exists(_unit(data_root, source).marker)


def test_a_dataset_on_s3_is_scored_to_an_s3_data_root(s3_peer):
    root = new_bucket_root(s3_peer)
    bucket = root.url.split("/")[2]
    files = write_page_dataset(f"s3://{bucket}/fw", files=2, pages_per_file=40, storage_options=root.storage_options)

    summaries = [score_page_file(_unit(root, f, i, **root.storage_options), TINY) for i, f in enumerate(files)]
    totals = summarize(summaries)

    assert totals.pages == totals.pages_scored == 80 and totals.shard is None  # two files' markers added up
    assert root.read_parquet(_unit(root, files[1], 1).table).num_rows == 40
    assert sum(sum(h) for h in totals.histograms.values()) == 80


@pytest.mark.slow
def test_the_benchmark_dry_run_ends_with_one_json_line():
    done = subprocess.run(
        [sys.executable, "benchmarks/page_scores_bench.py", "--dry-run", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["dry_run"] is True and last["docs"] == 48
    assert last["end_to_end_over_model_only"] > 0 and last["ratio_to_naive_pipeline"] > 0
    assert last["model_only"]["tokens_per_s"] > 0 and last["naive_pipeline"]["docs_per_s"] > 0


def test_a_registered_datasets_segment_is_its_files_scored_where_they_are(tmp_path, data_root):
    from cah_resources.crawl.segments import register_dataset
    from cah_resources.page_scores.stage import dataset_pages_view, dataset_units, pending_units

    files = write_page_dataset(str(tmp_path / "fw"), files=3, pages_per_file=20, seed=6)
    registration = register_dataset(data_root, "fw", [str(tmp_path / "fw" / "*.parquet")], files_per_segment=2)
    units = dataset_units(data_root, registration, "fw_00000")
    view = dataset_pages_view(data_root, registration, "fw_00000")

    assert [u.source for u in units] == files[:2] and [u.shard for u in units] == [0, 1]
    assert [v["rows"] for v in view] == [20, 20] and "text" in view[0]["columns"]
    score_page_file(units[0], TINY)
    assert pending_units(units) == units[1:]
    assert data_root.read_parquet(units[0].table).num_rows == view[0]["rows"]


def test_the_report_shows_a_score_histogram_and_kept_pages_per_language(tmp_path, data_root):
    from cah_resources.dataset.report import build_report

    (source,) = write_page_dataset(str(tmp_path / "pages"), files=1, pages_per_file=120, seed=12)
    summary = PageScoreStats.from_dict(score_page_file(_unit(data_root, source), TINY))
    report = build_report(data_root, ["pages-test_00000"], data_root.path("report", "pages-test"))

    rows = {row["language"]: row for row in report.tables["page_scores"].as_dicts()}
    assert report.plots["page_scores"].startswith(b"\x89PNG")
    assert set(rows) == set(summary.histograms)
    assert sum(r["pages scored"] for r in rows.values()) == 120
    assert sum(r["kept"] for r in rows.values()) == summary.pages_kept
    assert "## page scores" in data_root.read_bytes(report.paths["report"]).decode()


def test_a_dataset_of_pages_gets_a_text_report_without_the_image_sections(tmp_path, data_root):
    from cah_resources.dataset.report import build_report

    (source,) = write_page_dataset(str(tmp_path / "pages"), files=1, pages_per_file=40, seed=13)
    score_page_file(_unit(data_root, source), TINY)
    keys = ["pages-test_00000", "pages-test_00001"]  # the second not scored yet
    report = build_report(data_root, keys, data_root.path("report", "pages-test"), images=False)

    markdown = data_root.read_bytes(report.paths["report"]).decode()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections == ["## page scores", "## throughput", "## not yet materialized"]
    assert "- page_scores: pages-test_00001" in markdown and "WAT records" not in markdown
    assert set(report.plots) == set(report.tables) == {"page_scores", "throughput"}
