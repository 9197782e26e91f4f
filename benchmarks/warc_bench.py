"""The WARC pass on one core against datatrove + Trafilatura (FineWeb's extraction), resiliparse's main-text
extraction alone (a ceiling), the WAT path's image candidates on the same pages, and main-text quality.

    .venv/bin/python benchmarks/warc_bench.py             # ~100 MB WARC (cached under benchmarks/.work/)
    .venv/bin/python benchmarks/warc_bench.py --mb 10     # quick run

Speed: every contender runs in its own fresh process pinned to CPU 0 over the same generated WARC
file (seeded, cached, in the page cache); a figure is HTML pages per CPU second of that process and
of the processes it starts (datatrove extracts in a sandbox process), not wall time, because the
machines here are shared. Contenders:

- ``step``: the project's WARC step as a worker runs it (``extract_warc_file``: one pass, pages and
  image candidates, gcld3 on both, two parquet parts written);
- ``datatrove``: ``WarcReader`` + ``Trafilatura(favour_precision=True)`` as FineWeb runs it, with a
  per-document timeout high enough that no page is skipped;
- ``ceiling``: fastwarc's iteration + resiliparse's ``extract_plain_text(main_content=True)`` of every
  HTML response, nothing else.

Images: candidates per page of the WARC step against the WAT path (``extract_pairs``) on the WAT
twin of the same pages, and recall of the generator's truth (images the documented rules name).

Main text: token F1 (bag of ``\\w+`` tokens, averaged over pages) and the benchmark's own 4-gram
shingle F1 on Zyte's article-extraction benchmark (181 real pages with their hand-labelled article
body; MIT licence; vendored under benchmarks/data/article_extraction/), for the WARC step's
extraction, resiliparse's defaults and Trafilatura as datatrove calls it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
ARTICLES = HERE / "data" / "article_extraction"
CRAWL = "CC-MAIN-WARC-BENCH"
PAGE_WEIGHT = 32_000  # bytes of inline app state and menu: ~45 KB of HTML, ~20 KB gzipped per page
GZ_BYTES_PER_PAGE = 20_000
TRAFILATURA_TIMEOUT_S = 60.0
CONTENDERS = ("step", "datatrove", "ceiling")
LABELS = {
    "step": "WARC step (extract_warc_file): one parse, pages + image candidates, gcld3, parquet",
    "datatrove": "datatrove WarcReader + Trafilatura(favour_precision=True)",
    "ceiling": "ceiling: fastwarc + resiliparse extract_plain_text(main_content=True)",
}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---------------------------------------------------------------------------------------------
# The WARC file
# ---------------------------------------------------------------------------------------------


def bench_crawl(mb: int) -> tuple[Path, dict]:
    """The generated crawl's folder and its truth (cached: generation is seeded)."""
    folder = WORK / f"warc-bench-{mb}mb"
    truth_path = folder / "truth.json"
    if truth_path.exists():
        return folder, json.loads(truth_path.read_text())
    sys.path.insert(0, str(REPO))
    from cah_resources.samples.sample_warc import generate_warc_crawl

    pages = math.ceil(mb * 1e6 / GZ_BYTES_PER_PAGE)
    sample = generate_warc_crawl(
        str(folder),
        CRAWL,
        warc_files=1,
        pages_per_file=pages,
        images_per_page=12,
        paragraphs_per_page=(5, 14),
        seed=7,
        page_weight=PAGE_WEIGHT,
    )
    rel = sample.warc_paths[0]
    truth = {
        "warc": rel,
        "wat": sample.wat_paths[0],
        "pages": pages,
        "html_pages": sample.counts[rel]["html_pages"],
        "images": [[e.url, e.text] for e in sample.candidates[rel]],
        "mb": round(os.path.getsize(folder / rel) / 1e6, 1),
    }
    truth_path.write_text(json.dumps(truth))
    return folder, truth


# ---------------------------------------------------------------------------------------------
# Contenders, each run in a fresh process: `warc_bench.py --run NAME FOLDER`
# ---------------------------------------------------------------------------------------------


def run_step(folder: Path, truth: dict) -> dict:
    import tempfile

    from cah_resources.crawl.common_crawl import CrawlSource
    from cah_resources.pages.stage import WarcFileUnit, extract_warc_file
    from cah_resources.storage import DataRoot

    with tempfile.TemporaryDirectory(dir=WORK) as out:
        unit = WarcFileUnit("B_00000", 0, truth["warc"], DataRoot(out), CrawlSource(str(folder)))
        started = cpu_seconds()
        stats = extract_warc_file(unit)
        seconds = cpu_seconds() - started
    pages = stats["pages"]  # the PagesStats the part carries
    return {"pages": pages["html_pages"], "seconds": seconds, "rows": pages["pages"], "candidates": stats["candidates"]}


