"""CLIP scoring: open_clip models loaded once per process, pair embeddings, thresholds and NSFW/watermark tags."""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cah_resources.batching import resolve_device
from cah_resources.clip_pairs.settings import ClipModelSpec

log = logging.getLogger(__name__)


# LAION's NSFW rule: the two prompts nearest to an image decide; both from the NSFW set means
# NSFW, neither means UNLIKELY, one of each UNSURE. The safe set covers what the web is mostly
# made of so that ordinary pictures find a nearer home than the NSFW prompts.
SAFE_PROMPTS = (
    "a neutral photo",
    "a selfie",
    "an illustration or a drawing",
    "children playing with toys",
    "a teddy bear or a puppet",
    "an animal, a bird, a mammal or an insect",
    "fashion and clothes",
    "a logo, a commercial or an advertisement",
    "a painting",
    "an anime or cartoon picture",
    "a funny picture",
    "a romantic scene",
    "a crime or thriller scene",
    "an action movie scene",
    "a horror movie scene",
    "a documentary photo",
    "a news photo",
    "an entertainment photo",
    "a talk show",
    "a product photo",
    "a landscape",
    "food on a plate",
)
NSFW_PROMPTS = (
    "porn, explicit sex",
    "a naked body, nudity",
    "explicit genitals",
    "bare breasts, nipples",
    "sexual intercourse",
    "erotic, sexy, lust, horny",
    "hentai, explicit anime",
    "an explicit sexual cartoon",
)
WATERMARK_PROMPTS = (
    "a photo with a watermark",
    "a stock photo covered by a watermark",
    "an image with a semi-transparent logo watermark",
    "a picture with copyright text over it",
)
CLEAN_PROMPTS = (
    "a photo",
    "a clean photo",
    "an image without any text",
    "a picture",
)
# Pixels per chunk of a same-size group resized at once: on a GPU 384 MB as float32, few launches;
# on the CPU about a core's cache (1 MB), where a bigger batched pass ran 1.4-3.5x slower per image.
_RESIZE_CHUNK_PIXELS = 2**25
_RESIZE_CHUNK_PIXELS_CPU = 2**18
# OpenAI CLIP's trained logit scale, which LAION's zero-shot tags used as a fixed softmax scale.
TAG_LOGIT_SCALE = 100.0


def resolve_precision(requested: str, device: str) -> str:
    """open_clip precision: fp32 on CPU; on GPU fp16 (OpenAI's mixed recipe) unless asked otherwise."""
    if requested == "auto":
        return "fp32" if device == "cpu" else "fp16"
    if requested in ("fp16", "bf16") and device == "cpu":
        raise ValueError(f"clip precision {requested} is for GPUs; use fp32 (or auto) on CPU")
    return requested


