"""The tiny text classifier that ships with cah, for tests, the demo and benchmarks: where its files are."""

from __future__ import annotations

from pathlib import Path

# A Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer files), loaded by
# AutoModelForSequenceClassification / AutoTokenizer like any user's local checkpoint.
TINY_TEXT_CLASSIFIER = Path(__file__).resolve().parent / "checkpoint"
