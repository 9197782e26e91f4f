"""The clip_pairs stage: one image shard (or a webdataset's tar) in, every pair scored by CLIP out.

Reader → worker → writer, like img2dataset: the shard's tar is streamed into per-model batches,
a thread pool decodes (image by image with PIL, or a batch at a time on the model's device in a
stream of its own) and tokenizes the next batches while the model embeds the current one, and
the results are written atomically, the ``NNNNN.done`` marker last. Out-of-memory on the device,
in decoding, resizing or the model, halves the batch; an image whose decode alone does not fit on
the device is decoded on the CPU instead. At most ``prefetch_batches + 1`` decoded batches wait on
the device at once. The marker's ``device_memory`` counts what out-of-memory cost; the log shows
the first few events and one line per shard.

Rows of ``clip_pairs/<segment>/NNNNN.parquet`` are exactly the shard's ``status == 'ok'`` rows; for a
registered webdataset's segment, NNNNN is its NNNNN-th tar and the rows are every sample in it, in
image_shards' columns (``caption_missing``: the sample has no caption; ``image_missing``: no image).
A pair that could not be scored stays in the file with ``clip_status`` saying why
(``image_unreadable``: the JPEG does not decode; ``image_too_large``: the image alone does not fit
in the device's memory for the model, or in the CPU's to decode; ``image_missing``: the tar has
no image for the key; ``unknown_category``: no model is configured for its category),
``clip_error`` the detail, null similarity and tags, and ``kept`` false. Scored pairs have
``clip_status == 'scored'``.

Beside it: ``kept/NNNNN.parquet``, the kept rows only (the release view), and with
``write_embeddings`` clip-retrieval's layout, ``embeddings/{img_emb,text_emb,metadata}/``
(``img_emb_NNNNN.npy`` float16, rows aligned with ``metadata_NNNNN.parquet``) for the en model's
pairs; a category scored by another model gets its own ``embeddings_<category>/`` so that each
index holds one embedding space.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import tarfile
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from PIL import Image

from cah_resources.batching import OomTally, is_out_of_memory, map_halving_on_oom
from cah_resources.clip_pairs.settings import ClipModelSpec, ScoringSettings
from cah_resources.clip_pairs.webdataset import iter_samples
from cah_resources.contract import (
    CATEGORIES,
    CLIP_FIELDS,
    CLIP_PAIRS,
    EMBEDDINGS,
    IMAGE_SHARDS,
    SIMILARITY_EDGES,
    ClipStats,
    ClipStatus,
    DownloadStatus,
    candidates_path,
    embedding_path,
    finished_shards,
    kept_path,
    shard_name,
    shard_paths,
    shard_row_schema,
    similarity_histogram,
    stage_folder,
)
from cah_resources.crawl.dataset_files import options_for
from cah_resources.crawl.segments import webdataset_tars
from cah_resources.errors import one_line
from cah_resources.freed_memory import freed_memory_kept
from cah_resources.redaction import redact_text, redact_url
from cah_resources.storage import DataRoot

if TYPE_CHECKING:  # torch and the model code (3 s to import) load where shards are scored, not where
    # Dagster's definitions import this module for its plans, summaries and checks.
    import torch

    from cah_resources.clip_pairs.clip_scorer import LoadedClip

log = logging.getLogger(__name__)

_ERROR_CHARS = 200
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ClipPairsUnit:
    """One work unit: one finished image shard of one segment, named by paths in the data root."""

    root: DataRoot
    segment: str
    shard: int
    webdataset: str = ""  # a registered webdataset's tar (URL), read where it is; else image_shards' own shard

    def __repr__(self) -> str:  # the tar's URL may carry a token or a presigned URL's signature
        shown = f", webdataset={redact_url(self.webdataset)!r}" if self.webdataset else ""
        return f"ClipPairsUnit(root={self.root!r}, segment={self.segment!r}, shard={self.shard}{shown})"

    @property
    def name(self) -> str:
        return shard_name(self.shard)

    @property
    def inputs(self) -> dict[str, str]:
        """The image shard it scores: ``shard_paths`` of its image_shards folder (tar, parquet, ...)."""
        if self.webdataset:
            return {"tar": self.webdataset}
        return shard_paths(stage_folder(self.root, IMAGE_SHARDS, self.segment), self.shard)

    @property
    def folder(self) -> str:
        """The segment's clip_pairs folder: the shard's parquet, kept rows and marker, the embeddings."""
        return stage_folder(self.root, CLIP_PAIRS, self.segment)

    @property
    def table(self) -> str:
        """Every row of the image shard, with its scores."""
        return shard_paths(self.folder, self.shard)["parquet"]

    @property
    def marker(self) -> str:
        return shard_paths(self.folder, self.shard)["done"]


def _finished(root: DataRoot, stage: str, segment: str) -> list[int]:
    return [int(name) for name in finished_shards(root, stage_folder(root, stage, segment))]


def shard_units(root: DataRoot, segment: str) -> list[ClipPairsUnit]:
    """The segment's finished image shards (or a webdataset segment's tars), scored or not (a redo scores them all)."""
    tars = webdataset_tars(root, segment)
    if tars is not None:
        return [ClipPairsUnit(root, segment, i, tar) for i, tar in enumerate(tars)]
    shards = _finished(root, IMAGE_SHARDS, segment)
    if not shards:
        _require_image_shards(root, segment)
    return [ClipPairsUnit(root, segment, shard) for shard in shards]


def _require_image_shards(root: DataRoot, segment: str) -> None:
    """Candidates to download and no finished image shard: one line, not a run that scores nothing and passes
    for done. (A segment whose candidates are empty has no image shard to score.)"""
    path = candidates_path(root, segment)
    if not root.exists(path):
        raise FileNotFoundError(
            f"{segment} has no candidates and no image shards: materialize candidates and image_shards of {segment} "
            "first"
        )
    with root.fs.open(path, "rb") as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    if rows:
        folder = redact_url(stage_folder(root, IMAGE_SHARDS, segment))
        raise FileNotFoundError(
            f"{segment} has {rows:,} candidates and no finished image shard under {folder}: "
            f"materialize image_shards for {segment} first"
        )


def pending_units(root: DataRoot, segment: str) -> list[ClipPairsUnit]:
    """The segment's finished image shards (or a webdataset segment's tars) that have no clip_pairs marker yet."""
    scored = set(_finished(root, CLIP_PAIRS, segment))
    return [unit for unit in shard_units(root, segment) if unit.shard not in scored]


def shard_summaries(root: DataRoot, segment: str) -> list[dict[str, Any]]:
    """The summary every finished clip_pairs shard of the segment wrote into its marker."""
    return [root.read_json(ClipPairsUnit(root, segment, s).marker) for s in _finished(root, CLIP_PAIRS, segment)]


@dataclass
class _Batch:
    spec: ClipModelSpec
    rows: list[int] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)


@dataclass
class _Decoded:
    """A batch's pixels: the positions (in the batch) that decoded, their pixels in parts, and why others did not."""

    positions: list[int] = field(default_factory=list)
    parts: list[torch.Tensor] = field(default_factory=list)
    errors: dict[int, tuple[ClipStatus, str]] = field(default_factory=dict)  # position -> (clip_status, detail)


