"""The Dagster resources that configure what stage workers run: where outputs go, where WAT files come
from, which CLIP models score. They live apart from the plain objects they hand out, so the worker
processes that run those objects never import Dagster."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import dagster as dg

from cah_resources.contract import CATEGORIES
from cah_resources.crawl.common_crawl import COMMON_CRAWL_URL, CrawlSource
from cah_resources.storage import S3_ENV_VARS, S3_PREFIXES, DataRoot, s3_storage_options

if TYPE_CHECKING:
    from cah_resources.clip_pairs.clip_scorer import ScoringSettings


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
            values = [v.get_value("") if isinstance(v, dg.EnvVar) else v
                      for v in (self.endpoint_url, self.access_key_id, self.secret_access_key, self.region)]
            options.update(s3_storage_options(*values))
        return DataRoot(self.root, options)


class CommonCrawl(dg.ConfigurableResource):
    """Where WAT files are read from: Common Crawl's HTTPS endpoint (default), a mirror, or a folder."""

    base_url: str = COMMON_CRAWL_URL
    cache_dir: str = ""
    retries: int = 5
    timeout_s: float = 900.0

    def source(self) -> CrawlSource:
        return CrawlSource(self.base_url, self.cache_dir, self.retries, self.timeout_s)


class ClipScorer(dg.ConfigurableResource):
    """open_clip models and similarity thresholds per candidate category (LAION-5B's by default)."""

    en_model: str = "ViT-B-32"
    en_pretrained: str = "openai"
    en_threshold: float = 0.28
    multi_model: str = "xlm-roberta-base-ViT-B-32"
    multi_pretrained: str = "laion5b_s13b_b90k"
    multi_threshold: float = 0.26
    nolang_model: str = "ViT-B-32"
    nolang_pretrained: str = "openai"
    nolang_threshold: float = 0.28
    open_clip_config: str = ""
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256
    decode_workers: int = 4
    prefetch_batches: int = 2
    decode: str = "auto"
    write_embeddings: bool = False

    def settings(self) -> ScoringSettings:
        """The plain settings the stage function takes on a worker."""
        from cah_resources.clip_pairs.clip_scorer import ClipModelSpec, ScoringSettings  # torch: only when scoring

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
    def tiny(cls, **overrides: Any) -> "ClipScorer":
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
