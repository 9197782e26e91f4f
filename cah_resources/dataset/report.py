"""The dataset report: funnel, similarity, status, opt-outs, domains, throughput, page scores as PNGs and tables."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cah_resources.contract import (
    CANDIDATES,
    CATEGORIES,
    CLIP_PAIRS,
    IMAGE_SHARDS,
    OPT_OUT_STATUSES,
    PAGE_SCORES,
    SCORE_EDGES,
    SIMILARITY_EDGES,
    STAGES,
    CandidatesStats,
    ClipStats,
    ClipStatus,
    DownloadStatus,
    DropReason,
    PageScoreStats,
    ShardStats,
    candidates_path,
    candidates_stats_path,
    finished_shards,
    shard_paths,
    similarity_histogram,
    stage_folder,
)
from cah_resources.crawl.segments import webdataset_tars
from cah_resources.storage import DataRoot

if TYPE_CHECKING:  # matplotlib is imported where a plot is drawn: 1.4 s that loading Dagster's definitions skips
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FUNNEL_STEPS = (CANDIDATES, "attempted", "downloaded", ClipStatus.SCORED, "kept")
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"
WAT_UNIT, WARC_UNIT = "WAT records", "HTML pages"
_CATEGORY_COLORS = {"en": "#4C72B0", "multi": "#DD8452", "nolang": "#55A868"}


@dataclass
class StageThroughput:
    """Work of one stage: items done and seconds spent by its tasks (and the run, if known)."""

    stage: str
    unit: str
    items: int = 0
    task_seconds: float = 0.0
    wall_seconds: float | None = None

    @property
    def per_task_second(self) -> float | None:
        return self.items / self.task_seconds if self.task_seconds > 0 else None

    @property
    def per_wall_second(self) -> float | None:
        return self.items / self.wall_seconds if self.wall_seconds else None


@dataclass
class DatasetFacts:
    """Everything the report shows, summed over segments from the files of the data layout."""

    segments: list[str]
    records: int = 0  # WAT metadata records read
    html_pages: int = 0  # HTML pages read from WARC files (a WARC segment reads no WAT records)
    funnel: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in FUNNEL_STEPS})
    candidate_drops: Counter = field(default_factory=Counter)  # links per DropReason of the candidates stage
    statuses: Counter = field(default_factory=Counter)  # download status of every attempt
    similarity: dict[str, np.ndarray] = field(default_factory=dict)  # counts per SIMILARITY bin
    thresholds: dict[str, float] = field(default_factory=dict)
    domains: dict[str, Counter] = field(
        default_factory=lambda: {"attempted": Counter(), "downloaded": Counter(), "kept": Counter()}
    )
    throughput: dict[str, StageThroughput] = field(default_factory=dict)
    opt_out_hosts: Counter = field(default_factory=Counter)  # host -> URLs its owner's signals kept out
    missing: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in STAGES})
    # page_scores, where a crawl's pages (or a dataset) were scored: counts per SCORE_EDGES bin per language.
    page_scores: dict[str, np.ndarray] = field(default_factory=dict)
    page_kept: Counter = field(default_factory=Counter)  # language -> pages kept
    page_threshold: float | None = None
    images: bool = True  # the segments make image-text pairs (not a Parquet dataset of pages)


# -- reading the data layout ---------------------------------------------------------------


def _counts(column: pa.ChunkedArray | pa.Array) -> Counter:
    if len(column) == 0:
        return Counter()
    column = pc.fill_null(column, "null")
    return Counter({item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()})


def _counts_by_category(table: pa.Table) -> Counter:
    return _counts(table.column("category"))


def url_domains(urls: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Lower-case host of every URL (null where there is none), vectorized."""
    if isinstance(urls, pa.ChunkedArray):
        urls = urls.combine_chunks()
    matched = pc.extract_regex(urls, _HOST)
    hosts = matched.field("host")
    # A struct's child keeps "" under a null (non-matching) row; make those null too.
    usable = pc.and_(pc.is_valid(matched), pc.not_equal(hosts, ""))
    return pc.utf8_lower(pc.if_else(usable, hosts, pa.scalar(None, pa.string())))