@dataclass
class _Pending:
    """One batch in the decode pool: its tokens, and one decode per image (PIL) or one for the batch (device).

    A device decode (``device``) starts later than the tokens, when the device has room for its result.
    """

    batch: _Batch
    tokens: Future[torch.Tensor]
    images: list[Future[torch.Tensor]] = field(default_factory=list)
    device: bool = False
    on_device: Future[_Decoded] | None = None

    def done(self) -> bool:
        return (
            self.tokens.done()
            and all(f.done() for f in self.images)
            and (not self.device or (self.on_device is not None and self.on_device.done()))
        )


def _cpu_decode_status(error: BaseException) -> ClipStatus:
    """Why the CPU could not decode an image: too large for its memory (or PIL's bomb limit), or unreadable."""
    too_large = isinstance(error, (MemoryError, Image.DecompressionBombError))
    return ClipStatus.IMAGE_TOO_LARGE if too_large else ClipStatus.IMAGE_UNREADABLE


def iter_tar_images(handle: Any, wanted: dict[str, int]) -> Iterator[tuple[int, bytes]]:
    """(row, jpeg bytes) for each ``<key>.jpg`` member of a streamed tar whose key is ``wanted``."""
    with tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            row = wanted.get(member.name.rsplit("/", 1)[-1][: -len(".jpg")])
            if row is None:
                continue
            data = tar.extractfile(member)
            if data is not None:
                yield row, data.read()


