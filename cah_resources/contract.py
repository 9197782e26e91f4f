"""The on-disk contract between the stages: names, paths, schemas, finished shards, statuses and stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

# The vocabulary (statuses, drop reasons, damage kinds, stats, categories) is part of the contract; it
# lives in its own module so that processes which must not load pyarrow (image workers) can import it.
from cah_resources.vocabulary import (  # noqa: F401 (re-exported: the contract is where stages import them from)
    BLOCKLIST_COLUMNS,
    CATEGORIES,
    COUNT,
    OPT_OUT_STATUSES,
    SCORE_BINS,
    SIMILARITY_BINS,
    SUCCESSES,
    CandidatesStats,
    ClipStats,
    ClipStatus,
    Damage,
    DownloadStatus,
    DropReason,
    MetadataTable,
    OptOutSignal,
    PageDropReason,
    PageScoreStats,
    PagesStats,
    ShardStats,
    Stats,
    http_status_failure,
)

if TYPE_CHECKING:
    from cah_resources.storage import DataRoot

# The three partitioned stages, in the order they run; each is an asset, a module and a folder.
STAGES = ("candidates", "image_shards", "clip_pairs")
CANDIDATES, IMAGE_SHARDS, CLIP_PAIRS = STAGES
# The text path's partitioned stage: pages scored by a text classifier (a WARC crawl's pages, a dataset's rows).
PAGE_SCORES = "page_scores"
# The unpartitioned roll-ups of a crawl.
RELEASE, REPORT = "release", "report"
DATASET_ASSETS = (RELEASE, REPORT)
CRAWLS = "crawls"  # crawls/<CRAWL>/segments.json: a registered crawl's segments
# What a registered crawl's files are, recorded in its plan: Common Crawl's WAT files (image links and
# alt text, no page text), its WARC files (the HTML itself: images and page text from one parse), or the
# files of an existing Parquet dataset (one row per page, its text in the plan's text column).
FORMAT_WAT = "wat"
FORMAT_WARC = "warc"
FORMAT_PARQUET = "parquet"
# ... or of an existing webdataset (img2dataset's output, LAION's tars): samples grouped by key, an image
# under one of WEBDATASET_IMAGE_EXTENSIONS (the first present wins), its caption in .txt, img2dataset's
# fields (url, caption, width, height, original_width, original_height) in an optional .json.
FORMAT_WEBDATASET = "webdataset"
FORMATS = (FORMAT_WAT, FORMAT_WARC, FORMAT_PARQUET, FORMAT_WEBDATASET)
CRAWL_FORMATS = (FORMAT_WAT, FORMAT_WARC)  # listed by Common Crawl (<format>.paths.gz); the others are datasets
DATASET_STAGE = {FORMAT_PARQUET: PAGE_SCORES, FORMAT_WEBDATASET: CLIP_PAIRS}  # where a dataset's segments start
# Formats whose segments make image-text pairs: a release, and the report's image sections. A Parquet
# dataset's pages are text only: its report shows page scores and throughput.
PAIR_FORMATS = (FORMAT_WAT, FORMAT_WARC, FORMAT_WEBDATASET)
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# A webdataset's shards, by name: tars, plain or compressed as Python's tarfile reads them ("r|*").
WEBDATASET_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
DEFAULT_TEXT_COLUMN = "text"  # a Parquet dataset's text column unless registered with another

MARKER = ".done"  # a shard's completion marker, written last: its presence is what "finished" means
SHARD_DIGITS = 5  # NNNNN: shard numbers, and the shard half of a sample key

CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),  # blake2b-128 of url + "\x00" + text, hex
        pa.field("url", pa.string(), nullable=False),  # absolute http(s) image URL
        pa.field("text", pa.string(), nullable=False),  # alt text, whitespace-normalized
        pa.field("page_url", pa.string(), nullable=False),  # page of the first occurrence
        pa.field("category", pa.string(), nullable=False),  # en | multi | nolang
        pa.field("language", pa.string(), nullable=False),  # gcld3 code ("und" if none)
        pa.field("language_prob", pa.float32(), nullable=False),
        pa.field("wat_file", pa.string(), nullable=False),  # crawl-relative WAT (or WARC) file it was read from
        # Where in the page the URL was written: "src" (a WAT's IMG@/src, or <img src>), "srcset",
        # a lazy-loading attribute ("data-src", "data-srcset", ...), "picture>source" or "noscript>img".
        pa.field("url_attribute", pa.string(), nullable=False),
    ]
)
# url_attribute of every WAT candidate: a WAT file keeps an image's src only.
URL_ATTRIBUTE_SRC = "src"
# The text stage of a WARC crawl: one row per kept HTML page, its main text and where its record sits,
# so the raw record can be fetched again (a range request for offset..offset+length of the WARC file).
PAGES = "pages"
PAGES_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),  # WARC-Record-ID, <urn:uuid:...>
        pa.field("url", pa.string(), nullable=False),  # WARC-Target-URI
        pa.field("title", pa.string(), nullable=False),  # <title>, whitespace-normalized ("" if none)
        pa.field("text", pa.string(), nullable=False),  # main content, boilerplate removed
        pa.field("language", pa.string(), nullable=False),  # gcld3 code of the text ("und" if none)
        pa.field("language_prob", pa.float32(), nullable=False),
        pa.field("chars", pa.int32(), nullable=False),  # len(text)
        pa.field("date", pa.string(), nullable=False),  # WARC-Date as written (ISO 8601)
        pa.field("warc_file", pa.string(), nullable=False),  # crawl-relative WARC path (or the file's URL)
        pa.field("offset", pa.int64(), nullable=False),  # byte offset of the record (its gzip member)
        pa.field("length", pa.int64(), nullable=False),  # bytes of the record as stored (compressed)
    ]
)
# The assets a stage's one step writes together: a WARC file is read once for candidates and pages.
STAGE_ASSETS = {CANDIDATES: (CANDIDATES, PAGES)}


def stage_assets(stage: str) -> tuple[str, ...]:
    """The assets the stage's step materializes together (a job or schedule selects all of them or none)."""
    return STAGE_ASSETS.get(stage, (stage,))