def _add_candidates(facts: DatasetFacts, root: DataRoot, segment: str) -> None:
    path, stats_path = candidates_path(root, segment), candidates_stats_path(root, segment)
    if not root.exists(path):
        facts.missing[CANDIDATES].append(segment)
        return
    table = root.read_parquet(path, columns=["category"])
    facts.funnel[CANDIDATES].update(_counts_by_category(table))
    stats = CandidatesStats.from_dict(root.read_json(stats_path) if root.exists(stats_path) else {})
    # A WARC segment's candidates come from the HTML pages of its WARC files: it counts no WAT records.
    warc = stats.metadata_records == 0 and stats.html_pages > 0
    items, unit = (stats.html_pages, WARC_UNIT) if warc else (stats.metadata_records, WAT_UNIT)
    facts.html_pages += stats.html_pages if warc else 0
    facts.records += stats.metadata_records
    facts.candidate_drops.update(stats.drops)
    stage = facts.throughput.setdefault(CANDIDATES, StageThroughput(CANDIDATES, unit))
    if stage.unit != unit:  # WAT and WARC segments in one report
        stage.unit = f"{WAT_UNIT} + {WARC_UNIT}"
    stage.items += items
    stage.task_seconds += stats.task_seconds


def _add_image_shards(facts: DatasetFacts, root: DataRoot, segment: str) -> None:
    folder = stage_folder(root, IMAGE_SHARDS, segment)
    shards = finished_shards(root, folder)
    if not shards:
        facts.missing[IMAGE_SHARDS].append(segment)
        return
    stage = facts.throughput.setdefault(IMAGE_SHARDS, StageThroughput(IMAGE_SHARDS, "URLs"))
    for name in shards:
        paths = shard_paths(folder, int(name))
        table = root.read_parquet(paths["parquet"], columns=["url", "category", "status"])
        ok = pc.equal(table.column("status"), DownloadStatus.OK.value)
        facts.funnel["attempted"].update(_counts_by_category(table))
        facts.funnel["downloaded"].update(_counts_by_category(table.filter(ok)))
        facts.statuses.update(_counts(table.column("status")))
        domains = url_domains(table.column("url"))
        facts.domains["attempted"].update(_counts(domains))
        facts.domains["downloaded"].update(_counts(domains.filter(ok.combine_chunks())))
        opted_out = pc.is_in(table.column("status"), value_set=pa.array(OPT_OUT_STATUSES)).combine_chunks()
        facts.opt_out_hosts.update(_counts(domains.filter(opted_out)))
        stats = ShardStats.from_dict(root.read_json(paths["stats"]) if root.exists(paths["stats"]) else {})
        stage.items += table.num_rows
        stage.task_seconds += stats.task_seconds


def _add_clip_pairs(facts: DatasetFacts, root: DataRoot, segment: str, webdataset: bool = False) -> None:
    folder = stage_folder(root, CLIP_PAIRS, segment)
    shards = finished_shards(root, folder)
    if not shards:
        facts.missing[CLIP_PAIRS].append(segment)
        return
    stage = facts.throughput.setdefault(CLIP_PAIRS, StageThroughput(CLIP_PAIRS, "pairs scored"))
    for name in shards:
        paths = shard_paths(folder, int(name))
        table = root.read_parquet(
            paths["parquet"],
            columns=["url", "category", "similarity", "threshold", "kept"],
        )
        scored = table.filter(pc.is_valid(table.column("similarity")))
        kept = table.filter(pc.fill_null(table.column("kept"), False))
        if webdataset:  # every sample of the tars, as attempted and downloaded
            for step in ("attempted", "downloaded"):
                facts.funnel[step].update(_counts_by_category(table))
                facts.domains[step].update(_counts(url_domains(table.column("url"))))
        facts.funnel[ClipStatus.SCORED].update(_counts_by_category(scored))
        facts.funnel["kept"].update(_counts_by_category(kept))
        facts.domains["kept"].update(_counts(url_domains(kept.column("url"))))
        for category in set(scored.column("category").to_pylist()):
            rows = scored.filter(pc.equal(scored.column("category"), category))
            values = rows.column("similarity").to_numpy()
            hist = similarity_histogram(values)
            facts.similarity[category] = facts.similarity.get(category, 0) + hist
            threshold = pc.max(rows.column("threshold")).as_py()
            if threshold is not None:
                facts.thresholds[category] = threshold
        marker = ClipStats.from_dict(root.read_json(paths["done"]))
        stage.items += scored.num_rows
        stage.task_seconds += marker.task_seconds