class _ShardScorer:
    """Scores the ok rows of one shard: batches per model, prefetched decode, model on this thread.

    Rows are the table's, and for a webdataset tar those ``add`` appends as its samples stream in.
    """

    def __init__(self, table: pa.Table, settings: ScoringSettings) -> None:
        self.settings = settings
        self.n = 0
        self.keys: list[str] = []
        self.texts: list[str] = []
        self.categories: list[str] = []
        self.similarity = np.full(0, np.nan, dtype=np.float32)
        self.nsfw_score = np.full(0, np.nan, dtype=np.float32)
        self.watermark_score = np.full(0, np.nan, dtype=np.float32)
        self.nsfw: list[str | None] = []
        self.status: list[str] = []
        self.error: list[str | None] = []
        # Per model, the embeddings of the rows it scored, a batch at a time: (rows, image, text).
        self.embeddings: dict[ClipModelSpec, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.models: dict[ClipModelSpec, LoadedClip] = {}
        self.oom = OomTally()
        # Batches decoded (or being decoded) on the device and not yet scored: now and at most.
        self.on_device_held = self.on_device_peak = 0
        columns = zip(*(table.column(c).to_pylist() for c in ("key", "text", "category")), strict=True)
        for key, text, category in columns:
            self.add(key, text, category, ClipStatus.IMAGE_MISSING, "the shard's tar has no image for this key")
        for spec in {settings.models[c] for c in set(self.categories) if c in settings.models}:
            self.model(spec)

    def add(self, key: str, text: str, category: str, status: str, error: str | None) -> int:
        """A new row, not scored yet (``status`` says why until it is); returns its number."""
        row = self.n
        self.n += 1
        if self.n > len(self.similarity):
            grown = max(64, 2 * self.n)
            for name in ("similarity", "nsfw_score", "watermark_score"):
                values = getattr(self, name)
                setattr(self, name, np.concatenate([values, np.full(grown - len(values), np.nan, np.float32)]))
        self.keys.append(key)
        self.texts.append(text)
        self.categories.append(category)
        self.nsfw.append(None)
        if category not in self.settings.models:
            status, error = ClipStatus.UNKNOWN_CATEGORY, f"no CLIP model is configured for category {category!r}"
        self.status.append(status)
        self.error.append(error)
        return row

    def model(self, spec: ClipModelSpec) -> LoadedClip:
        """The model for ``spec``, loaded on first use (load_clip keeps it for the process)."""
        from cah_resources.clip_pairs.clip_scorer import load_clip

        if spec not in self.models:
            self.models[spec] = load_clip(spec, self.settings.device, self.settings.precision, self.settings.tokenizer)
        return self.models[spec]

    def finish(self) -> None:
        """Trim the per-row arrays to the rows there are."""
        for name in ("similarity", "nsfw_score", "watermark_score"):
            setattr(self, name, getattr(self, name)[: self.n])

    def spec_of(self, row: int) -> ClipModelSpec | None:
        return self.settings.models.get(self.categories[row])

    def decode_on_device(self, loaded: LoadedClip) -> bool:
        if self.settings.decode == "auto":
            return loaded.device == "cuda"
        return self.settings.decode == "torch"

    def batches(self, images: Iterator[tuple[int, bytes]]) -> Iterator[_Batch]:
        pending: dict[ClipModelSpec, _Batch] = {}
        for row, data in images:
            spec = self.spec_of(row)
            if spec is None:
                continue
            batch = pending.setdefault(spec, _Batch(spec))
            batch.rows.append(row)
            batch.images.append(data)
            if len(batch.rows) >= self.settings.batch_size:
                yield pending.pop(spec)
        yield from pending.values()

    def submit(self, pool: ThreadPoolExecutor, batch: _Batch) -> _Pending:
        """Queue a batch's tokenization and decoding on the pool: PIL image by image, so every thread works.

        A decode on the device is only marked here: ``start_device_decodes`` starts it when there is room.
        """
        loaded = self.model(batch.spec)
        tokens = pool.submit(loaded.tokenize, [self.texts[row] for row in batch.rows])
        if self.decode_on_device(loaded):
            return _Pending(batch, tokens, device=True)
        return _Pending(batch, tokens, images=[pool.submit(loaded.preprocess_jpeg, data) for data in batch.images])

    def start_device_decodes(self, pool: ThreadPoolExecutor, in_flight: deque[_Pending]) -> None:
        """Start the device decodes of the oldest batches, while fewer than ``prefetch_batches + 1`` are held.

        Decoded pixels wait on the device until scored: the batch being scored plus the prefetched ones
        keep the model fed; more only take memory the model and the next decodes need.
        """
        room = self.settings.prefetch_batches + 1
        for pending in in_flight:
            if self.on_device_held >= room:
                return
            if pending.device and pending.on_device is None:
                loaded = self.models[pending.batch.spec]
                pending.on_device = pool.submit(self.decode_on_device_stream, loaded, pending.batch.images)
                self.on_device_held += 1
                self.on_device_peak = max(self.on_device_peak, self.on_device_held)

    def decode_on_device_stream(self, loaded: LoadedClip, images: list[bytes]) -> _Decoded:
        """torchvision decode of a batch on the model's device (nvJPEG on CUDA) and resize there (a pool thread).

        On CUDA it runs in this thread's own stream, so that it overlaps the model on the scoring thread.
        An image that alone runs out of device memory is decoded on the CPU instead.
        """
        import torch

        # nvJPEG reads JPEG only: another format (a webdataset's PNG or WebP) is decoded by PIL on the CPU.
        jpeg = [p for p, data in enumerate(images) if data[:3] == _JPEG_MAGIC]
        encoded = [torch.frombuffer(bytearray(images[p]), dtype=torch.uint8) for p in jpeg]
        slices: list[_Decoded] = []
        if encoded:
            with _own_stream(loaded.device):
                slices = map_halving_on_oom(
                    lambda lo, hi: _decode_slice(loaded, encoded, lo, hi),
                    len(encoded),
                    loaded,
                    limit="max_decode_batch",
                    alone=lambda i, _: self.decode_on_cpu(loaded, images[jpeg[i]], i),
                    tally=self.oom,
                )
        decoded = _Decoded()
        for part in slices:
            decoded.positions += [jpeg[i] for i in part.positions]
            decoded.parts += part.parts
            decoded.errors.update({jpeg[i]: error for i, error in part.errors.items()})
        for position in sorted(set(range(len(images))) - set(jpeg)):
            part = self.decode_on_cpu(loaded, images[position], position, out_of_memory=False)
            decoded.positions += part.positions
            decoded.parts += part.parts
            decoded.errors.update(part.errors)
        return decoded

    def decode_on_cpu(self, loaded: LoadedClip, data: bytes, position: int, out_of_memory: bool = True) -> _Decoded:
        """One image the device could not decode (alone, ``out_of_memory``; or not JPEG): PIL here, normalised
        on the host, scored with its batch."""
        try:
            pixels = loaded.preprocess_jpeg(data)
        except Exception as error:  # any undecodable image is recorded, not fatal
            return _Decoded(errors={position: (_cpu_decode_status(error), one_line(error, _ERROR_CHARS))})
        if out_of_memory:
            self.oom.count("decoded_on_cpu")
        return _Decoded(positions=[position], parts=[loaded.normalize(pixels[None], "cpu").to(loaded.input_dtype)])

    def collect(
        self, pending: _Pending
    ) -> tuple[list[int], list[torch.Tensor], torch.Tensor, dict[int, tuple[ClipStatus, str]]]:
        """A finished batch's rows that decoded, their pixels (in parts), their tokens, and the others' errors."""
        import torch

        batch = pending.batch
        if pending.on_device is not None:
            decoded = pending.on_device.result()
            for part in decoded.parts:
                if part.is_cuda:  # made in the pool thread's stream; used and freed in this one
                    part.record_stream(torch.cuda.current_stream())
        else:
            decoded = _Decoded()
            tensors = []
            for position, future in enumerate(pending.images):
                error = future.exception()
                if error is None:
                    decoded.positions.append(position)
                    tensors.append(future.result())
                else:  # any undecodable image is recorded, not fatal
                    decoded.errors[position] = (_cpu_decode_status(error), one_line(error, _ERROR_CHARS))
            decoded.parts = [_stack_for_copy(tensors, self.models[batch.spec].device)] if tensors else []
        tokens = pending.tokens.result()
        # The pixels come in decoded.positions' order: some left out, or (JPEGs on the device first, other
        # formats after them) reordered; the tokens follow it.
        if decoded.positions != list(range(len(batch.rows))):
            tokens = tokens[decoded.positions]
        errors = {batch.rows[position]: reason for position, reason in decoded.errors.items()}
        return [batch.rows[p] for p in decoded.positions], decoded.parts, tokens, errors

    def score(self, pending: _Pending) -> None:
        """Embed one decoded batch and record its similarities and tags (runs on this thread)."""
        try:
            self._score(pending)
        finally:
            if pending.on_device is not None:
                self.on_device_held -= 1

    def _score(self, pending: _Pending) -> None:
        import torch

        spec = pending.batch.spec
        loaded = self.models[spec]
        rows, parts, tokens, errors = self.collect(pending)
        for row, (status, message) in errors.items():
            self.status[row], self.error[row] = status, message
        if not rows:
            return

        def embed(lo: int, hi: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
            return (lo, hi, *loaded.embed(_rows_of(parts, lo, hi, loaded.device), tokens[lo:hi]))

        def alone(position: int, error: BaseException) -> None:
            self.status[rows[position]], self.error[rows[position]] = (
                ClipStatus.IMAGE_TOO_LARGE,
                one_line(error, _ERROR_CHARS),
            )

        done = [
            part
            for part in map_halving_on_oom(embed, len(rows), loaded, alone=alone, tally=self.oom)
            if part is not None
        ]
        if not done:
            return
        scored = np.asarray([rows[i] for lo, hi, *_ in done for i in range(lo, hi)])
        image_emb = torch.cat([part[2] for part in done])
        text_emb = torch.cat([part[3] for part in done])
        self.similarity[scored] = (image_emb * text_emb).sum(dim=-1).cpu().numpy()
        labels, nsfw_score, watermark_score = loaded.tags(image_emb)
        self.nsfw_score[scored] = nsfw_score
        self.watermark_score[scored] = watermark_score
        for row, label in zip(scored.tolist(), labels, strict=False):
            self.nsfw[row], self.status[row], self.error[row] = label, ClipStatus.SCORED, None
        if self.settings.write_embeddings:
            chunk = (scored, image_emb.half().cpu().numpy(), text_emb.half().cpu().numpy())
            self.embeddings.setdefault(spec, []).append(chunk)

    def run(self, images: Iterator[tuple[int, bytes]]) -> None:
        settings = self.settings
        in_flight: deque[_Pending] = deque()
        # Batches queued ahead of the one being scored: enough images to keep every decode thread busy.
        limit = settings.prefetch_batches + -(-settings.decode_workers // settings.batch_size)
        with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="clip-decode") as pool:
            try:
                for batch in self.batches(images):
                    in_flight.append(self.submit(pool, batch))
                    self.start_device_decodes(pool, in_flight)
                    # Score whatever is ready; block only when the prefetch window is full.
                    while in_flight and (len(in_flight) > limit or in_flight[0].done()):
                        self.score(in_flight.popleft())
                        self.start_device_decodes(pool, in_flight)
                while in_flight:
                    self.score(in_flight.popleft())
                    self.start_device_decodes(pool, in_flight)
            finally:
                for pending in in_flight:  # a failed shard: do not decode what nobody will score
                    for future in (pending.tokens, *pending.images, pending.on_device):
                        if future is not None:
                            future.cancel()


_STREAMS = threading.local()


@contextmanager
def _own_stream(device: str) -> Iterator[None]:
    """On CUDA: run the block in this thread's own stream and wait for it at the end; elsewhere nothing."""
    import torch

    if device != "cuda":
        yield
        return
    stream = getattr(_STREAMS, "stream", None)
    if stream is None:
        stream = _STREAMS.stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


@functools.cache
def _quiet_torchvision_codecs() -> None:
    # torchvision 0.29 marks its codecs deprecated in favour of TorchCodec; they still are the batched
    # nvJPEG decoder this needs. A filter, not catch_warnings: that one is not safe across threads.
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)


def _decode_slice(loaded: LoadedClip, encoded: list[torch.Tensor], lo: int, hi: int) -> _Decoded:
    """Decode ``encoded[lo:hi]`` on the model's device and resize it there; a batch with a bad image is
    decoded again image by image to find it. Out-of-memory is raised for the caller to halve."""
    import torchvision.io as tvio

    _quiet_torchvision_codecs()
    mode = tvio.ImageReadMode.RGB
    decoded = _Decoded()
    try:
        images = tvio.decode_jpeg(encoded[lo:hi], mode=mode, device=loaded.device)
        decoded.positions = list(range(lo, hi))
    except Exception as error:  # find the bad images one at a time below
        if is_out_of_memory(error):
            raise
        images = []
        for position in range(lo, hi):
            try:
                images += tvio.decode_jpeg([encoded[position]], mode=mode, device=loaded.device)
                decoded.positions.append(position)
            except Exception as one:
                if is_out_of_memory(one):
                    raise
                decoded.errors[position] = (ClipStatus.IMAGE_UNREADABLE, one_line(one, _ERROR_CHARS))
    if images:
        decoded.parts = [loaded.preprocess_on_device(images).to(loaded.input_dtype)]
    return decoded


def _stack_for_copy(tensors: list[torch.Tensor], device: str) -> torch.Tensor:
    """The images of a batch decoded on the CPU as one uint8 tensor; in pinned memory when bound for CUDA.

    From pinned memory the copy to the device (``non_blocking`` in ``LoadedClip.normalize``) is queued
    and the scoring thread goes on, instead of waiting for a staged copy out of pageable memory. torch's
    caching host allocator reuses the pinned blocks once the copies that read them are done.
    """
    import torch

    if device != "cuda":
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, pin_memory=True)
    return torch.stack(tensors, out=out)


