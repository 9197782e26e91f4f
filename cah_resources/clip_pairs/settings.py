"""What clip_pairs is configured by, importable without torch: models per category, thresholds, devices."""

from __future__ import annotations

from dataclasses import dataclass

from cah_resources.contract import CATEGORIES

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# How images are decoded: 'pil' on CPU threads, 'torch' with torchvision on the model's device
# (nvJPEG on CUDA), 'auto' torch on CUDA and PIL elsewhere.
DECODERS = ("auto", "pil", "torch")
# Who tokenizes captions for models with CLIP's own BPE: 'rust' the ``tokenizers`` twin (same ids as
# open_clip's, checked on tests/data/clip_captions.json; it does not hold the interpreter lock),
# 'open_clip' open_clip's Python one. Models with a Hugging Face tokenizer keep theirs (already Rust).
TOKENIZERS = ("rust", "open_clip")


@dataclass(frozen=True)
class ClipModelSpec:
    """Which open_clip model scores a category: a name plus pretrained tag, or a local checkpoint."""

    model: str
    pretrained: str = ""
    config: str = ""

    @property
    def tags_known(self) -> bool:
        """Whether LAION's zero-shot tag prompts mean anything to this model: only open_clip's published weights.

        A local checkpoint (the tiny test model, a custom fine-tune) never saw those prompts' concepts:
        its NSFW and watermark "tags" would be noise, so they are recorded as unknown (null).
        """
        import open_clip

        return bool(self.pretrained) and (self.model, self.pretrained) in set(open_clip.list_pretrained())

    @property
    def label(self) -> str:
        """What the ``clip_model`` column records: name and weights, without local folders."""
        weights = self.pretrained.rsplit("/", 1)[-1] if self.pretrained else "random"
        return f"{self.model}/{weights}"


@dataclass
class ScoringSettings:
    """Everything a worker needs to score a shard; plain and picklable, built by ``ClipScorer``."""

    models: dict[str, ClipModelSpec]
    thresholds: dict[str, float]
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256
    decode_workers: int = 4
    prefetch_batches: int = 2
    decode: str = "auto"
    tokenizer: str = "rust"
    write_embeddings: bool = False

    def __post_init__(self) -> None:
        missing = [c for c in CATEGORIES if c not in self.models or c not in self.thresholds]
        if missing:
            raise ValueError(f"clip scoring needs a model and a threshold for categories {missing}")
        if self.device not in DEVICES:
            raise ValueError(f"clip device must be one of {DEVICES}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"clip precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.decode not in DECODERS:
            raise ValueError(f"clip decode must be one of {DECODERS}, not {self.decode!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"clip tokenizer must be one of {TOKENIZERS}, not {self.tokenizer!r}")
        if self.batch_size < 1 or self.decode_workers < 1 or self.prefetch_batches < 0:
            raise ValueError("clip batch_size and decode_workers must be >= 1, prefetch_batches >= 0")


# LAION-5B's choice: ViT-B/32 for English (and no language), the multilingual model otherwise.
LAION_MODELS = {
    "en": ClipModelSpec("ViT-B-32", "openai"),
    "multi": ClipModelSpec("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"),
    "nolang": ClipModelSpec("ViT-B-32", "openai"),
}
LAION_THRESHOLDS = {"en": 0.28, "multi": 0.26, "nolang": 0.28}
SCORING_DEFAULTS = ScoringSettings(models=LAION_MODELS, thresholds=LAION_THRESHOLDS)