def run_datatrove(folder: Path, truth: dict) -> dict:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    reader = WarcReader(str(folder), glob_pattern=truth["warc"])
    extractor = Trafilatura(favour_precision=True, timeout=TRAFILATURA_TIMEOUT_S)
    started = cpu_seconds()
    kept = sum(1 for _ in extractor.run(reader.run()))
    seconds = cpu_seconds() - started
    stats = extractor.stats.to_dict() if hasattr(extractor.stats, "to_dict") else {}
    pages = truth["html_pages"]
    return {"pages": pages, "seconds": seconds, "rows": kept, "timeouts": json.dumps(stats).count('"timeout"')}


def run_ceiling(folder: Path, truth: dict) -> dict:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text

    started = cpu_seconds()
    pages = 0
    for record in ArchiveIterator(str(folder / truth["warc"]), record_types=WarcRecordType.response):
        if (record.http_content_type or "") != "text/html" or record.http_headers.status_code != 200:
            continue
        html = record.reader.read().decode(record.http_charset or "utf-8", errors="replace")
        extract_plain_text(html, main_content=True)
        pages += 1
    return {"pages": pages, "seconds": cpu_seconds() - started, "rows": pages}


RUNNERS = {"step": run_step, "datatrove": run_datatrove, "ceiling": run_ceiling}


def measure(name: str, folder: Path) -> dict:
    """One contender in a fresh process pinned to CPU 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, __file__, "--run", name, str(folder)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Images: WARC step against the WAT path on the same pages, and against the generator's truth
# ---------------------------------------------------------------------------------------------


def images(folder: Path, truth: dict) -> dict:
    from cah_resources.candidates.image_links import CandidateFilters
    from cah_resources.candidates.stage import extract_pairs
    from cah_resources.contract import CandidatesStats, PagesStats
    from cah_resources.pages.html_page import PageRules
    from cah_resources.pages.stage import read_warc

    pages_stats = PagesStats()
    warc_pairs = read_warc(
        str(folder / truth["warc"]), truth["warc"], CandidateFilters(), PageRules(), CandidatesStats(), pages_stats
    ).pairs
    wat_pairs = extract_pairs(str(folder / truth["wat"]), CandidateFilters(), CandidatesStats())
    expected = {tuple(pair) for pair in truth["images"]}
    found = set(warc_pairs)
    pages = pages_stats.html_pages
    return {
        "html_pages": pages,
        "warc_candidates_per_page": round(len(warc_pairs) / pages, 2),
        "wat_candidates_per_page": round(len(wat_pairs) / pages, 2),
        "warc_over_wat": round(len(warc_pairs) / max(1, len(wat_pairs)), 2),
        "rule_named_images": len(expected),
        "found": len(found & expected),
        "recall": round(len(found & expected) / max(1, len(expected)), 4),
        "invented": len(found - expected),
        "by_attribute": dict(Counter(attribute for _, attribute in warc_pairs.values()).most_common()),
    }


# ---------------------------------------------------------------------------------------------
# Main-text quality on real pages with a known article body
# ---------------------------------------------------------------------------------------------

TOKEN = re.compile(r"\w+")


def token_f1(true: str, predicted: str) -> tuple[float, float, float]:
    expected, got = Counter(TOKEN.findall(true)), Counter(TOKEN.findall(predicted))
    if not expected and not got:
        return 1.0, 1.0, 1.0
    hit = sum((expected & got).values())
    precision, recall = hit / max(1, sum(got.values())), hit / max(1, sum(expected.values()))
    return precision, recall, (2 * precision * recall / (precision + recall) if hit else 0.0)


def shingle_f1(pairs: list[tuple[str, str]]) -> float:
    """The article-extraction benchmark's metric: 4-gram shingles, normalised per page, P and R averaged."""

    def shingles(text: str) -> Counter:
        tokens = TOKEN.findall(text)
        return Counter(tuple(tokens[i : i + 4]) for i in range(max(1, len(tokens) - 3)) if tokens[i : i + 4])

    precisions, recalls = [], []
    for true, predicted in pairs:
        expected, got = shingles(true), shingles(predicted)
        tp = sum((expected & got).values())
        fp, fn = sum((got - expected).values()), sum((expected - got).values())
        total = tp + fp + fn
        tp, fp, fn = (tp / total, fp / total, fn / total) if total else (0, 0, 0)
        if tp + fp > 0:
            precisions.append(1.0 if fp == fn == 0 else tp / (tp + fp))
        if tp + fn > 0:
            recalls.append(1.0 if fp == fn == 0 else tp / (tp + fn))
    p, r = statistics.mean(precisions), statistics.mean(recalls)
    return 2 * p * r / (p + r)