def _rows_of(parts: list[torch.Tensor], lo: int, hi: int, device: str) -> torch.Tensor:
    """Rows ``lo:hi`` of the batch the parts make up, one after the other (a view when in one part).

    Parts decoded on the CPU after device out-of-memory join the others on ``device``.
    """
    import torch

    pieces, start = [], 0
    for part in parts:
        end = start + len(part)
        if end > lo and start < hi:
            pieces.append(part[max(lo, start) - start : min(hi, end) - start])
        start = end
    return pieces[0] if len(pieces) == 1 else torch.cat([piece.to(device, non_blocking=True) for piece in pieces])


def _scored_table(table: pa.Table, scorer: _ShardScorer, settings: ScoringSettings) -> pa.Table:
    thresholds = np.array([settings.thresholds.get(c, np.nan) for c in scorer.categories], dtype=np.float32)
    scored = np.array([s == ClipStatus.SCORED for s in scorer.status], dtype=bool)
    kept = scored & (np.nan_to_num(scorer.similarity, nan=-2.0) >= np.nan_to_num(thresholds, nan=2.0))
    # Each column's values (and its nulls); names and types are contract.CLIP_FIELDS'.
    values: dict[str, tuple[Any, np.ndarray | None]] = {
        "similarity": (scorer.similarity, ~scored),
        "threshold": (thresholds, np.isnan(thresholds)),
        "kept": (kept, None),
        "clip_model": ([spec.label if (spec := scorer.spec_of(r)) else None for r in range(scorer.n)], None),
        "nsfw": (scorer.nsfw, None),
        # NaN: scored by a model without tags (ClipModelSpec.tags_known): unknown, so null like unscored rows
        "nsfw_score": (scorer.nsfw_score, ~scored | np.isnan(scorer.nsfw_score)),
        "watermark_score": (scorer.watermark_score, ~scored | np.isnan(scorer.watermark_score)),
        "clip_status": (scorer.status, None),
        "clip_error": (scorer.error, None),
    }
    columns = {f.name: pa.array(values[f.name][0], f.type, mask=values[f.name][1]) for f in CLIP_FIELDS}
    table = table.drop_columns([name for name in columns if name in table.column_names])
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


