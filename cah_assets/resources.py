"""Every Dagster resource of cah: what a run configures, each default taken from the plain settings it builds.

Resources live here, apart from the plain objects they hand out (DataRoot, CrawlSource, ShardSettings,
ScoringSettings, DedupIndex, Fleet), so that the worker processes running those never import Dagster.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING
from typing import Any

import dagster as dg
from distributed import SpecCluster
from pydantic import Field, PrivateAttr

from cah_assets.partitions import ADD_BATCH
from cah_assets.policies import MAX_IN_FLIGHT, MAX_REQUESTS_PER_TICK
from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.wat import MAX_RECORD_BYTES
from cah_resources.clip_pairs.settings import LAION_MODELS, SCORING_DEFAULTS, ClipModelSpec, ScoringSettings
from cah_resources.contract import CATEGORIES
from cah_resources.crawl.common_crawl import CRAWL_LIST_URL, CrawlSource
from cah_resources.dataset.dedup_index import DEFAULT_BATCH_SIZE, DEFAULT_TABLE, DedupIndex, default_sqlite_url
from cah_resources.dataset.report import png_markdown
from cah_resources.fleet.compute import DaskCompute
from cah_resources.fleet.hetzner import Fleet, Progress, load_projects
from cah_resources.fleet.settings import DEFAULTS as FLEET_DEFAULTS
from cah_resources.fleet.settings import FLEET_ENV, FleetSettings, env_default
from cah_resources.image_shards.downloader import FetchSettings
from cah_resources.image_shards.resizer import ResizeSettings
from cah_resources.image_shards.stage import ShardSettings
from cah_resources.storage import S3_ENV_VARS, S3_PREFIXES, DataRoot, s3_storage_options

# The Dagster UI renders a markdown metadata value in place only below this many characters (longer
# ones hide behind "[Show Markdown]"): a plot shows at once only as a short link to its PNG.
INLINE_MARKDOWN_CHARS = 1000


def default(settings: type, name: str) -> Any:
    """A settings dataclass field's default, where it is written once; tuples come back as lists."""
    spec = settings.__dataclass_fields__[name]
    value = spec.default if spec.default is not MISSING else spec.default_factory()
    return list(value) if isinstance(value, tuple) else value


# --- where data lives and comes from -------------------------------------------------------------


class StorageResource(dg.ConfigurableResource):
    """Where outputs go: a local folder (default ``./data``) or any fsspec URL such as ``s3://bucket/cah``.

    For ``s3://`` roots, empty endpoint and credential fields leave them to botocore's standard
    sources (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION, ~/.aws); set through ``dg.EnvVar`` they travel with the data root to every worker.
    """

    root: str = "data"
    storage_options_json: str = "{}"
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = ""

    @classmethod
    def from_env(cls, root: str) -> StorageResource:
        """``root`` with the S3 endpoint and credentials of the standard AWS variables that are set,
        read through ``dg.EnvVar`` so that no secret shows in run config."""
        fields = {}
        for name, variables in S3_ENV_VARS.items():
            variable = next((v for v in variables if os.environ.get(v)), None)
            if variable:
                fields[name] = dg.EnvVar(variable)
        return cls(root=root, **fields)

    def data_root(self) -> DataRoot:
        options = json.loads(self.storage_options_json)
        if self.root.startswith(S3_PREFIXES):
            # Outside a run (CLI, registration) EnvVar fields are not resolved yet: read them here.
            values = [
                v.get_value("") if isinstance(v, dg.EnvVar) else v
                for v in (self.endpoint_url, self.access_key_id, self.secret_access_key, self.region)
            ]
            options.update(s3_storage_options(*values))
        return DataRoot(self.root, options)


class CommonCrawl(dg.ConfigurableResource):
    """Where WAT files are read from: Common Crawl's HTTPS endpoint (default), a mirror, or a folder."""

    base_url: str = default(CrawlSource, "base")
    cache_dir: str = default(CrawlSource, "cache_dir")
    retries: int = default(CrawlSource, "retries")
    timeout_s: float = default(CrawlSource, "timeout_s")

    def source(self) -> CrawlSource:
        return CrawlSource(self.base_url, self.cache_dir, self.retries, self.timeout_s)


