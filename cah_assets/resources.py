"""Every Dagster resource of cah: what a run configures, each default taken from the plain settings it builds.

Resources live here, apart from the plain objects they hand out (DataRoot, CrawlSource, ShardSettings,
ScoringSettings, DedupIndex, Fleet), so that the worker processes running those never import Dagster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
from distributed import SpecCluster
from pydantic import Field, PrivateAttr, create_model

from cah_assets.partitions import ADD_BATCH
from cah_assets.policies import MAX_REQUESTS_PER_TICK
from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.wat import MAX_RECORD_BYTES
from cah_resources.clip_pairs.settings import LAION_MODELS, SCORING_DEFAULTS, ClipModelSpec, ScoringSettings
from cah_resources.contract import CATEGORIES
from cah_resources.crawl.common_crawl import CRAWL_LIST_URL, CrawlSource
from cah_resources.dataset.dedup_index import DEFAULT_BATCH_SIZE, DEFAULT_TABLE, DedupIndex, default_sqlite_url
from cah_resources.dataset.report import png_markdown
from cah_resources.flat_settings import Settings, flat_fields, from_flat
from cah_resources.fleet.compute import DaskCompute
from cah_resources.fleet.hetzner import Fleet, Progress, load_projects
from cah_resources.fleet.settings import FLEET_ENV, ComputeSettings, FleetSettings, env_default
from cah_resources.image_shards.stage import ShardSettings
from cah_resources.page_scores.settings import ClassifierSettings
from cah_resources.pages.html_page import PageRules
from cah_resources.storage import S3_ENV_VARS, S3_PREFIXES, DataRoot, s3_storage_options

# The Dagster UI renders a markdown metadata value in place only below this many characters (longer
# ones hide behind "[Show Markdown]"): a plot shows at once only as a short link to its PNG.
INLINE_MARKDOWN_CHARS = 1000
# A plot's width in the asset page's metadata table (Dagster 1.13 sizes the value column to its content, and
# clipped wider plots at its right): a plot is shown at most this wide, linking the full-size PNG.
PLOT_THUMBNAIL_PX = 480
THUMBNAIL_SUFFIX = ".thumbnail.png"


def png_thumbnail(png: bytes, width: int) -> bytes:
    """``png`` scaled down to ``width`` pixels wide (as it is when narrower)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if image.width <= width:
            return png
        height = max(1, round(image.height * width / image.width))
        out = io.BytesIO()
        image.resize((width, height), Image.Resampling.LANCZOS).save(out, format="PNG", optimize=True)
        return out.getvalue()


Resource = TypeVar("Resource", bound=dg.ConfigurableResource)
# Each resource whose fields are generated from a plain settings dataclass: the dataclass, and the
# settings whose field has another name (kept for configurations written before the dataclass).
SETTINGS_VIEWS: dict[type, tuple[type, dict[str, str]]] = {}


def settings_fields(kind: type, renamed: dict[str, str] | None = None) -> Callable[[type[Resource]], type[Resource]]:
    """Give a resource one field per setting of the dataclass ``kind`` (nested groups flattened), each
    with the dataclass's type and default: a setting is declared once, in the plain code that uses it."""
    renamed = dict(renamed or {})

    def add(resource: type[Resource]) -> type[Resource]:
        fields: dict[str, Any] = {
            renamed.get(f.name, f.name): (f.type, Field(f.default, description=f.doc or None))
            for f in flat_fields(kind)
        }
        made = create_model(
            resource.__name__, __base__=resource, __module__=resource.__module__, __doc__=resource.__doc__, **fields
        )
        made.__qualname__ = resource.__qualname__
        SETTINGS_VIEWS[made] = (kind, renamed)
        return made

    return add


def settings_of(resource: dg.ConfigurableResource, kind: type[Settings]) -> Settings:
    """The plain settings that ``resource``'s generated fields hold."""
    _, renamed = SETTINGS_VIEWS[type(resource)]
    values = resource.model_dump()
    return from_flat(kind, {f.name: values[renamed.get(f.name, f.name)] for f in flat_fields(kind)})


class SettingsResource(dg.ConfigurableResource):
    """A resource whose fields ``settings_fields`` makes, one per setting of a plain dataclass."""

    if TYPE_CHECKING:  # the fields settings_fields() adds, which a type checker cannot see

        def __init__(self, **settings: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...


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
                (v.get_value("") or "") if isinstance(v, dg.EnvVar) else v
                for v in (self.endpoint_url, self.access_key_id, self.secret_access_key, self.region)
            ]
            options.update(s3_storage_options(*values))
        return DataRoot(self.root, options)


@settings_fields(CrawlSource, renamed={"base": "base_url"})
class CommonCrawl(SettingsResource):
    """Where WAT files are read from: Common Crawl's HTTPS endpoint (default), a mirror, or a folder."""

    def source(self) -> CrawlSource:
        return settings_of(self, CrawlSource)