# What image_shards adds to each candidate row: one row per attempted URL.
DOWNLOAD_FIELDS = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("error_message", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
    ]
)
# What clip_pairs adds to each ok shard row.
CLIP_FIELDS = pa.schema(
    [
        ("similarity", pa.float32()),
        ("threshold", pa.float32()),
        ("kept", pa.bool_()),
        ("clip_model", pa.string()),
        ("nsfw", pa.string()),
        ("nsfw_score", pa.float32()),
        ("watermark_score", pa.float32()),
        ("clip_status", pa.string()),
        ("clip_error", pa.string()),
    ]
)


# What page_scores adds to each page's own columns (a page column of the same name is replaced).
PAGE_SCORE_FIELDS = pa.schema(
    [
        ("score", pa.float32()),  # the score rule's value: the regression logit, or a label's probability
        ("int_score", pa.int64()),  # FineWeb-Edu's: the score rounded (half to even) and clamped to 0..5
        ("kept", pa.bool_()),  # score >= threshold
        ("classifier_model", pa.string()),  # model id or local checkpoint folder
        ("classifier_revision", pa.string()),  # Hub commit, or sha256:<digest> of a local checkpoint
    ]
)
UNKNOWN_LANGUAGE = "und"  # a page without a language column, in page_scores' per-language histograms


def shard_row_schema(candidate_schema: pa.Schema = CANDIDATES_SCHEMA) -> pa.Schema:
    """Columns of an image shard's parquet: the candidate's, then the download's."""
    return pa.schema(list(candidate_schema) + [f for f in DOWNLOAD_FIELDS if f.name not in candidate_schema.names])


# Similarity histogram (cosine, values clipped to [-1, 1]): fixed 0.01 bins, so histograms of any
# number of shards and segments add up exactly, and the report's plot and the stage's metadata agree.
SIMILARITY_EDGES = np.round(np.linspace(-1.0, 1.0, SIMILARITY_BINS + 1), 2)


def similarity_histogram(values: np.ndarray) -> np.ndarray:
    """Pair counts per SIMILARITY_EDGES bin."""
    return np.histogram(np.clip(values, -1.0, 1.0), bins=SIMILARITY_EDGES)[0]


# Page score histogram: fixed 0.1 bins over FineWeb-Edu's 0-5 scale (a probability fills the first ten),
# values clipped into it, so histograms of any number of files and segments add up exactly.
SCORE_EDGES = np.round(np.linspace(0.0, 5.0, SCORE_BINS + 1), 1)


def score_histogram(values: np.ndarray) -> np.ndarray:
    """Page counts per SCORE_EDGES bin."""
    return np.histogram(np.clip(values, 0.0, 5.0), bins=SCORE_EDGES)[0]