class CrawlDiscovery(dg.ConfigurableResource):
    """Which crawls the discovery sensor registers, and how fast it adds their segments as partitions."""

    crawl_list: str = Field(CRAWL_LIST_URL, description="URL or local path of a collinfo.json-style crawl list")
    include: str = Field(r"^CC-MAIN-\d{4}-\d{2}$", description="regular expression a crawl id must match")
    newest: int = Field(1, description="register the newest N matching crawls (each adds ~2000 partitions)")
    files_per_segment: int = Field(0, description="WAT files per segment; 0 sizes each crawl to about 2000 segments")
    segments_per_tick: int = Field(ADD_BATCH, description="at most this many new partitions per sensor tick")


class SegmentFlow(dg.ConfigurableResource):
    """How fast the schedule feeds segments into the pipeline."""

    crawls: list[str] = Field([], description="active crawls, in order; empty: every registered crawl, newest first")
    segments_per_tick: int = Field(MAX_REQUESTS_PER_TICK, description="segments requested per schedule tick")
    max_in_flight: int = Field(MAX_IN_FLIGHT, description="segments with a stage queued or running, at most")


# --- the stages -----------------------------------------------------------------------------------


class CandidateRules(dg.ConfigurableResource):
    """Crawling@Home's link filters; see README "candidates" for what each drop reason means."""

    min_alt_length: int = default(CandidateFilters, "min_alt_length")
    max_alt_length: int = default(CandidateFilters, "max_alt_length")
    long_alt: str = default(CandidateFilters, "long_alt")
    drop_extensions: list[str] = default(CandidateFilters, "drop_extensions")
    max_domain_length: int = default(CandidateFilters, "max_domain_length")
    # A WAT record larger than this is counted as malformed_too_large and skipped, unread.
    max_record_bytes: int = MAX_RECORD_BYTES
    # URL hash lists to honour (SHA-256 or MD5 hex, one per line; paths or fsspec URLs): listed
    # URLs are dropped as blocklisted_url and never downloaded.
    blocked_url_lists: list[str] = default(CandidateFilters, "blocked_url_lists")

    def filters(self) -> CandidateFilters:
        return CandidateFilters(
            self.min_alt_length,
            self.max_alt_length,
            self.long_alt,
            tuple(e.lower() for e in self.drop_extensions),
            self.max_domain_length,
            tuple(self.blocked_url_lists),
        )


class ImageDownloader(dg.ConfigurableResource):
    """How image_shards downloads: network limits, the address guard, image checks, resizing, shard size."""

    concurrency: int = default(FetchSettings, "concurrency")
    per_host_connections: int = default(FetchSettings, "per_host_connections")
    connect_timeout: float = default(FetchSettings, "connect_timeout")
    read_timeout: float = default(FetchSettings, "read_timeout")
    total_timeout: float = default(FetchSettings, "total_timeout")
    max_body_bytes: int = default(FetchSettings, "max_body_bytes")
    max_redirects: int = default(FetchSettings, "max_redirects")
    retries: int = default(FetchSettings, "retries")
    retry_backoff: float = default(FetchSettings, "retry_backoff")
    max_retry_after: float = default(FetchSettings, "max_retry_after")
    user_agent: str = default(FetchSettings, "user_agent")
    user_agent_token: str = default(FetchSettings, "user_agent_token")
    honour_robots_noai: bool = default(FetchSettings, "honour_robots_noai")
    disallowed_robots_directives: list[str] = default(FetchSettings, "disallowed_robots_directives")
    # Opt-outs of image hosts, each fetched once per host per shard task: robots.txt (RFC 9309, judged
    # for user_agent_token, then *) and TDMRep (tdm-reservation header, /.well-known/tdmrep.json).
    honour_robots_txt: bool = default(FetchSettings, "honour_robots_txt")
    honour_tdmrep: bool = default(FetchSettings, "honour_tdmrep")
    robots_max_bytes: int = default(FetchSettings, "robots_max_bytes")
    robots_unreachable_seconds: float = default(FetchSettings, "robots_unreachable_seconds")
    # Image-content hash lists (SHA-256 or MD5 hex per line; paths or fsspec URLs): listed bytes
    # become 'blocklisted_image' and are never written.
    blocked_image_lists: list[str] = default(ShardSettings, "blocked_image_lists")
    # Private/loopback networks the downloader may reach anyway (tests, an intranet mirror).
    allowed_networks: list[str] = default(FetchSettings, "allowed_networks")
    block_private_addresses: bool = default(FetchSettings, "block_private_addresses")
    verify_tls: bool = default(FetchSettings, "verify_tls")
    # DNS: the system's nameservers unless listed here ("ip" or "ip:port"), e.g. a local caching
    # resolver (Unbound, knot-resolver); lookups have their own limit and timeout, and answers are
    # cached per shard task for their TTL clamped to dns_min_ttl..dns_max_ttl seconds.
    nameservers: list[str] = default(FetchSettings, "nameservers")
    dns_concurrency: int = default(FetchSettings, "dns_concurrency")
    dns_timeout: float = default(FetchSettings, "dns_timeout")
    dns_min_ttl: float = default(FetchSettings, "dns_min_ttl")
    dns_max_ttl: float = default(FetchSettings, "dns_max_ttl")
    dns_negative_ttl: float = default(FetchSettings, "dns_negative_ttl")
    resize_mode: str = default(ResizeSettings, "resize_mode")
    image_size: int = default(ResizeSettings, "image_size")
    resize_only_if_bigger: bool = default(ResizeSettings, "resize_only_if_bigger")
    encode_quality: int = default(ResizeSettings, "encode_quality")
    allowed_formats: list[str] = default(ResizeSettings, "allowed_formats")
    min_bytes: int = default(ResizeSettings, "min_bytes")
    min_side: int = default(ResizeSettings, "min_side")
    max_pixels: int = default(ResizeSettings, "max_pixels")
    max_aspect_ratio: float = default(ResizeSettings, "max_aspect_ratio")
    # Decode cost: JPEG scans x pixels refused before decoding ('too_costly'), CPU seconds per image
    # in its worker process ('decode_timeout'); 0 = no limit.
    max_scan_pixels: int = default(ResizeSettings, "max_scan_pixels")
    max_decode_cpu_seconds: float = default(ResizeSettings, "max_decode_cpu_seconds")
    shard_size: int = default(ShardSettings, "shard_size")
    image_processes: int = default(ShardSettings, "image_processes")
    # Downloaded bytes waiting for the image workers per shard task; past it new downloads wait.
    image_backlog_bytes: int = default(ShardSettings, "image_backlog_bytes")

    def settings(self) -> ShardSettings:
        return ShardSettings.from_flat(self.model_dump())


