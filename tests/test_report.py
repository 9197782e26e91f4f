"""The dataset report: funnel, similarity, status, domains and throughput from the data layout."""

from __future__ import annotations

import base64
import io

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from contract_layout import Pair, write_segment
from PIL import Image

from cah_resources.contract import SIMILARITY_EDGES, STAGES, candidates_stats_path
from cah_resources.dataset.report import (
    build_report,
    collect_facts,
    funnel_table,
    opt_outs_table,
    png_markdown,
    table_markdown,
    top_domains,
    url_domains,
)
from cah_resources.storage import DataRoot

SEGMENTS = ["CC-X_00000", "CC-X_00001"]


def segment_pairs(tag: str) -> list[Pair]:
    return [
        Pair(f"http://Big.Test/{tag}/1.jpg", f"a red bicycle {tag}", similarity=0.315),
        Pair(f"http://big.test:8080/{tag}/2.jpg", f"a green car {tag}", similarity=0.305),
        Pair(f"http://big.test/{tag}/3.jpg", f"a cat {tag}", similarity=0.205),
        Pair(f"http://big.test/{tag}/4.jpg", f"a dog {tag}", status="timeout"),
        Pair(f"http://small.test/{tag}/5.jpg", f"ein Haus {tag}", "multi", "de", similarity=0.265),
        Pair(f"http://small.test/{tag}/6.jpg", f"{tag} 42", "nolang", "und", status="http_404"),
        Pair(f"http://dead.test/{tag}/7.jpg", f"a sky {tag}", status="http_404"),
    ]


@pytest.fixture
def root(tmp_path) -> DataRoot:
    root = DataRoot(str(tmp_path / "data"))
    for i, segment in enumerate(SEGMENTS):
        write_segment(
            root,
            segment,
            segment_pairs(segment),
            shard_size=3,
            metadata_records=100 + i,
            drops={"drop_svg": 5, "drop_short_text": 7},
            stage_seconds=2.0,
        )
    return root


def test_funnel_counts_each_step_per_category_over_all_segments(root):
    facts = collect_facts(root, SEGMENTS)
    assert facts.records == 201
    assert facts.funnel["candidates"] == {"en": 10, "multi": 2, "nolang": 2}
    assert facts.funnel["attempted"] == {"en": 10, "multi": 2, "nolang": 2}
    assert facts.funnel["downloaded"] == {"en": 6, "multi": 2}
    assert facts.funnel["scored"] == {"en": 6, "multi": 2}
    assert facts.funnel["kept"] == {"en": 4, "multi": 2}
    assert facts.candidate_drops == {"svg": 10, "short_text": 14}


def test_funnel_table_shows_counts_and_rates_per_category(root):
    table = funnel_table(collect_facts(root, SEGMENTS))
    assert ("en", 10, 10, 6, 4, "60.0%", "66.7%") in table.rows
    assert ("nolang", 2, 2, 0, 0, "0.0%", "n/a") in table.rows
    assert table.rows[-1] == ("all", 14, 14, 8, 6, "57.1%", "75.0%")
    assert "201 WAT records in 2 segments" in table.note


def test_similarity_histograms_count_every_scored_pair_in_its_bin_per_category(root):
    facts = collect_facts(root, SEGMENTS)
    assert {c: int(h.sum()) for c, h in facts.similarity.items()} == {"en": 6, "multi": 2}
    bin_of = lambda value: int(np.searchsorted(SIMILARITY_EDGES, value, side="right")) - 1
    assert facts.similarity["en"][bin_of(0.315)] == 2
    assert facts.similarity["en"][bin_of(0.205)] == 2
    assert facts.similarity["multi"][bin_of(0.265)] == 2
    assert facts.thresholds == pytest.approx({"en": 0.28, "multi": 0.26})


def test_download_status_breakdown_counts_every_attempt(root):
    facts = collect_facts(root, SEGMENTS)
    assert facts.statuses == {"ok": 8, "http_404": 4, "timeout": 2}


def test_top_domains_rank_by_kept_pairs_with_hosts_normalized(root):
    facts = collect_facts(root, SEGMENTS)
    assert top_domains(facts, 3) == [
        ("big.test", 8, 6, 4),
        ("small.test", 4, 2, 2),
        ("dead.test", 2, 0, 0),
    ]


def test_url_domains_take_the_host_without_port_user_or_case():
    urls = pa.array(
        ["HTTPS://user:pw@Example.COM:443/a.jpg", "http://[::1]:80/x", "not a url", None, "http://a.b/c?d=e"]
    )
    assert url_domains(urls).to_pylist() == ["example.com", "[::1]", None, None, "a.b"]