def _add_page_scores(facts: DatasetFacts, root: DataRoot, segment: str) -> None:
    """Per-language score histograms and kept pages from the segment's page_scores markers (no parquet read)."""
    folder = stage_folder(root, PAGE_SCORES, segment)
    names = finished_shards(root, folder)
    if not names:
        if not facts.images:  # a dataset of pages is made for its scores
            facts.missing.setdefault(PAGE_SCORES, []).append(segment)
        return
    stage = facts.throughput.setdefault(PAGE_SCORES, StageThroughput(PAGE_SCORES, "pages scored"))
    for name in names:
        stats = PageScoreStats.from_dict(root.read_json(shard_paths(folder, int(name))["done"]))
        for language, counts in stats.histograms.items():
            if len(counts) == len(SCORE_EDGES) - 1:
                facts.page_scores[language] = facts.page_scores.get(language, 0) + np.array(counts, dtype=np.int64)
        facts.page_kept.update(stats.kept)
        facts.page_threshold = stats.threshold if stats.threshold is not None else facts.page_threshold
        stage.items += stats.pages_scored
        stage.task_seconds += stats.task_seconds


def collect_facts(
    root: DataRoot, segment_keys: Iterable[str], wall_seconds: Mapping[str, float] | None = None, images: bool = True
) -> DatasetFacts:
    """Read the stats and parquet files of ``segment_keys``; only finished shards count.

    ``wall_seconds`` (stage -> seconds of its runs, from Dagster) adds per-run throughput. Without
    ``images`` (a Parquet dataset of pages) only page_scores is read, and no image stage is missing.
    """
    facts = DatasetFacts(segments=sorted(set(segment_keys)), images=images)
    if not images:
        facts.missing = {}
    for segment in facts.segments:
        # A registered webdataset's segment starts at clip_pairs: its samples are what was "downloaded".
        webdataset = images and webdataset_tars(root, segment) is not None
        if images and not webdataset:
            _add_candidates(facts, root, segment)
            _add_image_shards(facts, root, segment)
        if images:
            _add_clip_pairs(facts, root, segment, webdataset)
        _add_page_scores(facts, root, segment)
    for stage, seconds in (wall_seconds or {}).items():
        if stage in facts.throughput:
            facts.throughput[stage].wall_seconds = seconds
    return facts


# -- tables --------------------------------------------------------------------------------