class ClipScorer(dg.ConfigurableResource):
    """open_clip models and similarity thresholds per candidate category (LAION-5B's by default)."""

    en_model: str = LAION_MODELS["en"].model
    en_pretrained: str = LAION_MODELS["en"].pretrained
    en_threshold: float = SCORING_DEFAULTS.thresholds["en"]
    multi_model: str = LAION_MODELS["multi"].model
    multi_pretrained: str = LAION_MODELS["multi"].pretrained
    multi_threshold: float = SCORING_DEFAULTS.thresholds["multi"]
    nolang_model: str = LAION_MODELS["nolang"].model
    nolang_pretrained: str = LAION_MODELS["nolang"].pretrained
    nolang_threshold: float = SCORING_DEFAULTS.thresholds["nolang"]
    open_clip_config: str = ""
    device: str = SCORING_DEFAULTS.device
    precision: str = SCORING_DEFAULTS.precision
    batch_size: int = SCORING_DEFAULTS.batch_size
    decode_workers: int = SCORING_DEFAULTS.decode_workers
    prefetch_batches: int = SCORING_DEFAULTS.prefetch_batches
    decode: str = SCORING_DEFAULTS.decode
    write_embeddings: bool = SCORING_DEFAULTS.write_embeddings

    def settings(self) -> ScoringSettings:
        """The plain settings the stage function takes on a worker."""
        return ScoringSettings(
            models={
                c: ClipModelSpec(getattr(self, f"{c}_model"), getattr(self, f"{c}_pretrained"), self.open_clip_config)
                for c in CATEGORIES
            },
            thresholds={c: float(getattr(self, f"{c}_threshold")) for c in CATEGORIES},
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            decode_workers=self.decode_workers,
            prefetch_batches=self.prefetch_batches,
            decode=self.decode,
            write_embeddings=self.write_embeddings,
        )

    @classmethod
    def tiny(cls, **overrides: Any) -> ClipScorer:
        """The tiny CLIP shipped with cah for every category: offline demo and tests."""
        from cah_resources.samples.tiny_clip import (
            TINY_CLIP_CHECKPOINT,
            TINY_CLIP_CONFIG,
            TINY_CLIP_NAME,
            TINY_CLIP_THRESHOLDS,
        )

        fields: dict[str, Any] = {"open_clip_config": str(TINY_CLIP_CONFIG)}
        for category in CATEGORIES:
            fields[f"{category}_model"] = TINY_CLIP_NAME
            fields[f"{category}_pretrained"] = str(TINY_CLIP_CHECKPOINT)
            fields[f"{category}_threshold"] = TINY_CLIP_THRESHOLDS[category]
        return cls(**{**fields, **overrides})


