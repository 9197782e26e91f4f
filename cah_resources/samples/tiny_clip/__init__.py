"""The tiny CLIP that ships with cah, for tests and the offline demo: where its files are."""

from __future__ import annotations

from pathlib import Path

from cah_resources.clip_pairs.settings import LAION_THRESHOLDS

MODELS_DIR = Path(__file__).resolve().parent
TINY_CLIP_NAME = "cah-tiny-clip"
TINY_CLIP_CONFIG = MODELS_DIR / f"{TINY_CLIP_NAME}.json"
TINY_CLIP_CHECKPOINT = MODELS_DIR / f"{TINY_CLIP_NAME}.safetensors"
# Cosine thresholds at which the tiny model separates matching from mismatched captions; the
# same values LAION-5B used for its real models, so the demo runs with the production defaults.
TINY_CLIP_THRESHOLDS = dict(LAION_THRESHOLDS)