def _embedding_folders(settings: ScoringSettings) -> dict[ClipModelSpec, str]:
    """Where each model's embeddings go: ``embeddings`` for the en model, ``embeddings_<cat>`` else.

    One folder per model keeps each clip-retrieval index in one embedding space.
    """
    folders: dict[ClipModelSpec, str] = {}
    for category in CATEGORIES:
        spec = settings.models[category]
        folders.setdefault(spec, EMBEDDINGS if not folders else f"{EMBEDDINGS}_{category}")
    return folders


def _write_embeddings(unit: ClipPairsUnit, table: pa.Table, scorer: _ShardScorer, settings: ScoringSettings) -> None:
    root, name = unit.root, unit.name
    for spec, folder in _embedding_folders(settings).items():
        if spec not in scorer.embeddings:
            continue
        rows = np.array(
            [i for i in range(scorer.n) if scorer.status[i] == ClipStatus.SCORED and scorer.spec_of(i) == spec],
            dtype=np.int64,
        )
        chunks = scorer.embeddings[spec]
        order = np.argsort(np.concatenate([chunk[0] for chunk in chunks]), kind="stable")  # row order
        for kind, position in (("img_emb", 1), ("text_emb", 2)):
            buffer = io.BytesIO()
            np.save(buffer, np.concatenate([chunk[position] for chunk in chunks])[order])
            root.write_bytes(embedding_path(f"{unit.folder}/{folder}", kind, name), buffer.getvalue())
        picked = table.take(pa.array(rows))
        metadata = pa.table(
            {
                "image_path": picked["key"],
                "caption": picked["text"],
                "url": picked["url"],
                "uid": picked["uid"],
                "category": picked["category"],
                "language": picked["language"],
                "width": picked["width"],
                "height": picked["height"],
                "similarity": picked["similarity"],
                "kept": picked["kept"],
                "nsfw": picked["nsfw"],
            }
        )
        root.write_parquet(embedding_path(f"{unit.folder}/{folder}", "metadata", name), metadata)


