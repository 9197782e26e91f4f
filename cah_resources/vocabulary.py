"""The contract's vocabulary: download and clip statuses, drop reasons, damage kinds and each stage's stats."""

from __future__ import annotations

import functools
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from copy import copy
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Self

# Alt-text language categories: English, another language, none detected.
CATEGORIES = ("en", "multi", "nolang")
# A segment's candidates per category are ``candidates_<category>`` in its stats.json.
CATEGORY_KEY_PREFIX = "candidates_"
# A shard's rows (URLs attempted) and its images downloaded (rows with status OK), under img2dataset's
# stats.json names (ShardStats' fields): the keys in NNNNN_stats.json and the .done marker, and the same
# keys in Dagster metadata and `cah`'s summary line, so a figure seen in the UI is found on disk as it is.
COUNT = "count"
SUCCESSES = "successes"
# Similarity histograms have fixed 0.01 bins over [-1, 1] (contract.SIMILARITY_EDGES).
SIMILARITY_BINS = 200
# Page score histograms have fixed 0.1 bins over [0, 5] (contract.SCORE_EDGES), one per language.
SCORE_BINS = 50


# -- statuses, drop reasons, damage kinds: each spelled once ---------------------------------------
# StrEnums: a member is the string written to disk, so files of any build read the same, and a renamed
# status is a one-line change here that a type checker follows everywhere else.


class DownloadStatus(StrEnum):
    """An image_shards row's ``status``: OK, or why the URL gave no image (img2dataset's column)."""

    OK = "ok"
    # The network: before or while talking to the host.
    INVALID_URL = "invalid_url"
    BLOCKED_ADDRESS = "blocked_address"  # resolved to a private, loopback or link-local address
    DNS_TIMEOUT = "dns_timeout"
    DNS_ERROR = "dns_error"
    TIMEOUT = "timeout"
    TLS_ERROR = "tls_error"
    CONNECTION_ERROR = "connection_error"
    TRUNCATED = "truncated"
    BAD_RESPONSE = "bad_response"
    ERROR = "error"  # an exception no other status names
    REDIRECT_LOOP = "redirect_loop"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    HOST_UNRESPONSIVE = "host_unresponsive"  # the host timed out often enough: its remaining URLs are not tried
    # (a non-2xx answer is ``http_<code>``: see http_status_failure)
    # The body.
    TOO_LARGE = "too_large"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    BAD_ENCODING = "bad_encoding"
    FETCHED = "fetched"  # a body arrived: never a row's status, the image check gives that
    # Opt-outs and blocklists: the owner (or a list) said no.
    ROBOTS_NOAI = "robots_noai"  # X-Robots-Tag noai / noimageai on the image response
    ROBOTS_DISALLOWED = "robots_disallowed"  # robots.txt disallows the image's path for our token (or *)
    ROBOTS_UNREACHABLE = "robots_unreachable"  # robots.txt answered 5xx or 429: RFC 9309 disallows the host
    ROBOTS_TOO_COMPLEX = "robots_too_complex"  # robots.txt over opt_outs.ROBOTS_MAX_RULES rules: the host refused
    TDM_RESERVED = "tdm_reserved"  # TDMRep: tdm-reservation: 1 on the response, or tdmrep.json for its path
    BLOCKLISTED_IMAGE = "blocklisted_image"  # the downloaded bytes' hash is on a blocklist
    # The image.
    TOO_SMALL = "too_small"  # fewer bytes than the minimum
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_COSTLY = "too_costly"  # a progressive JPEG's scans would cost too much to decode
    IMAGE_TOO_SMALL = "image_too_small"
    ASPECT_RATIO_TOO_LARGE = "aspect_ratio_too_large"
    DECODE_TIMEOUT = "decode_timeout"
    DECODER_CRASHED = "decoder_crashed"


HTTP_STATUS_PREFIX = "http_"


def http_status_failure(code: int) -> str:
    """The download status of a non-2xx answer: ``http_<code>`` (``http_404``)."""
    return f"{HTTP_STATUS_PREFIX}{code}"


