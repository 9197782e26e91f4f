"""Text classifiers: a Hugging Face sequence classifier loaded once per process, fed length-sorted batches.

Reader → tokenizer → model, each on its own thread: a producer thread reads a window of pages,
tokenizes them in one batch call of the fast (Rust) tokenizer, which releases the interpreter
lock, sorts them by token length and pads them into batches; the model's thread only runs the
model on ready tensors. Scores come back in the pages' own order.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cah_resources.batching import OomTally, map_halving_on_oom, resolve_device
from cah_resources.errors import one_line
from cah_resources.page_scores.settings import ClassifierSettings

log = logging.getLogger(__name__)

MAX_INT_SCORE = 5  # FineWeb-Edu's int_score: the score rounded and clamped to 0..5
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_QUEUED_WINDOWS = 2  # windows tokenized ahead of the model: enough to hide the tokenizer, bounded memory
# A batch ends where pages get shorter than this share of its longest, once it has _MIN_BATCH_ROWS pages:
# each page is padded to the batch's longest, so a batch spanning 512 to 20 tokens would be mostly padding.
_LENGTH_BAND = 0.75
_MIN_BATCH_ROWS = 16


def resolve_dtype(requested: str, device: str) -> str:
    """fp32 on CPU; on a GPU bf16 where it has it (no overflow in long sums), else fp16, unless asked otherwise."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@dataclass
class LoadedClassifier:
    """One sequence classifier and its tokenizer on one device: what a process loads once and keeps."""

    name: str
    revision: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    pad_id: int
    # Largest batch (rows) that has fit on the device; see cah_resources.batching.map_halving_on_oom.
    max_batch: int | None = None
    fit_streaks: dict[str, int] = field(default_factory=dict)

    def label_index(self, label: str) -> int:
        labels = {str(name): int(index) for name, index in self.model.config.label2id.items()}
        if label not in labels:
            raise ValueError(f"{self.name} has no label {label!r}; its labels: {', '.join(labels)}")
        return labels[label]


@dataclass
class Classifier:
    """A loaded classifier (shared by the process) read by one score rule."""

    loaded: LoadedClassifier
    score_rule: str
    label_index: int

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def revision(self) -> str:
        return self.loaded.revision

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def dtype(self) -> str:
        return self.loaded.dtype

    @property
    def pad_id(self) -> int:
        return self.loaded.pad_id

    @torch.inference_mode()
    def score_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        """Scores of one padded batch (float32): the regression logit, or the named label's probability."""
        ids = input_ids.to(self.device, non_blocking=True)
        mask = attention_mask.to(self.device, non_blocking=True)
        logits = self.loaded.model(input_ids=ids, attention_mask=mask).logits.float()
        if self.score_rule == "regression":
            scores = logits[:, self.label_index]
        elif logits.shape[1] == 1:
            scores = torch.sigmoid(logits[:, 0])
        else:
            scores = torch.softmax(logits, dim=-1)[:, self.label_index]
        return scores.cpu().numpy()


def int_scores(scores: np.ndarray) -> np.ndarray:
    """FineWeb-Edu's ``int_score``: ``int(round(max(0, min(score, 5))))`` (round half to even, as Python's)."""
    return np.rint(np.clip(scores, 0, MAX_INT_SCORE)).astype(np.int64)


def _local_revision(folder: Path) -> str:
    """A local checkpoint's revision: a digest of its config and weights, so a changed checkpoint shows."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin") and path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def load_classifier(settings: ClassifierSettings) -> Classifier:
    """The classifier of ``settings``: its model loaded once per process (by model, revision, device, dtype)
    and kept for every later partition, read by the settings' score rule."""
    from cah_resources.fleet.gpu_worker import warm_model

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    key = ("text_classifier", settings.model, settings.revision, device, dtype)
    loaded = warm_model(key, lambda: _load(settings, device, dtype))
    return Classifier(loaded, settings.score_rule, loaded.label_index(settings.label) if settings.label else 0)


def _load(settings: ClassifierSettings, device: str, dtype: str) -> LoadedClassifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # Its "Loading weights" bar would reach a worker's terminal once per process: the log line below says it.
    transformers_logging.disable_progress_bar()
    revision = settings.revision or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.model, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            settings.model, revision=revision, dtype=_DTYPES[dtype]
        )
    except Exception as error:
        raise ValueError(f"cannot load text classifier {settings.model}: {one_line(error)}") from error
    if not tokenizer.is_fast:
        raise ValueError(f"{settings.model} has no fast (Rust) tokenizer; page_scores tokenizes off the model's thread")
    model.to(device).eval()
    folder = Path(settings.model)
    resolved = getattr(model.config, "_commit_hash", None)
    revision_seen = (
        _local_revision(folder) if folder.is_dir() else settings.revision or resolved or "main"
    )  # a local folder has no Hub revision
    log.info("loaded text classifier %s (%s) on %s (%s)", settings.model, revision_seen, device, dtype)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return LoadedClassifier(
        name=settings.model,
        revision=revision_seen,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        pad_id=pad_id,
    )