def _worker_name() -> str | None:
    """The Dask worker running this shard (which executor scored it), or None outside Dask."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:
        return None


def _summary(
    unit: ClipPairsUnit, table: pa.Table, settings: ScoringSettings, seconds: float, scorer: _ShardScorer | None
) -> ClipStats:
    status = table.column("clip_status").to_pylist()
    categories = table.column("category").to_pylist()
    kept = table.column("kept").to_pylist()
    similarity = table.column("similarity").to_numpy(zero_copy_only=False)
    is_scored = [s == ClipStatus.SCORED for s in status]
    scored_sims = similarity[np.array(is_scored, dtype=bool)] if table.num_rows else similarity
    device = precision = None
    if scorer is not None and scorer.models:
        any_model = next(iter(scorer.models.values()))
        device, precision = any_model.device, any_model.precision
    present = sorted(set(categories))  # a category of the shard counts, even with none scored or kept
    return ClipStats(
        segment=unit.segment,
        shard=unit.shard,
        pairs=table.num_rows,
        scored=Counter(
            {c: sum(1 for s, k in zip(is_scored, categories, strict=True) if s and k == c) for c in present}
        ),
        kept=Counter({c: sum(1 for k, cat in zip(kept, categories, strict=True) if k and cat == c) for c in present}),
        not_scored=Counter(s for s in status if s != ClipStatus.SCORED),
        histogram=similarity_histogram(scored_sims).tolist(),  # per contract.SIMILARITY_EDGES bin
        task_seconds=seconds,
        device=device,
        precision=precision,
        worker=_worker_name(),
        models={c: settings.models[c].label for c in CATEGORIES},
        thresholds=dict(settings.thresholds),
        # What device out-of-memory cost: halvings, single rows, of those the images decoded on the CPU
        # instead; and the most decoded batches held on the device at once.
        device_memory={
            **(scorer.oom if scorer is not None else OomTally()).counts(),
            "prepared_on_device_peak": scorer.on_device_peak if scorer is not None else 0,
        },
    )


def score_image_shard(unit: ClipPairsUnit, settings: ScoringSettings, redo: bool = False) -> dict[str, Any]:
    """Score one image shard and write its clip_pairs outputs; returns the shard's summary.

    A shard whose marker exists is not redone unless ``redo``: its summary is read back. Otherwise
    every output is rewritten from scratch, so a retried or interrupted shard ends the same; a
    finished shard being redone keeps its outputs and marker until the new ones are written.
    """
    root = unit.root
    if not redo and root.exists(unit.marker):
        return root.read_json(unit.marker)
    started = time.perf_counter()
    damage: Counter[str] = Counter()
    with freed_memory_kept():  # each decode's pixels, resized copy and tensor (~200 KB each) reused
        if unit.webdataset:
            table, scorer = _score_webdataset(unit, settings, damage)
        else:
            table, scorer = _score_own_shard(unit, settings)
    root.remove(unit.marker)  # unmarked while its outputs are replaced
    root.write_parquet(unit.table, table)
    root.write_parquet(kept_path(root, unit.segment, unit.shard), table.filter(table.column("kept")))
    if settings.write_embeddings and scorer is not None:
        _write_embeddings(unit, table, scorer, settings)
    stats = _summary(unit, table, settings, time.perf_counter() - started, scorer)
    stats.damage = damage
    summary = stats.to_dict()
    root.write_json(unit.marker, summary)
    if scorer is not None and (scorer.oom.halvings or scorer.oom.alone):
        oom = scorer.oom
        log.warning(
            "clip_pairs %s/%s: device out of memory: %d batch halvings, %d images alone, %d of them decoded on "
            "the CPU (%d of these events logged above)",
            unit.segment,
            unit.name,
            oom.halvings,
            oom.alone,
            oom.decoded_on_cpu,
            oom.logged,
        )
    log.info("clip_pairs %s/%s: %d pairs, %s kept", unit.segment, unit.name, table.num_rows, summary["kept"])
    return summary


def _score_own_shard(unit: ClipPairsUnit, settings: ScoringSettings) -> tuple[pa.Table, _ShardScorer | None]:
    """The ok rows of one of image_shards' own shards, scored from its tar."""
    root = unit.root
    source = root.read_parquet(unit.inputs["parquet"])
    table = source.filter(pc.equal(source.column("status"), DownloadStatus.OK.value))
    scorer = _ShardScorer(table, settings)
    if not table.num_rows:
        return _scored_table(table, scorer, settings), None
    wanted = {key: row for row, key in enumerate(scorer.keys)}
    tar_path = unit.inputs["tar"]
    try:
        with root.fs.open(tar_path, "rb") as handle:
            scorer.run(iter_tar_images(handle, wanted))
    except (tarfile.TarError, EOFError, FileNotFoundError) as error:
        raise RuntimeError(
            f"{tar_path} is unreadable ({one_line(error, _ERROR_CHARS)}); rematerialize image_shards for {unit.segment}"
        ) from error
    scorer.finish()
    return _scored_table(table, scorer, settings), scorer