class DropReason(StrEnum):
    """Why candidates dropped an image link; counted in stats.json as ``drop_<reason>``.

    A link whose path ends in one of CandidateFilters.drop_extensions counts under that extension,
    without its dot (``drop_svg``, ``drop_gif``): those reasons are configuration, not vocabulary.
    """

    NO_ALT = "no_alt"
    ALT_TOO_SHORT = "alt_too_short"
    ALT_TOO_LONG = "alt_too_long"  # over max_raw_alt_length as found; or, with long_alt="drop", over max_alt_length
    DATA_URL = "data_url"
    JAVASCRIPT_URL = "javascript_url"
    BAD_URL = "bad_url"
    NOT_HTTP = "not_http"
    DOMAIN_TOO_LONG = "domain_too_long"
    URL_TOO_LONG = "url_too_long"  # over CandidateFilters.max_url_length, as written or resolved
    TOO_MANY_LINKS = "too_many_links"  # a page's image links past CandidateFilters.max_links_per_page
    BLOCKLISTED_URL = "blocklisted_url"  # the URL's hash is on a blocklist
    DUPLICATE = "duplicate"  # (url, text) seen earlier in the segment
    DUPLICATE_GLOBAL = "duplicate_global"  # (url, text) another segment owns (the dedup index)
    IMAGE_CAP = "image_cap"  # an <img> past a WARC page's image cap, not looked at


class PageDropReason(StrEnum):
    """Why a WARC response record gave no page row; counted in pages' stats.json as ``page_drop_<reason>``.

    Those before TOO_SHORT stop the page from being parsed, so they cost its images too; TOO_SHORT keeps
    its images and drops its text only.
    """

    NOT_HTTP = "not_http"  # a response record without an HTTP message (a DNS or whois answer)
    NOT_2XX = "not_2xx"  # redirects, errors
    NOT_HTML = "not_html"  # another Content-Type, or bytes that do not look like HTML
    TOO_LONG = "too_long"  # HTML over the page cap, skipped without being read
    UNDECODABLE = "undecodable"  # the charset does not decode it, or it decodes to binary junk
    TOO_DEEP = "too_deep"  # DOM nesting past the depth cap
    TOO_SLOW = "too_slow"  # parsing and extraction past the page's time budget
    TOO_SHORT = "too_short"  # main text under the minimum length


class OptOutSignal(StrEnum):
    """An opt-out a shard honoured (its stats' ``opt_out_signals``): what a release may say it honoured."""

    ROBOTS_NOAI = "robots_noai"  # X-Robots-Tag noai / noimageai
    ROBOTS_TXT = "robots_txt"
    TDMREP = "tdmrep"


# Every status or drop that means "the owner (or a list) said no": the report's "opted out and blocked" rows.
OPT_OUT_STATUSES: tuple[str, ...] = (
    DownloadStatus.ROBOTS_NOAI,
    DownloadStatus.ROBOTS_DISALLOWED,
    DownloadStatus.ROBOTS_UNREACHABLE,
    DownloadStatus.ROBOTS_TOO_COMPLEX,
    DownloadStatus.TDM_RESERVED,
    DropReason.BLOCKLISTED_URL,
    DownloadStatus.BLOCKLISTED_IMAGE,
)


class Damage(StrEnum):
    """A damaged WAT record, webdataset tar stretch or Parquet file of pages, counted (under this name)
    and skipped: it never ends the file (nor, for an unreadable file, its segment)."""

    TOO_LARGE = "malformed_too_large"  # over max_record_bytes
    TRUNCATED = "malformed_truncated"  # shorter than its Content-Length
    NON_UTF8 = "malformed_non_utf8"
    TOO_DEEP = "malformed_too_deep"  # JSON nested past Python's recursion limit
    INVALID_JSON = "malformed_invalid_json"
    LONE_SURROGATE = "malformed_lone_surrogate"  # a lone \ud800-style JSON escape, read as U+FFFD (the page kept)
    MISSING_FIELDS = "malformed_missing_fields"
    LINK = "malformed_link"  # an IMG@/src link whose src is not text
    CORRUPT_GZIP = "corrupt_gzip"  # a damaged stretch of gzip members, counted once
    CORRUPT_GZIP_TRUNCATED = "corrupt_gzip_truncated"  # the file's last gzip member is cut short
    CORRUPT_TRAILING_BYTES = "corrupt_trailing_bytes"  # bytes after the last record that hold no record
    CORRUPT_TAR = "corrupt_tar"  # a stretch of a webdataset tar that is no member (bad header, cut short)
    CORRUPT_PARQUET = "corrupt_parquet"  # a Parquet file of pages whose footer does not read: no row can be
    CORRUPT_ROW_GROUP = "corrupt_row_group_rows"  # rows of a Parquet row group that does not decode


_DAMAGE_KINDS = frozenset(Damage)


