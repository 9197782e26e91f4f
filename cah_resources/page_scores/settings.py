"""What page_scores is configured by, importable without torch: the classifier, its score rule, threshold, batching."""

from __future__ import annotations

from dataclasses import dataclass

# How a page's score is read from the model's logits: the regression logit (FineWeb-Edu's
# classifier: one output, the 0-5 educational value), or the probability of a named label
# (softmax over the labels; a sigmoid for a single-output model).
SCORE_RULES = ("regression", "label_probability")
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp32", "fp16", "bf16")  # auto: bf16 on a GPU that has it, else fp16; fp32 on CPU
FINEWEB_EDU_CLASSIFIER = "HuggingFaceFW/fineweb-edu-classifier"


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything a worker needs to score pages; plain and picklable, built by the ``text_classifier`` resource."""

    model: str = FINEWEB_EDU_CLASSIFIER
    """A sequence-classification model id on the Hugging Face Hub, or a local checkpoint folder."""
    revision: str = ""
    """A Hub revision (branch, tag, commit); empty: the default branch."""
    score_rule: str = "regression"
    """regression: the model's one output is the score (FineWeb-Edu's); label_probability: the
    probability of label."""
    label: str = ""
    """With label_probability: the label whose probability is the score."""
    threshold: float = 3.0
    """Pages are kept where score >= threshold (FineWeb-Edu keeps int_score >= 3, the same pages)."""
    max_length: int = 512
    """Tokens per page; longer pages are truncated, as FineWeb-Edu's annotation did."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that has it, else fp16; fp32 on CPU), fp32, fp16 or bf16."""
    device: str = "auto"
    """auto, cuda, mps or cpu."""
    batch_size: int = 256
    """Pages per model call at most."""
    batch_tokens: int = 32768
    """Padded tokens per model call at most (length-sorted batches pad little)."""
    window: int = 4096
    """Pages read, tokenized and length-sorted together while the model scores the previous window."""

    def __post_init__(self) -> None:
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"page score rule must be one of {SCORE_RULES}, not {self.score_rule!r}")
        if self.score_rule == "label_probability" and not self.label:
            raise ValueError("score rule label_probability needs the label whose probability is the score")
        if self.device not in DEVICES:
            raise ValueError(f"text classifier device must be one of {DEVICES}, not {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"text classifier dtype must be one of {DTYPES}, not {self.dtype!r}")
        if min(self.max_length, self.batch_size, self.batch_tokens, self.window) < 1:
            raise ValueError("max_length, batch_size, batch_tokens and window must be >= 1")


CLASSIFIER_DEFAULTS = ClassifierSettings()