def _score_webdataset(
    unit: ClipPairsUnit, settings: ScoringSettings, damage: Counter[str]
) -> tuple[pa.Table, _ShardScorer | None]:
    """Every sample of a webdataset tar, streamed from where it is and scored as it arrives.

    The rows take image_shards' columns (``shard_row_schema``) so that release and report read them
    alike: the url (and sha256, of the image it downloaded) from img2dataset's json, else the sample's
    key (and the stored image's sha256); the category from the caption's language, as candidates gives
    it. A sample without image or caption is a row saying so.
    """
    scorer = _ShardScorer(shard_row_schema().empty_table(), settings)
    rows: list[dict[str, Any]] = []
    options = options_for(unit.webdataset, unit.root.url, unit.root.storage_options)
    fs, path = url_to_fs(unit.webdataset, **options)
    try:
        with fs.open(path, "rb") as handle:
            scorer.run(_webdataset_images(unit, handle, scorer, rows, damage))
    # The tar's own error may name its URL with the token: shown redacted, and not chained.
    except FileNotFoundError as error:
        shown = redact_url(unit.webdataset)
        raise RuntimeError(f"{shown} is gone ({redact_text(one_line(error, _ERROR_CHARS))})") from None
    except (OSError, aiohttp.ClientError) as error:
        shown = redact_url(unit.webdataset)
        raise OSError(f"{shown} could not be read ({redact_text(one_line(error, _ERROR_CHARS))})") from None
    scorer.finish()
    table = pa.Table.from_pylist(rows, schema=shard_row_schema())
    return _scored_table(table, scorer, settings), scorer if rows else None