@dataclass
class LoadedClip:
    """One open_clip model ready to score on one device, with its tag prompt embeddings."""

    spec: ClipModelSpec
    model: Any
    tokenizer: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    preprocess_cfg: dict[str, Any]
    device: str
    precision: str
    input_dtype: torch.dtype
    safe_emb: torch.Tensor
    nsfw_emb: torch.Tensor
    watermark_emb: torch.Tensor
    clean_emb: torch.Tensor
    tags_known: bool = True  # spec.tags_known, decided once at load
    # Largest batch that has fit on the device; lowered when a batch runs out of memory so that
    # the rest of the shard does not hit the same wall again.
    max_batch: int | None = None
    # The same for decoding and resizing a batch on the device, which need memory of their own.
    max_decode_batch: int | None = None
    # Per limit above: slices in a row that fitted at it (see GROW_AFTER_FITS).
    fit_streaks: dict[str, int] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def pad_id(self) -> int:
        return padding_id(self.tokenizer)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @property
    def pil_steps(self) -> list[Callable[[Image.Image], Image.Image]]:
        """open_clip's preprocessing up to the tensor conversion: resize, crop (or pad), mode."""
        transforms = getattr(self.preprocess, "transforms", [])
        steps: list[Callable[[Image.Image], Image.Image]] = []
        for step in transforms:
            if "ToTensor" in type(step).__name__:
                return steps
            steps.append(step)
        raise ValueError(f"CLIP model {self.spec.label} has no ToTensor step in its preprocessing: {self.preprocess}")

    def preprocess_jpeg(self, data: bytes) -> torch.Tensor:
        """One image file's bytes to the model's input size: uint8 CHW on the CPU, via PIL.

        Conversion to float and normalisation wait for the whole batch (``normalize``): per image,
        torch's threaded kernels on such small tensors cost ten times the decode itself.
        """
        image: Image.Image = Image.open(io.BytesIO(data))
        # JPEG can decode straight to a reduced scale: much faster for big pictures and the
        # resize below brings them to the model's size anyway.
        image.draft("RGB", (self.image_size * 2, self.image_size * 2))
        image = image.convert("RGB")
        for step in self.pil_steps:
            image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor, device: str | None = None) -> torch.Tensor:
        """A uint8 batch (B, 3, H, W) to the model's normalised float input, on its device or ``device``."""
        device = device or self.device
        mean, std = self._mean_std
        return pixels.to(device, non_blocking=True).float().sub_(mean.to(device)).div_(std.to(device))

    def preprocess_on_device(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoded uint8 CHW images (on the model's device) to the model's normalised input batch there.

        open_clip's resize (short side, bicubic, antialiased) and centre crop, run once per group of
        same-size images rather than per image: a shard from image_shards holds one size only, and
        the float conversion, clamp and normalisation run once on the whole batch.
        """
        size = self.image_size
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((int(image.shape[-2]), int(image.shape[-1])), []).append(i)
        out = torch.empty((len(images), 3, size, size), device=self.device, dtype=torch.float32)
        for (height, width), members in groups.items():
            scale = size / min(height, width)
            new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
            top, left = (new_h - size) // 2, (new_w - size) // 2
            # A float copy of big pictures is large: bounded chunks keep a batch's peak memory flat.
            chunk_pixels = _RESIZE_CHUNK_PIXELS_CPU if self.device == "cpu" else _RESIZE_CHUNK_PIXELS
            step = max(1, chunk_pixels // (height * width))
            for lo in range(0, len(members), step):
                chunk = members[lo : lo + step]
                stacked = torch.stack([images[i] for i in chunk]).float()
                if (new_h, new_w) != (height, width):
                    stacked = F.interpolate(
                        stacked, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
                    )
                crop = stacked[:, :, top : top + size, left : left + size]
                if len(chunk) == len(images):
                    out.copy_(crop)
                else:
                    out.index_copy_(0, torch.tensor(chunk, device=self.device), crop)
        mean, std = self._mean_std
        return out.clamp_(0, 255).sub_(mean).div_(std)

    @functools.cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's mean and std on its device, scaled to 0..255 pixels."""
        mean = torch.tensor(self.preprocess_cfg["mean"], device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.preprocess_cfg["std"], device=self.device).view(1, 3, 1, 1) * 255.0
        return mean, std

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised float32 image and text embeddings of one batch, on the model's device.

        ``pixels`` is a uint8 batch from ``preprocess_jpeg`` or a normalised float one.
        """
        if pixels.dtype == torch.uint8:
            pixels = self.normalize(pixels)
        pixels = pixels.to(self.device, dtype=self.input_dtype, non_blocking=True)
        tokens = trim_padding(tokens, self.pad_id).to(self.device, non_blocking=True)
        image = self.model.encode_image(pixels)
        text = encode_text(self.model, tokens)
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)

    @torch.inference_mode()
    def tags(self, image_emb: torch.Tensor) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        """NSFW label and score and watermark score of each image; None and NaN where the model has no tags."""
        if not self.tags_known:
            unknown = np.full(len(image_emb), np.nan, dtype=np.float32)
            return [None] * len(image_emb), unknown, unknown.copy()
        return (
            *nsfw_tags(image_emb, self.safe_emb, self.nsfw_emb),
            watermark_scores(image_emb, self.watermark_emb, self.clean_emb),
        )


def padding_id(tokenizer: Any) -> int:
    """The token id a tokenizer pads with: 0 for open_clip's own, the HF tokenizer's otherwise."""
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return int(pad) if pad is not None else 0


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing columns that are padding in every row (captions are short, contexts long)."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    if len(used) == 0:
        return tokens
    return tokens[:, : int(used[-1]) + 1]


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` on as many positions as the tokens have, not the whole context.

    For causal text towers pooled at the end-of-text token, positions after it cannot change the
    result, so running only the used positions gives the same embedding several times faster.
    HF text towers mask padding themselves and take any length.
    """
    import open_clip

    full = getattr(model, "context_length", None) or tokens.shape[1]
    causal = (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
    )
    if not causal:
        if isinstance(model, open_clip.CLIP) and tokens.shape[1] < full:
            tokens = F.pad(tokens, (0, full - tokens.shape[1]))
        return model.encode_text(tokens)
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def _softmax_over_prompts(image_emb: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    return (TAG_LOGIT_SCALE * image_emb @ prompts.T).softmax(dim=-1)


def nsfw_tags(
    image_emb: torch.Tensor, safe_emb: torch.Tensor, nsfw_emb: torch.Tensor
) -> tuple[list[str | None], np.ndarray]:
    """LAION's zero-shot NSFW tag per image and the probability mass on the NSFW prompts."""
    probs = _softmax_over_prompts(image_emb, torch.cat([safe_emb, nsfw_emb]))
    n_safe = len(safe_emb)
    top2 = probs.topk(min(2, probs.shape[1]), dim=-1).indices >= n_safe
    hits = top2.sum(dim=-1).tolist()
    labels: list[str | None] = ["NSFW" if h == top2.shape[1] else "UNLIKELY" if h == 0 else "UNSURE" for h in hits]
    return labels, probs[:, n_safe:].sum(dim=-1).cpu().numpy().astype(np.float32)


def watermark_scores(image_emb: torch.Tensor, watermark_emb: torch.Tensor, clean_emb: torch.Tensor) -> np.ndarray:
    """Probability mass on the watermark prompts against the clean ones, per image."""
    probs = _softmax_over_prompts(image_emb, torch.cat([watermark_emb, clean_emb]))
    return probs[:, : len(watermark_emb)].sum(dim=-1).cpu().numpy().astype(np.float32)


def load_clip(
    spec: ClipModelSpec, device: str = "auto", precision: str = "auto", tokenizer: str = "rust"
) -> LoadedClip:
    """The model for ``spec`` on this process, loaded on first use and kept for every later batch.

    ``tokenizer`` is one of ``settings.TOKENIZERS``: 'rust' puts the Rust twin of CLIP's BPE in place of
    open_clip's Python one where the model uses that BPE.
    """
    from cah_resources.fleet.gpu_worker import warm_model

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    return warm_model(("clip", spec, device, precision, tokenizer), lambda: _load(spec, device, precision, tokenizer))


def _load(spec: ClipModelSpec, device: str, precision: str, tokenizer_kind: str = "rust") -> LoadedClip:
    import open_clip

    from cah_resources.clip_pairs.clip_tokenizer import rust_twin

    if spec.config:
        open_clip.add_model_config(spec.config)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=spec.pretrained or None, device=device, precision=precision
        )
        tokenizer = open_clip.get_tokenizer(spec.model)
        if tokenizer_kind == "rust":
            tokenizer = rust_twin(tokenizer)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load CLIP model {spec.label} ({spec.pretrained or 'no weights'}): {first_line}"
        ) from error
    model.eval()
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    input_dtype = open_clip.get_input_dtype(precision) or torch.float32

    @torch.inference_mode()
    def prompts(texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(
            encode_text(model, trim_padding(tokenizer(list(texts)), padding_id(tokenizer)).to(device)).float(), dim=-1
        )

    log.info("loaded CLIP %s on %s (%s, tokenizer %s)", spec.label, device, precision, type(tokenizer).__name__)
    return LoadedClip(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        preprocess_cfg=preprocess_cfg,
        device=device,
        precision=precision,
        input_dtype=input_dtype,
        safe_emb=prompts(SAFE_PROMPTS),
        nsfw_emb=prompts(NSFW_PROMPTS),
        watermark_emb=prompts(WATERMARK_PROMPTS),
        clean_emb=prompts(CLEAN_PROMPTS),
        tags_known=spec.tags_known,
    )