class CrawlDiscovery(dg.ConfigurableResource):
    """Which crawls the discovery sensor registers, and how fast it adds their segments as partitions."""

    crawl_list: str = Field(default=CRAWL_LIST_URL, description="URL or local path of a collinfo.json-style crawl list")
    include: str = Field(default=r"^CC-MAIN-\d{4}-\d{2}$", description="regular expression a crawl id must match")
    newest: int = Field(default=1, description="register the newest N matching crawls (each adds ~2000 partitions)")
    files_per_segment: int = Field(default=0, description="WAT files per segment; 0: about 2000 segments per crawl")
    segments_per_tick: int = Field(default=ADD_BATCH, description="at most this many new partitions per sensor tick")


class SegmentFlow(dg.ConfigurableResource):
    """How fast the schedule feeds segments into the pipeline."""

    crawls: list[str] = Field(default=[], description="active crawls in order; empty: all registered, newest first")
    segments_per_tick: int = Field(default=MAX_REQUESTS_PER_TICK, description="segments requested per schedule tick")
    # The cap on segments in flight is policies.MAX_IN_FLIGHT, one for the schedule and the later stages'
    # automation (a condition is fixed when the definitions are built, so it cannot be a run's config).


# --- the stages -----------------------------------------------------------------------------------


@settings_fields(CandidateFilters)
class CandidateRules(SettingsResource):
    """Crawling@Home's link filters (``CandidateFilters``); see README "candidates" for what each drop reason means."""

    # A WAT record larger than this is counted as malformed_too_large and skipped, unread.
    max_record_bytes: int = MAX_RECORD_BYTES

    def filters(self) -> CandidateFilters:
        return settings_of(self, CandidateFilters)


@settings_fields(PageRules)
class PageRulesResource(SettingsResource):
    """The WARC pass's page bounds and pre-filters (``PageRules``); see README "WARC crawls" for each drop reason."""

    def rules(self) -> PageRules:
        return settings_of(self, PageRules)


@settings_fields(ShardSettings)
class ImageDownloader(SettingsResource):
    """How image_shards downloads: network limits, the address guard, opt-outs, DNS, image checks, resizing, shards.

    One field per setting of ``ShardSettings`` and its ``fetch`` and ``resize`` groups, by the same name
    and with the same description.
    """

    def settings(self) -> ShardSettings:
        return settings_of(self, ShardSettings)


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
    tokenizer: str = SCORING_DEFAULTS.tokenizer
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
            tokenizer=self.tokenizer,
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


@settings_fields(ClassifierSettings)
class TextClassifier(SettingsResource):
    """The Hugging Face sequence classifier page_scores runs: FineWeb-Edu's by default, any model id or local folder.

    One field per setting of ``ClassifierSettings``, by the same name and with the same description.
    """

    def settings(self) -> ClassifierSettings:
        """The plain settings the stage function takes on a worker."""
        return settings_of(self, ClassifierSettings)

    @classmethod
    def tiny(cls, **overrides: Any) -> TextClassifier:
        """The tiny classifier shipped with cah: offline demo and tests."""
        from cah_resources.samples.tiny_text_classifier import TINY_TEXT_CLASSIFIER

        return cls(**{"model": str(TINY_TEXT_CLASSIFIER), **overrides})


# --- the compute engine and its machines ---------------------------------------------------------


@settings_fields(ComputeSettings)
class ComputeResource(DaskCompute, SettingsResource):
    """Dask distributed cluster the assets submit their work to (a LocalCluster by default); see ``ComputeSettings``."""

    if TYPE_CHECKING:  # DaskCompute comes first in the bases: its constructor would hide SettingsResource's

        def __init__(self, **settings: Any) -> None: ...

    # Inside a Dagster run the local cluster is started once and kept for every step and call of
    # that run process (starting one costs seconds); outside a run each client() makes its own.
    _keep_cluster: bool = PrivateAttr(default=False)
    _cluster: SpecCluster | None = PrivateAttr(default=None)

    def settings(self) -> ComputeSettings:
        return settings_of(self, ComputeSettings)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._keep_cluster = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


@settings_fields(FleetSettings)
class HetznerFleet(SettingsResource):
    """CPU runners on Hetzner Cloud that join the Dask scheduler; tokens come from HCLOUD_TOKENS, never config.

    One field per setting of ``FleetSettings``, by the same name, plus the fleet sensor's sizing.
    """

    # Backlog sizing (fleet sensor): one runner per this many segments queued or running.
    segments_per_server: int = 4

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HetznerFleet:
        """The resource as a deployment configures it through FLEET_ENV (unset variables keep the defaults)."""
        return cls(**{name: env_default(name, environ) for name in FLEET_ENV})

    def settings(self) -> FleetSettings:
        return settings_of(self, FleetSettings)

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
        """A thumbnail that fits the UI's metadata column, linking the full-size PNG, when a files URL is known;
        else the PNG inline (a data URI), scaled down to the same width."""
        thumbnail = png_thumbnail(png, PLOT_THUMBNAIL_PX)
        prefix = root.path()
        if self.files_url and path.startswith(prefix):
            thumbnail_path = path.removesuffix(".png") + THUMBNAIL_SUFFIX
            root.write_bytes(thumbnail_path, thumbnail)
            base = self.files_url.rstrip("/")
            linked = f"[![{name}]({base}{thumbnail_path[len(prefix) :]})]({base}{path[len(prefix) :]})"
            if len(linked) < INLINE_MARKDOWN_CHARS:
                return linked
        return png_markdown(thumbnail, name)