class ClipStatus(StrEnum):
    """A clip_pairs row's ``clip_status``: SCORED, or why the pair could not be."""

    SCORED = "scored"
    IMAGE_UNREADABLE = "image_unreadable"  # the JPEG does not decode
    IMAGE_TOO_LARGE = "image_too_large"  # the image alone fits neither the device's memory nor the CPU's
    IMAGE_MISSING = "image_missing"  # the tar has no image for the key
    CAPTION_MISSING = "caption_missing"  # a webdataset sample has neither a .txt nor a json caption
    UNKNOWN_CATEGORY = "unknown_category"  # no model is configured for the row's category


# -- stats: counters that add up across parts, shards and segments (datatrove's Stats) --------------
# One dataclass per stage. Its field names are the keys on disk (stats.json, NNNNN_stats.json, .done
# markers), so a stat has one name; ``a + b`` merges (counters add, peaks take the max, ...),
# ``to_dict`` / ``from_dict`` write and read the files. Files of older builds named a task's time
# ``seconds`` (candidates parts, clip_pairs markers), ``duration`` or ``download_seconds`` (image
# shards): ``from_dict`` reads those as ``task_seconds``, the one name written now.
LEGACY_STAT_NAMES = {"task_seconds": ("download_seconds", "duration", "seconds")}


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, Counter):
        total = Counter(a)
        total.update(b)  # unlike Counter + Counter, keeps the zero counts a stat names on purpose
        return total
    return a + b


def _same(a: Any, b: Any) -> Any:
    """An identity (segment, shard, ...): kept where both sides agree or one is not set yet."""
    return b if a is None else a if b is None or a == b else None