def main_text_quality() -> dict:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text

    from cah_resources.pages.html_page import PageRules, decode_html, parse_page

    truth = json.loads((ARTICLES / "ground-truth.json").read_text())
    extractors = {
        "step": lambda html: parse_page(html, PageRules()).text,
        "resiliparse": lambda html: extract_plain_text(html, main_content=True),
        "trafilatura": lambda html: (
            trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""
        ),
    }
    pages = {key: gzip.decompress((ARTICLES / "html" / f"{key}.html.gz").read_bytes()) for key in truth}
    # Their HTTP headers were not kept: the charset is the page's <meta> or detected, as for an undeclared page.
    texts = {key: decode_html(raw, None, 1.0) or "" for key, raw in pages.items()}
    result = {"pages": len(texts)}
    for name, extract in extractors.items():
        started = time.process_time()
        outputs = {key: extract(html) for key, html in texts.items()}
        seconds = time.process_time() - started
        scores = [token_f1(truth[key]["articleBody"], outputs[key]) for key in texts]
        result[name] = {
            "token_precision": round(statistics.mean(s[0] for s in scores), 3),
            "token_recall": round(statistics.mean(s[1] for s in scores), 3),
            "token_f1": round(statistics.mean(s[2] for s in scores), 3),
            "shingle_f1": round(shingle_f1([(truth[k]["articleBody"], outputs[k]) for k in texts]), 3),
            "ms_per_page": round(1000 * seconds / len(texts), 2),
        }
    return result


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the generated WARC file in MB (gzipped)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the speed contenders, best counts")
    parser.add_argument("--run", nargs=2, metavar=("CONTENDER", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        os.sched_setaffinity(0, {0})
        folder = Path(args.run[1])
        print(json.dumps(RUNNERS[args.run[0]](folder, json.loads((folder / "truth.json").read_text()))))
        return
    WORK.mkdir(exist_ok=True)
    sys.path.insert(0, str(REPO))
    folder, truth = bench_crawl(args.mb)
    print(f"WARC file: {truth['mb']} MB, {truth['html_pages']} HTML pages, {len(truth['images'])} rule-named images")
    best: dict[str, dict] = {}
    for round_ in range(args.repeats):
        for name in CONTENDERS:
            figures = measure(name, folder)
            figures["pages_per_cpu_s"] = round(figures["pages"] / figures["seconds"], 1)
            print(f"round {round_ + 1} {name}: {figures}", flush=True)
            if name not in best or figures["pages_per_cpu_s"] > best[name]["pages_per_cpu_s"]:
                best[name] = figures
    step, datatrove, ceiling = (best[n]["pages_per_cpu_s"] for n in CONTENDERS)
    print("\n| contender | pages / CPU s | ratio |\n| --- | ---: | --- |")
    print(f"| {LABELS['step']} | {step} | **{step / datatrove:.1f}x** datatrove + Trafilatura |")
    print(f"| {LABELS['datatrove']} | {datatrove} | 1 |")
    print(f"| {LABELS['ceiling']} | {ceiling} | step is {step / ceiling:.2f} of it |")
    found = images(folder, truth)
    print(f"\nimages: {json.dumps(found)}")
    quality = main_text_quality()
    print(f"main text ({quality['pages']} pages of the article-extraction benchmark):")
    for name in ("step", "resiliparse", "trafilatura"):
        print(f"  {name:12s} {quality[name]}")
    summary = {
        "warc_mb": truth["mb"],
        "html_pages": truth["html_pages"],
        "pages_per_cpu_s": {n: best[n]["pages_per_cpu_s"] for n in CONTENDERS},
        "step_over_datatrove": round(step / datatrove, 2),
        "step_over_ceiling": round(step / ceiling, 2),
        "image_recall": found["recall"],
        "invented_urls": found["invented"],
        "warc_over_wat_candidates": found["warc_over_wat"],
        "token_f1": {n: quality[n]["token_f1"] for n in ("step", "resiliparse", "trafilatura")},
        "shingle_f1": {n: quality[n]["shingle_f1"] for n in ("step", "resiliparse", "trafilatura")},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