# --- the compute engine and its machines ---------------------------------------------------------


class ComputeResource(DaskCompute, dg.ConfigurableResource):
    """Dask distributed cluster the assets submit their work to (a LocalCluster by default)."""

    # "local" or "remote"; empty: $CAH_COMPUTE_MODE, else "local".
    mode: str = ""
    n_workers: int = 0
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str = "auto"
    # empty: $CAH_SCHEDULER_ADDRESS
    scheduler_address: str = ""
    task_retries: int = 2
    # -1: one GPU worker per visible CUDA device; n >= 0: that many (0 turns the GPU off).
    local_gpus: int = -1
    # When no worker advertises GPU, GPU work runs on CPU workers instead of failing the run.
    allow_cpu_fallback: bool = True
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    connect_timeout_s: float = 30.0

    # Inside a Dagster run the local cluster is started once and kept for every step and call of
    # that run process (starting one costs seconds); outside a run each client() makes its own.
    _keep_cluster: bool = PrivateAttr(default=False)
    _cluster: SpecCluster | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._keep_cluster = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


class HetznerFleet(dg.ConfigurableResource):
    """CPU runners on Hetzner Cloud that join the Dask scheduler; tokens come from HCLOUD_TOKENS, never config."""

    name: str = FLEET_DEFAULTS.name
    server_type: str = FLEET_DEFAULTS.server_type
    location: str = FLEET_DEFAULTS.location
    image: str = FLEET_DEFAULTS.image
    ssh_keys: list[str] = list(FLEET_DEFAULTS.ssh_keys)
    max_servers: int = FLEET_DEFAULTS.max_servers
    max_price_per_hour: float = FLEET_DEFAULTS.max_price_per_hour
    scheduler_address: str = FLEET_DEFAULTS.scheduler_address
    tls_dir: str = FLEET_DEFAULTS.tls_dir
    package: str = FLEET_DEFAULTS.package
    extra_packages: list[str] = list(FLEET_DEFAULTS.extra_packages)
    nthreads: int = FLEET_DEFAULTS.nthreads
    join_timeout_s: float = FLEET_DEFAULTS.join_timeout_s
    endpoint: str = FLEET_DEFAULTS.endpoint
    # Backlog sizing (fleet sensor): one runner per this many segments queued or running.
    segments_per_server: int = 4

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HetznerFleet:
        """The resource as a deployment configures it through FLEET_ENV (unset variables keep the defaults)."""
        return cls(**{name: env_default(name, environ) for name in FLEET_ENV})

    def settings(self) -> FleetSettings:
        shared = [name for name in FleetSettings.__dataclass_fields__ if name in type(self).model_fields]
        values = {name: getattr(self, name) for name in shared}
        return FleetSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def fleet(self, progress: Progress | None = None) -> Fleet:
        return Fleet(self.settings(), load_projects(), progress=progress)


# --- dataset roll-ups ----------------------------------------------------------------------------


class DedupIndexResource(dg.ConfigurableResource):
    """Global (url, text) dedup index: SQLite under the data root by default, Postgres in deploy.

    Set ``url`` with ``dg.EnvVar("CAH_DEDUP_URL")`` when it carries a password; it is never
    logged (``DedupIndex`` and errors show it redacted).
    """

    url: str = ""
    table: str = DEFAULT_TABLE
    batch_size: int = DEFAULT_BATCH_SIZE

    def index(self, data_root: DataRoot | None = None) -> DedupIndex:
        """The index to use; with no ``url``, a SQLite file under the (local) data root."""
        url = self.url or default_sqlite_url(data_root)
        return DedupIndex(url=url, table=self.table, batch_size=self.batch_size)


class ReportLinks(dg.ConfigurableResource):
    """Where a browser reads the data root (e.g. `cah dev`'s file server): the report's plots then show in the UI."""

    files_url: str = ""

    def plot_markdown(self, root: DataRoot, path: str, png: bytes, name: str) -> str:
        """A short markdown image linking the PNG when a files URL is known, else the PNG inline (a data URI)."""
        prefix = root.path()
        if self.files_url and path.startswith(prefix):
            linked = f"![{name}]({self.files_url.rstrip('/')}{path[len(prefix) :]})"
            if len(linked) < INLINE_MARKDOWN_CHARS:
                return linked
        return png_markdown(png, name)