def _all(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    """What every side claims (opt-out signals honoured): the intersection, None meaning no side yet."""
    return b if a is None else a if b is None else sorted(set(a) & set(b))


def _union(a: list[dict], b: list[dict]) -> list[dict]:
    """Blocklists applied by any side, each named once by (kind, source, sha256)."""
    named = {(x["kind"], x["source"], x["sha256"]): x for x in [*a, *b]}
    return [named[key] for key in sorted(named)]


def _join(a: str | None, b: str | None) -> str | None:
    """Labels of the sides (devices, precisions), each once: ``cpu,cuda``."""
    labels = sorted({x for side in (a, b) if side for x in side.split(",")})
    return ",".join(labels) or None


def _histogram(a: list[int], b: list[int]) -> list[int]:
    # Markers of older builds binned otherwise: a histogram of another length is left out.
    return [x + y for x, y in zip(a, b, strict=True)] if len(b) == len(a) else a


def _histograms(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, list[int]]:
    """Histograms per key (language) added bin by bin; a key on one side only is taken as it is."""
    return {k: _histogram(a[k], b[k]) if k in a and k in b else list(a.get(k) or b[k]) for k in sorted({*a, *b})}


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


_MERGES = {
    "add": _add,
    "same": _same,
    "all": _all,
    "union": _union,
    "join": _join,
    "histogram": _histogram,
    "histograms": _histograms,
    "min": _min,
    "max": _max,
}


def _plain(counter: Counter[str]) -> dict[str, int]:
    """A counter as a file holds it: plain string keys (an enum member writes its value), sorted."""
    return {str(key): n for key, n in sorted(counter.items())}


_IDENTITIES = ("same", "min", "histogram", "histograms")  # merges of what metadata does not show by default


def _stat(default: Any = 0, merge: str = "add", shown: bool | None = None) -> Any:
    """A stat field: its default (a factory when mutable), how two sides of it merge, and whether
    Dagster metadata shows it (by default what adds up, not identities)."""
    meta = {
        "merge": merge,
        "shown": merge not in ("same", "min", "histogram", "histograms") if shown is None else shown,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _counter(title: str | None = "reason") -> Any:
    """A counter stat; metadata shows it as a table whose key column is ``title`` (None: not shown)."""
    return field(default_factory=Counter, metadata={"merge": "add", "shown": title is not None, "title": title})


class MetadataTable(NamedTuple):
    """A table for Dagster metadata as plain data (the assets turn it into Dagster's table)."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


BLOCKLIST_COLUMNS = ("kind", "source", "entries", "sha256")  # what a stage says of each blocklist it applied


@dataclass
class Stats:
    """Base of the stages' stats: merge with ``+`` (or ``total``), write with ``to_dict``, read with ``from_dict``."""

    HEADLINE: ClassVar[tuple[str, str]]  # the metadata names of what went in and what came out

    def __add__(self, other: Self) -> Self:
        merged = {
            f.name: _MERGES[f.metadata["merge"]](getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        }
        return type(self)(**merged)

    @classmethod
    def total(cls, many: Iterable[Self]) -> Self:
        return functools.reduce(operator.add, many, cls())

    def metadata(self) -> dict[str, Any]:
        """The stats a person reads in Dagster, each under its one name: numbers as they are, counters
        and blocklists as MetadataTables, claims (opt-out signals) as one line."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.metadata["shown"] or value is None:
                continue
            if isinstance(value, Counter):
                title = f.metadata["title"]
                ordered = sorted(_plain(value).items(), key=lambda kv: (-kv[1], kv[0]))
                out[f.name] = MetadataTable((title, "count"), [{title: k, "count": n} for k, n in ordered])
            elif f.metadata["merge"] == "union":
                out[f.name] = MetadataTable(BLOCKLIST_COLUMNS, value)
            elif f.metadata["merge"] == "all":
                out[f.name] = ", ".join(value) or "none"
            else:
                out[f.name] = round(value, 3) if isinstance(value, float) else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """The file's content: every field that is set, counters as sorted plain dicts."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = _plain(value) if isinstance(value, Counter) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Stats from a file of this or an older build; keys it does not know are left out."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = next((n for n in (f.name, *LEGACY_STAT_NAMES.get(f.name, ())) if n in data), None)
            if name is None:
                if f.metadata["merge"] == "all":
                    values[f.name] = []  # a file without the claim claims nothing
                continue
            value = data[name]
            values[f.name] = Counter(value) if f.default_factory is Counter else value
        return cls(**values)


@dataclass
class CandidatesStats(Stats):
    """What candidates counted: of one WAT file (a part) or, added up, of a segment (stats.json).

    On disk ``drops`` are flat ``drop_<reason>`` keys, ``damage`` flat Damage keys and ``categories``
    flat ``candidates_<category>`` keys, as img2dataset-style stats.json files are read.
    """

    metadata_records: int = _stat()
    html_pages: int = _stat()
    links_seen: int = _stat()
    alt_truncated: int = _stat()  # pairs kept with their text cut to max_alt_length
    language_calls: int = _stat()  # gcld3 runs: one per distinct text
    bytes: int = _stat()  # of the WAT files read
    candidates: int = _stat()
    categories: Counter[str] = _counter(None)  # candidates per category (a segment's, after dedup)
    drops: Counter[str] = _counter()  # links dropped per DropReason (or dropped extension)
    damage: Counter[str] = _counter("kind")  # records skipped per Damage kind
    wat_files: int = _stat()
    wat_file: str | None = _stat(None, "same")  # a part's file, crawl-relative
    blocklists: list[dict] = _stat([], "union")  # the URL lists applied: kind, source, entries, sha256
    task_seconds: float = _stat(0.0)

    DROP_PREFIX: ClassVar[str] = "drop_"
    HEADLINE: ClassVar[tuple[str, str]] = ("metadata_records", "candidates")  # what went in, what came out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **{f"{CATEGORY_KEY_PREFIX}{c}": self.categories[c] for c in CATEGORIES}}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("drops"), out.pop("damage"), out.pop("categories")
        out["task_seconds"] = round(self.task_seconds, 3)
        out.update({f"{self.DROP_PREFIX}{reason}": n for reason, n in _plain(self.drops).items()})
        out.update(_plain(self.damage))
        out.update({f"{CATEGORY_KEY_PREFIX}{category}": n for category, n in _plain(self.categories).items()})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        stats = super().from_dict(data)
        for key, value in data.items():
            if key.startswith(cls.DROP_PREFIX):
                stats.drops[key.removeprefix(cls.DROP_PREFIX)] = value
            elif key in _DAMAGE_KINDS:
                stats.damage[key] = value
        stats.categories.update(
            {c: data[f"{CATEGORY_KEY_PREFIX}{c}"] for c in CATEGORIES if f"{CATEGORY_KEY_PREFIX}{c}" in data}
        )
        return stats


@dataclass
class PagesStats(Stats):
    """What the WARC pass counted for pages: of one WARC file or, added up, of a segment (pages' stats.json).
    On disk ``drops`` are flat ``page_drop_<reason>`` keys and ``damage`` flat Damage keys."""

    HEADLINE: ClassVar[tuple[str, str]] = ("html_pages", "pages")

    warc_records: int = _stat()
    responses: int = _stat()
    html_pages: int = _stat()  # 2xx HTML responses parsed
    pages: int = _stat()  # rows kept
    images_without_url: int = _stat()  # <img>s with no URL at all (not links)
    bytes: int = _stat()  # of the WARC files read
    drops: Counter[str] = _counter()  # responses without a row, per PageDropReason
    damage: Counter[str] = _counter("kind")  # records skipped per Damage kind
    warc_files: int = _stat()
    warc_file: str | None = _stat(None, "same")  # a part's file
    task_seconds: float = _stat(0.0)

    DROP_PREFIX: ClassVar[str] = "page_drop_"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("drops"), out.pop("damage")
        out["task_seconds"] = round(self.task_seconds, 3)
        out.update({f"{self.DROP_PREFIX}{reason}": n for reason, n in _plain(self.drops).items()})
        out.update(_plain(self.damage))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        stats = super().from_dict(data)
        for key, value in data.items():
            if key.startswith(cls.DROP_PREFIX):
                stats.drops[key.removeprefix(cls.DROP_PREFIX)] = value
            elif key in _DAMAGE_KINDS:
                stats.damage[key] = value
        return stats


@dataclass
class ShardStats(Stats):
    """What one image shard (or, added up, a segment's shards) did: NNNNN_stats.json and the .done marker.

    ``count`` and ``successes`` are img2dataset's stats.json names (rows attempted, rows OK).
    """

    shard: int | None = _stat(None, "same")
    segment: str | None = _stat(None, "same")
    start: int | None = _stat(None, "same")  # the rows [start, stop) of the segment's candidates
    stop: int | None = _stat(None, "same")
    rows_digest: str | None = _stat(None, "same")  # of the rows' uids: changed candidates redo the shard
    image_workers: str | None = _stat(None, "same")  # "processes" or "threads"
    count: int = _stat()
    successes: int = _stat()
    failed: int = _stat()
    status_counts: Counter[str] = _counter("status")  # rows per DownloadStatus (or http_<code>)
    bytes_fetched: int = _stat()  # bodies downloaded
    bytes_ok_images: int = _stat()  # of the OK rows' downloaded bodies
    bytes_written: int = _stat()  # tar + parquet
    file_sizes: dict[str, int] | None = _stat(None, "same")  # a shard's tar and parquet: its marker vouches for them
    image_bytes_written: int = _stat()  # samples in the tar
    image_warnings: int = _stat()  # Pillow warnings while decoding
    start_time: float | None = _stat(None, "min")  # epoch seconds (img2dataset's names)
    end_time: float | None = _stat(None, "max", shown=False)
    task_seconds: float = _stat(0.0)
    dns_lookups: int = _stat()  # sent to the nameservers, one per name and family
    dns_cache_hits: int = _stat()
    dns_coalesced: int = _stat()  # lookups that waited for one another URL had started
    dns_failures: Counter[str] = _counter("status")  # per DownloadStatus (dns_timeout, dns_error)
    dns_seconds: float = _stat(0.0)  # summed duration of the lookups sent
    dns_peak_in_flight: int = _stat(0, "max")
    dns_hedged: int = _stat()  # lookups sent again after no answer for a while
    opt_out_signals: list[str] | None = _stat(None, "all")  # honoured by every shard: robots_noai, ...
    robots_txt_requests: int = _stat()
    tdmrep_requests: int = _stat()
    opt_out_origins: int = _stat()  # hosts whose robots.txt / tdmrep.json were judged
    unresponsive_hosts: int = _stat()  # host:ports cut short after repeated timeouts (host_unresponsive)
    blocklists: list[dict] = _stat([], "union")  # the image lists applied

    HEADLINE: ClassVar[tuple[str, str]] = (COUNT, SUCCESSES)
    # The stats a shard's parquet rows determine: its stats and marker must agree with them.
    FROM_ROWS: ClassVar[tuple[str, ...]] = (COUNT, SUCCESSES, "failed", "status_counts")

    @property
    def success_rate(self) -> float:
        return round(self.successes / self.count, 4) if self.count else 0.0

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "success_rate": self.success_rate}

    def honoured(self) -> dict[str, Any]:
        """What a release built from these shards may say it honoured: signals and blocklists."""
        return {"opt_out_signals": self.opt_out_signals or [], "blocklists": self.blocklists}


@dataclass
class ClipStats(Stats):
    """What clip_pairs did with one image shard (its .done marker) or, added up, a segment's shards."""

    segment: str | None = _stat(None, "same")
    shard: int | None = _stat(None, "same")
    pairs: int = _stat()  # the shard's OK rows
    scored: Counter[str] = _counter(None)  # per category
    kept: Counter[str] = _counter(None)  # per category
    not_scored: Counter[str] = _counter("clip_status")  # per ClipStatus
    histogram: list[int] = _stat([0] * SIMILARITY_BINS, "histogram")  # per contract.SIMILARITY_EDGES bin
    task_seconds: float = _stat(0.0)
    device: str | None = _stat(None, "join")
    precision: str | None = _stat(None, "join")
    worker: str | None = _stat(None, "same")  # the Dask worker that scored the shard
    models: dict | None = _stat(None, "same")  # category -> model label
    thresholds: dict | None = _stat(None, "same")  # category -> similarity threshold
    device_memory: dict | None = _stat(None, "same")  # what device out-of-memory cost the shard
    damage: Counter[str] = _counter("damage")  # per Damage: stretches of a webdataset tar skipped

    HEADLINE: ClassVar[tuple[str, str]] = ("pairs_scored", "pairs_kept")

    @property
    def pairs_scored(self) -> int:
        return sum(self.scored.values())

    @property
    def pairs_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def kept_rate(self) -> float:
        return round(self.pairs_kept / self.pairs_scored, 4) if self.pairs_scored else 0.0

    @property
    def shard_pairs_per_s(self) -> float:
        """Pairs scored per second of the shard tasks' own time (0 before any)."""
        return round(self.pairs_scored / self.task_seconds, 2) if self.task_seconds > 0 else 0.0

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            **{f"pairs_scored_{c}": self.scored[c] for c in CATEGORIES},
            **{f"pairs_kept_{c}": self.kept[c] for c in CATEGORIES},
            "pairs_scored": self.pairs_scored,
            "pairs_kept": self.pairs_kept,
            "kept_rate": self.kept_rate,
            "shard_pairs_per_s": self.shard_pairs_per_s,
            "device": self.device or "none",
            "precision": self.precision or "none",
        }

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "task_seconds": round(self.task_seconds, 3)}