def test_throughput_adds_items_and_task_seconds_per_stage_and_uses_run_seconds_when_given(root):
    facts = collect_facts(root, SEGMENTS, wall_seconds={"image_shards": 7.0})
    candidates, shards, clip = (facts.throughput[s] for s in STAGES)
    assert (candidates.items, candidates.task_seconds) == (201, 4.0)
    assert (shards.items, shards.task_seconds, shards.per_wall_second) == (14, 12.0, 2.0)
    assert (clip.items, clip.task_seconds, clip.per_wall_second) == (8, 12.0, None)


def test_segments_without_outputs_are_named_and_unfinished_shards_not_counted(root):
    folder = root.path("image_shards", "CC-X_00001")
    root.remove(f"{folder}/00002.done")  # the shard with the last candidate of that segment
    facts = collect_facts(root, [*SEGMENTS, "CC-X_00007"])
    assert facts.missing == {s: ["CC-X_00007"] for s in STAGES}
    assert sum(facts.funnel["attempted"].values()) == 13


def test_build_report_writes_real_pngs_and_a_markdown_report_that_links_them(root, tmp_path):
    out = root.path("report", "CC-X")
    report = build_report(root, SEGMENTS, out)
    assert set(report.plots) == {
        "funnel",
        "similarity",
        "download_status",
        "opted_out_and_blocked",
        "top_domains",
        "throughput",
    }
    for name, png in report.plots.items():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.width > 200 and image.height > 100
        pixels = np.asarray(image.convert("L"))
        assert pixels.min() < 128 < pixels.max(), f"{name} plot is blank"
        assert root.read_bytes(report.paths[name]) == png
    markdown = root.read_bytes(report.paths["report"]).decode()
    assert "![funnel](funnel.png)" in markdown and "| big.test | 8 | 6 | 4 |" in markdown


def test_a_report_of_segments_with_no_output_yet_still_draws(root):
    report = build_report(root, ["CC-X_00005"], root.path("report", "empty"))
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in report.plots.values())
    assert "CC-X_00005" in root.read_bytes(report.paths["report"]).decode()


def test_plots_reach_dagster_metadata_as_inline_markdown_images_and_tables_as_table_metadata(root, tmp_path):
    from cah_assets.metadata import rows_table

    report = build_report(root, SEGMENTS, root.path("report", "CC-X"))
    funnel = report.tables["funnel"]

    @dg.asset
    def report_probe() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={
                "funnel": dg.MetadataValue.md(png_markdown(report.plots["funnel"], "funnel")),
                "funnel_table": rows_table(funnel.as_dicts(), funnel.columns, limit=len(funnel.rows)),
            }
        )

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([report_probe], instance=instance).success
    event = instance.get_latest_materialization_event(dg.AssetKey("report_probe"))
    text = event.asset_materialization.metadata["funnel"].value
    encoded = text.split("data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(encoded) == report.plots["funnel"]
    table = event.asset_materialization.metadata["funnel_table"]
    assert [c.type for c in table.schema.columns][:5] == ["string", "int", "int", "int", "int"]
    assert table.records[-1].data == dict(zip(funnel.columns, ("all", 14, 14, 8, 6, "57.1%", "75.0%"), strict=False))


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_cover_no_bar_or_line(root):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cah_resources.dataset.report import funnel_figure, similarity_figure, top_domains_figure

    facts = collect_facts(root, SEGMENTS)
    for figure in (funnel_figure(facts), similarity_figure(facts), top_domains_figure(facts)):
        canvas = FigureCanvasAgg(figure)
        canvas.draw()  # lays the figure out as savefig does
        renderer = canvas.get_renderer()
        for axes in figure.axes:
            legend = axes.get_legend().get_window_extent(renderer)
            # Bars and lines are clipped to the plot area: a legend outside it covers none of them.
            assert axes.patches and not _boxes_overlap(legend, axes.get_window_extent(renderer))


def test_throughput_has_one_unit_per_axis_and_both_rates(root):
    from cah_resources.dataset.report import throughput_figure

    facts = collect_facts(root, SEGMENTS, wall_seconds={s: 4.0 for s in STAGES})
    figure = throughput_figure(facts)
    labels = [axes.get_ylabel() for axes in figure.axes]
    assert labels == ["WAT records / s", "URLs / s", "pairs scored / s"]
    for axes in figure.axes:  # per task second and per run second, both non-zero
        assert [bar.get_height() > 0 for bar in axes.patches] == [True, True]


def _stage_run(stage: str, seconds: float):
    from cah_assets.partitions import segments

    @dg.asset(name=stage, partitions_def=segments)
    def stand_in() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"seconds": seconds})

    return stand_in