@dataclass
class Batch:
    """Pages of one model call, padded to their longest: their positions in the window, ids, mask."""

    positions: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize(classifier: Classifier, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (one batch call; the Rust tokenizer releases the GIL)."""
    return classifier.loaded.tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]


def sorted_batches(
    ids: list[list[int]], pad_id: int, batch_size: int, batch_tokens: int, pin: bool = False
) -> list[Batch]:
    """The pages in batches of similar length (longest first), each at most ``batch_size`` pages and
    ``batch_tokens`` padded tokens, and ending where pages get much shorter (_LENGTH_BAND), so that
    padding stays small whatever the mix of lengths."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(sorted_lengths[start]))
        rows = max(1, min(batch_size, batch_tokens // longest, len(order) - start))
        # Descending lengths: the first page shorter than the band ends the batch (after its minimum rows).
        band_end = int(np.searchsorted(-sorted_lengths, -_LENGTH_BAND * longest, side="right")) - start
        rows = min(rows, max(band_end, _MIN_BATCH_ROWS))
        positions = order[start : start + rows]
        matrix = np.full((rows, longest), pad_id, dtype=np.int64)
        mask = np.zeros((rows, longest), dtype=np.int64)
        for row, position in enumerate(positions):
            n = lengths[position]
            matrix[row, :n] = ids[position]
            mask[row, :n] = 1
        input_ids, attention_mask = torch.from_numpy(matrix), torch.from_numpy(mask)
        if pin:
            input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
        batches.append(Batch(positions, input_ids, attention_mask))
        start += rows
    return batches


@dataclass
class Window:
    """A run of consecutive pages read together: their payload (for the writer), ready batches, tokens."""

    payload: Any
    size: int
    batches: list[Batch]
    tokens: int


def score_window(classifier: Classifier, window: Window, tally: OomTally | None = None) -> np.ndarray:
    """Scores of a window's pages in their own order; a batch that runs out of device memory is halved."""
    scores = np.full(window.size, np.nan, dtype=np.float32)
    for batch in window.batches:

        def run(lo: int, hi: int, batch: Batch = batch) -> tuple[int, int, np.ndarray]:
            return lo, hi, classifier.score_batch(batch.input_ids[lo:hi], batch.attention_mask[lo:hi])

        for lo, hi, values in map_halving_on_oom(run, len(batch.positions), classifier.loaded, tally=tally):
            scores[batch.positions[lo:hi]] = values
    return scores


def prepared_windows(
    classifier: Classifier,
    settings: ClassifierSettings,
    windows: Iterable[tuple[Any, Sequence[str | None]]],
) -> Iterator[Window]:
    """Windows tokenized and batched on a producer thread, at most ``_QUEUED_WINDOWS`` ahead of the consumer.

    ``windows`` yields (payload, texts); a missing text (None) is tokenized as an empty page and
    its score is the caller's to discard. Reading the input happens on the producer thread too.
    """
    ready: queue.Queue = queue.Queue(maxsize=_QUEUED_WINDOWS)
    stop = threading.Event()
    pin = classifier.device == "cuda"

    def produce() -> None:
        try:
            for payload, texts in windows:
                ids = tokenize(classifier, [t if t is not None else "" for t in texts], settings.max_length)
                batches = sorted_batches(ids, classifier.pad_id, settings.batch_size, settings.batch_tokens, pin)
                window = Window(payload, len(texts), batches, sum(len(x) for x in ids))
                while not stop.is_set():
                    try:
                        ready.put(window, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(None)
        except BaseException as error:
            ready.put(error)

    producer = threading.Thread(target=produce, name="page-tokenizer", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join(timeout=10)


def score_texts(
    classifier: Classifier,
    settings: ClassifierSettings,
    texts: list[str],
    on_window: Callable[[Window, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Scores of ``texts`` in their order, through the same windows, threads and batches as a partition."""
    out = np.empty(len(texts), dtype=np.float32)
    chunks = ((start, texts[start : start + settings.window]) for start in range(0, len(texts), settings.window))
    for window in prepared_windows(classifier, settings, chunks):
        scores = score_window(classifier, window)
        out[window.payload : window.payload + window.size] = scores
        if on_window is not None:
            on_window(window, scores)
    return out