class Table(NamedTuple):
    """A table of the report as plain data: the asset shows it as Dagster table metadata, report.md as markdown."""

    columns: tuple[str, ...]
    rows: list[tuple]
    note: str = ""  # a sentence under the table

    def as_dicts(self) -> list[dict[str, object]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def table_markdown(table: Table) -> str:
    """``table`` as markdown for report.md: numbers right-aligned with thousands separators."""

    def text(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    numeric = [
        bool(table.rows) and all(isinstance(row[i], (int, float)) for row in table.rows)
        for i in range(len(table.columns))
    ]
    if not table.rows and table.note:  # a header over nothing reads as a fault: the note says why it is empty
        return table.note
    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines + (["", table.note] if table.note else []))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def inputs_read(facts: DatasetFacts) -> str:
    """What the candidates read: "316 WAT records", "74 HTML pages of WARC files", or both."""
    parts = [f"{facts.records:,} {WAT_UNIT}"] if facts.records or not facts.html_pages else []
    if facts.html_pages:
        parts.append(f"{facts.html_pages:,} {WARC_UNIT} of WARC files")
    return " and ".join(parts)


def _rate(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "n/a"


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def funnel_table(facts: DatasetFacts) -> Table:
    """records → candidates → attempted → downloaded → scored → kept, per category."""
    categories = [c for c in CATEGORIES if any(facts.funnel[s][c] for s in FUNNEL_STEPS)]
    categories += sorted({c for s in FUNNEL_STEPS for c in facts.funnel[s]} - set(CATEGORIES))
    totals = {s: sum(facts.funnel[s].values()) for s in FUNNEL_STEPS}
    rows = []
    for name, counts in [(c, {s: facts.funnel[s][c] for s in FUNNEL_STEPS}) for c in categories] + [("all", totals)]:
        rows.append(
            (
                name,
                counts["candidates"],
                counts["attempted"],
                counts["downloaded"],
                counts["kept"],
                _ratio(counts["downloaded"], counts["attempted"]),
                _ratio(counts["kept"], counts["downloaded"]),
            )
        )
    note = (
        f"{inputs_read(facts)} in {_count(len(facts.segments), 'segment')} gave "
        f"{totals['candidates']:,} candidates and {totals['kept']:,} kept pairs "
        f"({_ratio(totals['kept'], totals['candidates'])} of candidates)."
    )
    columns = ("category", "candidates", "attempted", "downloaded", "kept", "download rate", "keep rate")
    return Table(columns, rows, note)


def status_table(facts: DatasetFacts) -> Table:
    total = sum(facts.statuses.values())
    rows = [(status, count, _ratio(count, total)) for status, count in facts.statuses.most_common()]
    return Table(("download status", "URLs", "share"), rows)


def candidate_drops_table(facts: DatasetFacts) -> Table:
    rows = [(str(reason), count) for reason, count in facts.candidate_drops.most_common()]
    return Table(("candidates drop reason", "links"), rows)


def opt_out_counts(facts: DatasetFacts) -> Counter:
    """URLs left out per opt-out signal: the download statuses and the candidates' blocklisted_url drops."""
    counts = Counter({s: facts.statuses[s] for s in OPT_OUT_STATUSES if facts.statuses[s]})
    counts[DropReason.BLOCKLISTED_URL] += facts.candidate_drops[DropReason.BLOCKLISTED_URL]
    return +counts


def opt_outs_table(facts: DatasetFacts, n: int = 10) -> Table:
    """Counts per signal, then the hosts that opted out the most URLs."""
    counts = opt_out_counts(facts)
    rows = [("signal", signal, count) for signal, count in sorted(counts.items(), key=lambda sc: (-sc[1], sc[0]))]
    hosts = sorted(((h, c) for h, c in facts.opt_out_hosts.items() if h != "null"), key=lambda hc: (-hc[1], hc[0]))[:n]
    rows += [("host", host, count) for host, count in hosts]
    note = (
        "robots_unreachable: robots.txt answered 5xx/429, which RFC 9309 treats as a complete disallow; "
        "blocklisted_url rows are candidates' drops, never downloaded."
        if rows
        else "No URL was left out by an opt-out signal (robots.txt, X-Robots-Tag, tdmrep.json) or a blocklist."
    )
    return Table(("kind", "signal or host", "URLs"), rows, note)


def top_domains(facts: DatasetFacts, n: int = 20) -> list[tuple[str, int, int, int]]:
    """(domain, attempted, downloaded, kept) of the ``n`` domains with the most kept pairs,
    then the most attempts."""
    domains = facts.domains
    names = set(domains["attempted"]) | set(domains["kept"])
    names.discard("null")
    ranked = sorted(names, key=lambda d: (-domains["kept"][d], -domains["attempted"][d], d))
    return [(d, domains["attempted"][d], domains["downloaded"][d], domains["kept"][d]) for d in ranked[:n]]


def top_domains_table(facts: DatasetFacts, n: int = 20) -> Table:
    return Table(("domain", "attempted", "downloaded", "kept"), top_domains(facts, n))


def page_scores_table(facts: DatasetFacts) -> Table:
    """Pages scored and kept per language, and their mean score (from the 0.1 bins)."""
    centers = (SCORE_EDGES[:-1] + SCORE_EDGES[1:]) / 2
    rows = []
    for language in sorted(facts.page_scores, key=lambda lang: (-int(facts.page_scores[lang].sum()), lang)):
        hist = facts.page_scores[language]
        scored = int(hist.sum())
        mean = round(float((hist * centers).sum() / scored), 2) if scored else "n/a"
        rows.append((language, scored, facts.page_kept[language], _ratio(facts.page_kept[language], scored), mean))
    note = f"kept: score >= {facts.page_threshold}" if facts.page_threshold is not None else ""
    return Table(("language", "pages scored", "kept", "keep rate", "mean score"), rows, note)


def throughput_table(facts: DatasetFacts) -> Table:
    rows = []
    for stage in (*STAGES, PAGE_SCORES):
        t = facts.throughput.get(stage)
        if t is None:
            continue
        per_task = round(t.per_task_second, 1) if t.per_task_second is not None else "n/a"
        per_run = round(t.per_wall_second, 1) if t.per_wall_second is not None else "n/a"
        rows.append((stage, t.items, t.unit, round(t.task_seconds, 1), per_task, per_run))
    return Table(("stage", "items", "unit", "task seconds", "per task second", "per run second"), rows)


# -- plots ---------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _legend_outside(axes: Axes) -> None:
    # Right of the plot area (savefig's bbox_inches="tight" widens the image for it): it covers no data.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _figure(width: float = 7.0, height: float = 4.0) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    # Figure without pyplot: no global state, so workers and threads can draw side by side.
    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def funnel_figure(facts: DatasetFacts) -> Figure:
    """Stacked bars per step, one stack per category; the record count in the title."""
    figure, axes = _figure()
    steps = list(FUNNEL_STEPS)
    bottom = np.zeros(len(steps))
    categories = sorted({c for s in steps for c in facts.funnel[s]}, key=_category_order)
    for category in categories:
        heights = np.array([facts.funnel[s][category] for s in steps], dtype=float)
        axes.bar(steps, heights, bottom=bottom, label=category, color=_CATEGORY_COLORS.get(category))
        bottom += heights
    for x, total in enumerate(bottom):
        axes.annotate(f"{int(total):,}", (x, total), ha="center", va="bottom", fontsize=8)
    axes.set_ylabel("pairs")
    axes.set_title(f"Funnel: {inputs_read(facts)} → pairs, per category")
    if categories:
        _legend_outside(axes)
    return figure


def similarity_figure(facts: DatasetFacts) -> Figure:
    """Histogram of CLIP similarity per category with the category's threshold."""
    figure, axes = _figure()
    populated = [h for h in facts.similarity.values() if h.sum()]
    if populated:
        nonzero = np.nonzero(np.sum(populated, axis=0))[0]
        low, high = SIMILARITY_EDGES[nonzero[0]], SIMILARITY_EDGES[nonzero[-1] + 1]
    else:
        low, high = 0.0, 0.5
    for category in sorted(facts.similarity, key=_category_order):
        hist = facts.similarity[category]
        color = _CATEGORY_COLORS.get(category)
        axes.stairs(hist, SIMILARITY_EDGES, label=f"{category} ({int(hist.sum()):,})", color=color)
        if category in facts.thresholds:
            axes.axvline(facts.thresholds[category], color=color, linestyle="--", linewidth=1)
    axes.set_xlim(low - 0.02, high + 0.02)
    axes.set_xlabel("cosine similarity (dashed: threshold)")
    axes.set_ylabel("pairs")
    axes.set_title("CLIP similarity of downloaded pairs")
    if facts.similarity:
        _legend_outside(axes)
    return figure


def status_figure(facts: DatasetFacts) -> Figure:
    figure, axes = _figure(7.0, 0.6 + 0.3 * max(len(facts.statuses), 1))
    statuses = facts.statuses.most_common()[::-1]
    axes.barh([s for s, _ in statuses], [c for _, c in statuses], color="#4C72B0")
    axes.set_xlabel("URLs")
    axes.set_title(f"Download status of {sum(facts.statuses.values()):,} URLs")
    return figure


def opt_outs_figure(facts: DatasetFacts) -> Figure:
    counts = opt_out_counts(facts).most_common()[::-1]
    figure, axes = _figure(7.0, 0.6 + 0.3 * max(len(counts), 1))
    axes.barh([s for s, _ in counts], [c for _, c in counts], color="#C44E52")
    axes.set_xlabel("URLs")
    axes.set_title(f"Opted out and blocked: {sum(c for _, c in counts):,} URLs left out")
    return figure


def top_domains_figure(facts: DatasetFacts, n: int = 20) -> Figure:
    rows = top_domains(facts, n)[::-1]
    figure, axes = _figure(7.0, 0.6 + 0.3 * max(len(rows), 1))
    names = [r[0] for r in rows]
    bars = ((1, "attempted", "#CCCCCC"), (2, "downloaded", "#4C72B0"), (3, "kept", "#55A868"))
    for column, label, color in bars:
        axes.barh(names, [r[column] for r in rows], label=label, color=color)
    axes.set_xlabel("pairs")
    axes.set_title(f"Top {len(rows)} domains by kept pairs")
    if rows:
        _legend_outside(axes)
    return figure


def page_scores_figure(facts: DatasetFacts) -> Figure:
    """Histogram of page scores per language (the most pages first), with the keep threshold."""
    figure, axes = _figure()
    ranked = sorted(facts.page_scores, key=lambda lang: (-int(facts.page_scores[lang].sum()), lang))
    for language in ranked:
        hist = facts.page_scores[language]
        axes.stairs(hist, SCORE_EDGES, label=f"{language} ({int(hist.sum()):,}, kept {facts.page_kept[language]:,})")
    if facts.page_threshold is not None:
        axes.axvline(facts.page_threshold, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel("page score, clipped to 0-5 (dashed: threshold)")
    axes.set_ylabel("pages")
    axes.set_title("Page scores per language")
    if ranked:
        _legend_outside(axes)
    return figure


def throughput_figure(facts: DatasetFacts) -> Figure:
    """One panel per stage, each in its own unit (records, URLs, pairs): per task second and per run second."""
    from matplotlib.figure import Figure

    first = STAGES[0] if facts.images else PAGE_SCORES  # an empty panel where nothing ran yet
    stages = [s for s in (*STAGES, PAGE_SCORES) if s in facts.throughput] or [first]
    figure = Figure(figsize=(3.0 * len(stages), 3.6))
    for i, stage in enumerate(stages):
        axes = figure.add_subplot(1, len(stages), i + 1)
        t = facts.throughput.get(stage) or StageThroughput(stage, "items")
        rates = [t.per_task_second, t.per_wall_second]
        bars = axes.bar(
            ["per task\nsecond", "per run\nsecond"], [r or 0.0 for r in rates], color=["#4C72B0", "#DD8452"]
        )
        for bar, value in zip(bars, rates, strict=False):
            axes.annotate(
                _rate(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axes.set_ylabel(f"{t.unit} / s")
        axes.set_title(stage)
        axes.margins(y=0.15)
    figure.suptitle("Throughput per stage")
    figure.tight_layout()
    return figure


def funnel_plot(facts: DatasetFacts) -> bytes:
    return _png(funnel_figure(facts))


def similarity_plot(facts: DatasetFacts) -> bytes:
    return _png(similarity_figure(facts))


def status_plot(facts: DatasetFacts) -> bytes:
    return _png(status_figure(facts))


def opt_outs_plot(facts: DatasetFacts) -> bytes:
    return _png(opt_outs_figure(facts))


def top_domains_plot(facts: DatasetFacts, n: int = 20) -> bytes:
    return _png(top_domains_figure(facts, n))


def throughput_plot(facts: DatasetFacts) -> bytes:
    return _png(throughput_figure(facts))


def page_scores_plot(facts: DatasetFacts) -> bytes:
    return _png(page_scores_figure(facts))


def _category_order(category: str) -> tuple[int, str]:
    return (CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES), category)


# -- the report ----------------------------------------------------------------------------


@dataclass
class Report:
    facts: DatasetFacts
    plots: dict[str, bytes]  # name -> PNG
    tables: dict[str, Table]
    paths: dict[str, str] = field(default_factory=dict)  # name -> file written


def png_markdown(png: bytes, alt: str) -> str:
    """The PNG inline as markdown (a data URI), which Dagster's metadata view renders."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def build_report(
    root: DataRoot,
    segment_keys: Iterable[str],
    out_dir: str,
    wall_seconds: Mapping[str, float] | None = None,
    top_n_domains: int = 20,
    images: bool = True,
) -> Report:
    """Collect the facts, draw the plots, write ``out_dir/<name>.png`` and ``report.md``.

    Without ``images`` (a Parquet dataset of pages) the report is page scores and throughput only.
    """
    facts = collect_facts(root, segment_keys, wall_seconds, images)
    plots, tables = {}, {}
    if images:
        plots = {
            "funnel": funnel_plot(facts),
            "similarity": similarity_plot(facts),
            "download_status": status_plot(facts),
            "opted_out_and_blocked": opt_outs_plot(facts),
            "top_domains": top_domains_plot(facts, top_n_domains),
        }
        tables = {
            "funnel": funnel_table(facts),
            "download_status": status_table(facts),
            "candidate_drops": candidate_drops_table(facts),
            "opted_out_and_blocked": opt_outs_table(facts),
            "top_domains": top_domains_table(facts, top_n_domains),
        }
    plots["throughput"] = throughput_plot(facts)
    tables["throughput"] = throughput_table(facts)
    if facts.page_scores:  # a crawl whose pages (or a dataset) were scored
        plots["page_scores"] = page_scores_plot(facts)
        tables["page_scores"] = page_scores_table(facts)
    report = Report(facts, plots, tables)
    for name, png in plots.items():
        path = f"{out_dir}/{name}.png"
        root.write_bytes(path, png)
        report.paths[name] = path
    sections = [f"# Dataset report: {_count(len(facts.segments), 'segment')}"]
    for name in (
        "funnel",
        "similarity",
        "download_status",
        "candidate_drops",
        "opted_out_and_blocked",
        "top_domains",
        "page_scores",
        "throughput",
    ):
        if name not in plots and name not in tables:
            continue
        sections.append(f"## {name.replace('_', ' ')}")
        if name in plots:
            sections.append(f"![{name}]({name}.png)")
        if name in tables:
            sections.append(table_markdown(tables[name]))
    missing = {stage: segs for stage, segs in facts.missing.items() if segs}
    if missing:
        sections.append("## not yet materialized")
        sections += [f"- {stage}: {', '.join(segs)}" for stage, segs in missing.items()]
    report.paths["report"] = f"{out_dir}/report.md"
    root.write_bytes(report.paths["report"], "\n\n".join(sections).encode() + b"\n")
    return report