def _webdataset_images(
    unit: ClipPairsUnit, handle: Any, scorer: _ShardScorer, rows: list[dict[str, Any]], damage: Counter[str]
) -> Iterator[tuple[int, bytes]]:
    """(row, image bytes) of each sample with both image and caption; every sample becomes a row."""
    # gcld3 (no wheel: built from source) is only needed for a webdataset's captions; a GPU executor or
    # the device benchmark scoring image_shards' own shards goes without it.
    from cah_resources.candidates.language import UNDETERMINED, Language, LanguageDetector

    detector = LanguageDetector()
    # What a webdataset does not know of a sample (its page, where the page wrote the URL) is blank text.
    blanks = {f.name: "" for f in shard_row_schema() if not f.nullable and pa.types.is_string(f.type)}
    wat_file = redact_url(unit.webdataset)  # rows are published: the URL without its credentials
    for sample in iter_samples(handle, damage):
        text = (sample.text or "").strip()
        language = detector.detect(text) if text else Language("nolang", UNDETERMINED, 0.0)
        if sample.image is None:
            status, error = ClipStatus.IMAGE_MISSING, "the tar has no image for this key"
        elif not text:
            status, error = ClipStatus.CAPTION_MISSING, "the sample has no .txt and no caption in its .json"
        else:
            status, error = ClipStatus.IMAGE_MISSING, None  # until scored
        row = scorer.add(sample.key, text, language.category, status, error)
        url = sample.fields.get("url") or sample.key
        fields = sample.fields
        rows.append(
            blanks
            | {
                "uid": hashlib.blake2b(f"{url}\x00{text}".encode(), digest_size=16).hexdigest(),
                "url": url,
                "text": text,
                "category": language.category,
                "language": language.code,
                "language_prob": language.probability,
                "wat_file": wat_file,
                "key": sample.key,
                "status": DownloadStatus.OK.value,
                "bytes": len(sample.image) if sample.image is not None else None,
                "sha256": fields.get("sha256") or (hashlib.sha256(sample.image).hexdigest() if sample.image else None),
                "width": fields.get("width"),
                "height": fields.get("height"),
                "original_width": fields.get("original_width", fields.get("width")),
                "original_height": fields.get("original_height", fields.get("height")),
            }
        )
        if sample.image is not None and text and scorer.spec_of(row) is not None:
            yield row, sample.image


def summarize(summaries: list[dict[str, Any]]) -> ClipStats:
    """Segment totals from shard summaries (markers): pairs scored and kept per category, histogram, time."""
    return ClipStats.total(ClipStats.from_dict(s) for s in summaries)


def read_kept_sample(root: DataRoot, segment: str, limit: int = 10) -> list[dict[str, Any]]:
    """A few kept pairs of the segment's first finished shard, for people to eyeball."""
    shards = _finished(root, CLIP_PAIRS, segment)
    if not shards:
        return []
    return root.read_parquet(kept_path(root, segment, shards[0])).slice(0, limit).to_pylist()


def histogram_rows(histogram: list[int], max_rows: int = 40) -> list[dict[str, object]]:
    """The similarity histogram as table rows with a text bar: the span of non-empty bins, merged to ``max_rows``."""
    nonzero = [i for i, count in enumerate(histogram) if count]
    if not nonzero:
        return []
    first, last = nonzero[0], nonzero[-1] + 1
    step = -(-(last - first) // max_rows)
    groups = [(i, min(i + step, last)) for i in range(first, last, step)]
    counts = [sum(histogram[a:b]) for a, b in groups]
    peak = max(counts)
    return [
        {
            "similarity": f"[{SIMILARITY_EDGES[a]:.2f}, {SIMILARITY_EDGES[b]:.2f})",
            "pairs": count,
            "bar": "█" * round(20 * count / peak),
        }
        for (a, b), count in zip(groups, counts, strict=False)
    ]