@dataclass
class PageScoreStats(Stats):
    """What page_scores did with one file of pages (its .done marker) or, added up, a segment's files."""

    segment: str | None = _stat(None, "same")
    shard: int | None = _stat(None, "same")
    pages: int = _stat()  # rows of the file of pages
    no_text: int = _stat()  # pages whose text is null: kept as rows, not scored
    scored: Counter[str] = _counter("language")  # per language
    kept: Counter[str] = _counter("language")  # per language
    tokens: int = _stat()  # after truncation to max_length: what the model ran on
    histograms: dict = _stat({}, "histograms")  # language -> counts per contract.SCORE_EDGES bin
    task_seconds: float = _stat(0.0)
    device: str | None = _stat(None, "join")
    dtype: str | None = _stat(None, "join")
    model: str | None = _stat(None, "same")
    revision: str | None = _stat(None, "join")  # a segment scored by two revisions shows both
    score_rule: str | None = _stat(None, "same")
    threshold: float | None = _stat(None, "same")
    device_memory: dict | None = _stat(None, "same")  # what device out-of-memory cost the file
    damage: Counter[str] = _counter("damage")  # per Damage: unreadable files, rows of undecodable row groups
    source_version: str | None = _stat(None, "same")  # the file of pages as scored (fsspec's checksum)

    HEADLINE: ClassVar[tuple[str, str]] = ("pages_scored", "pages_kept")

    @property
    def pages_scored(self) -> int:
        return sum(self.scored.values())

    @property
    def pages_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def kept_rate(self) -> float:
        return round(self.pages_kept / self.pages_scored, 4) if self.pages_scored else 0.0

    @property
    def pages_per_s(self) -> float:
        """Pages per second of the file tasks' own time (0 before any)."""
        return round(self.pages / self.task_seconds, 2) if self.task_seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.task_seconds, 1) if self.task_seconds > 0 else 0.0

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "pages_scored": self.pages_scored,
            "pages_kept": self.pages_kept,
            "kept_rate": self.kept_rate,
            "file_pages_per_s": self.pages_per_s,
            "file_tokens_per_s": self.tokens_per_s,
            "device": self.device or "none",
            "dtype": self.dtype or "none",
            "model": self.model or "none",
        }

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "task_seconds": round(self.task_seconds, 3)}