def test_report_asset_fills_per_run_second_and_links_plots_short_enough_to_show_inline(root):
    from cah_assets.dataset import stage_run_seconds
    from cah_assets.partitions import segments
    from cah_assets.resources import INLINE_MARKDOWN_CHARS, PLOT_THUMBNAIL_PX, ReportLinks

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, SEGMENTS)
    for stage, seconds in (("candidates", 2.0), ("image_shards", 3.5), ("clip_pairs", 5.0)):
        for key in SEGMENTS:  # one run per segment: the run seconds add up
            assert dg.materialize([_stage_run(stage, seconds)], instance=instance, partition_key=key).success
    assert stage_run_seconds(instance, "image_shards", SEGMENTS) == 7.0
    links = ReportLinks(files_url="http://127.0.0.1:8123")
    seconds = {s: stage_run_seconds(instance, s, SEGMENTS) for s in STAGES}
    built = build_report(root, SEGMENTS, root.path("report", "CC-X"), seconds)
    assert built.facts.throughput["image_shards"].per_wall_second == pytest.approx(14 / 7.0)
    assert "n/a" not in built.tables["throughput"]
    text = links.plot_markdown(root, built.paths["funnel"], built.plots["funnel"], "funnel")
    files = "http://127.0.0.1:8123/report/CC-X"
    assert (
        text == f"[![funnel]({files}/funnel.thumbnail.png)]({files}/funnel.png)" and len(text) < INLINE_MARKDOWN_CHARS
    )
    with Image.open(io.BytesIO(root.read_bytes(root.path("report", "CC-X", "funnel.thumbnail.png")))) as thumbnail:
        assert thumbnail.width == PLOT_THUMBNAIL_PX  # the plot fits the metadata column; the link has it full size
    assert (
        ReportLinks()
        .plot_markdown(root, built.paths["funnel"], built.plots["funnel"], "funnel")
        .startswith("![funnel](data:image/png;base64,")
    )


def test_the_opted_out_table_counts_each_signal_and_names_the_hosts_that_opted_out(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    pairs = [
        Pair("http://art.test/1.jpg", "a painting", status="robots_disallowed"),
        Pair("http://art.test/2.jpg", "a drawing", status="tdm_reserved"),
        Pair("http://ART.test:81/3.jpg", "a sketch", status="robots_disallowed"),
        Pair("http://news.test/4.jpg", "a photo", status="robots_noai"),
        Pair("http://news.test/5.jpg", "a chart", status="blocklisted_image"),
        Pair("http://fine.test/6.jpg", "a tree", similarity=0.3),
        Pair("http://gone.test/7.jpg", "a road", status="http_404"),
    ]
    write_segment(root, SEGMENTS[0], pairs, shard_size=4, drops={"drop_blocklisted_url": 3, "drop_svg": 1})
    table = opt_outs_table(collect_facts(root, SEGMENTS[:1]))
    assert table.rows == [
        ("signal", "blocklisted_url", 3),
        ("signal", "robots_disallowed", 2),
        ("signal", "blocklisted_image", 1),
        ("signal", "robots_noai", 1),
        ("signal", "tdm_reserved", 1),
        ("host", "art.test", 3),
        ("host", "news.test", 2),
    ]
    markdown = root.read_bytes(build_report(root, SEGMENTS[:1], root.path("report", "CC-X")).paths["report"]).decode()
    assert "## opted out and blocked" in markdown and "| host | art.test | 3 |" in markdown


def test_a_warc_segment_is_counted_in_html_pages_not_in_wat_records(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    segment = "CC-W_00000"
    write_segment(root, segment, segment_pairs(segment), metadata_records=0)
    stats = root.read_json(candidates_stats_path(root, segment))
    root.write_json(candidates_stats_path(root, segment), {**stats, "html_pages": 74})  # as the WARC pass writes it
    built = build_report(root, [segment], root.path("report", "CC-W"))
    markdown = root.read_bytes(built.paths["report"]).decode()
    assert markdown.startswith("# Dataset report: 1 segment\n")
    assert "74 HTML pages of WARC files in 1 segment gave 7 candidates" in markdown
    assert "WAT records" not in markdown
    assert ("candidates", 74, "HTML pages", 2.0, 37.0, "n/a") in built.tables["throughput"].rows


def test_nothing_opted_out_reads_as_a_sentence_not_an_empty_table(root):
    table = opt_outs_table(collect_facts(root, SEGMENTS))
    assert table.rows == [] and table_markdown(table).startswith("No URL was left out by an opt-out signal")
    markdown = root.read_bytes(build_report(root, SEGMENTS, root.path("report", "CC-X")).paths["report"]).decode()
    assert "| kind | signal or host | URLs |" not in markdown