# -- paths under the data root ------------------------------------------------------------------


def stage_folder(root: DataRoot, stage: str, segment: str) -> str:
    """``<stage>/<segment>/``: one partition's outputs of one stage."""
    return root.path(stage, segment)


def candidates_path(root: DataRoot, segment: str) -> str:
    return root.path(CANDIDATES, segment, "candidates.parquet")


def candidates_stats_path(root: DataRoot, segment: str) -> str:
    return root.path(CANDIDATES, segment, "stats.json")


def pages_path(root: DataRoot, segment: str) -> str:
    return root.path(PAGES, segment, "pages.parquet")


def pages_stats_path(root: DataRoot, segment: str) -> str:
    return root.path(PAGES, segment, "stats.json")


def pages_parts_folder(root: DataRoot, segment: str) -> str:
    """Per-WARC-file partial pages of a segment, removed once merged."""
    return root.path(PAGES, segment, "parts")


def candidates_parts_folder(root: DataRoot, segment: str) -> str:
    """Per-WAT-file partial results of a segment's candidates, removed once merged."""
    return root.path(CANDIDATES, segment, "parts")


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}"


def shard_paths(folder: str, shard: int) -> dict[str, str]:
    """An image shard's files: NNNNN.tar (webdataset), .parquet (every attempt), _stats.json, .done."""
    name = shard_name(shard)
    return {
        "tar": f"{folder}/{name}.tar",
        "parquet": f"{folder}/{name}.parquet",
        "stats": f"{folder}/{name}_stats.json",
        "done": f"{folder}/{name}{MARKER}",
    }


def kept_folder(root: DataRoot, segment: str, stage: str = CLIP_PAIRS) -> str:
    """A scoring stage's kept rows of a segment, one parquet per shard: clip_pairs' is the release's view."""
    return root.path(stage, segment, "kept")


def kept_path(root: DataRoot, segment: str, shard: int, stage: str = CLIP_PAIRS) -> str:
    return f"{kept_folder(root, segment, stage)}/{shard_name(shard)}.parquet"


# A clip_pairs shard's embeddings, in clip-retrieval's layout: one folder per model under the segment's
# folder (EMBEDDINGS for the en model, EMBEDDINGS_<category> for another), in it one folder per kind, and
# files <kind>_<part><ext> with the same part across kinds (NNNNN per segment, <segment>-NNNNN in a release).
EMBEDDINGS = "embeddings"
EMBEDDING_KINDS = (("img_emb", ".npy"), ("text_emb", ".npy"), ("metadata", ".parquet"))


def embedding_path(model_folder: str, kind: str, part: str) -> str:
    """``<model_folder>/<kind>/<kind>_<part><ext>``: one file of clip-retrieval's layout."""
    return f"{model_folder}/{kind}/{kind}_{part}{dict(EMBEDDING_KINDS)[kind]}"


def release_folder(root: DataRoot, crawl: str) -> str:
    return root.path(RELEASE, crawl)


def release_embeddings_folder(root: DataRoot, crawl: str) -> str:
    """A crawl's merged embeddings: ``release/<CRAWL>/embeddings/``, one folder per model in it."""
    return f"{release_folder(root, crawl)}/{EMBEDDINGS}"


def report_folder(root: DataRoot, crawl: str) -> str:
    return root.path(REPORT, crawl)


def segments_manifest_path(root: DataRoot, crawl: str) -> str:
    return root.path(CRAWLS, crawl, "segments.json")


class ShardListing(NamedTuple):
    """A stage folder's shards (names NNNNN, in shard order) from one listing."""

    finished: list[str]  # those with a .done marker: what "finished" means
    written: list[str]  # those with a .parquet, finished or not (a shard cut short has one without marker)


def list_shards(root: DataRoot, folder: str) -> ShardListing:
    entries = root.listdir(folder)

    def named(suffix: str) -> list[str]:
        names = (n.removesuffix(suffix) for n in entries if n.endswith(suffix))
        return sorted(n for n in names if len(n) == SHARD_DIGITS and n.isdigit())

    return ShardListing(named(MARKER), named(".parquet"))


def finished_shards(root: DataRoot, folder: str) -> list[str]:
    """Names (NNNNN) of the folder's finished shards, in shard order: those with a ``.done`` marker."""
    return list_shards(root, folder).finished
