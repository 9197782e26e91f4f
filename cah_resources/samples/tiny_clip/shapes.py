"""Coloured-shape pictures and their captions in five languages: the tiny CLIP's world."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cah_resources.contract import COUNT, SUCCESSES, DownloadStatus
from cah_resources.samples import sample_crawl

# The sample crawl's six colours and four shapes, so the offline demo's pictures and captions are
# ones the tiny CLIP has learnt. name -> (rgb, German stem, French masculine, French feminine)
COLOURS: dict[str, tuple[tuple[int, int, int], str, str, str]] = {
    "red": ((220, 30, 30), "rot", "rouge", "rouge"),
    "green": ((30, 160, 60), "grün", "vert", "verte"),
    "blue": ((40, 70, 210), "blau", "bleu", "bleue"),
    "yellow": ((240, 205, 30), "gelb", "jaune", "jaune"),
    "purple": ((130, 50, 170), "violett", "violet", "violette"),
    "orange": ((245, 140, 20), "orangefarben", "orange", "orange"),
}
# name -> (German noun, German gender, French noun, French gender)
SHAPES: dict[str, tuple[str, str, str, str]] = {
    "circle": ("Kreis", "m", "cercle", "m"),
    "square": ("Quadrat", "n", "carré", "m"),
    "triangle": ("Dreieck", "n", "triangle", "m"),
    "star": ("Stern", "m", "étoile", "f"),
}

LANGUAGES = ("en", "de", "fr", "es", "ru")

_GERMAN_ARTICLE = {"m": ("ein", "er"), "n": ("ein", "es"), "f": ("eine", "e")}


@dataclass(frozen=True)
class Shape:
    """What a picture shows: one coloured shape."""

    colour: str
    shape: str


ALL_SHAPES = tuple(Shape(c, s) for c in COLOURS for s in SHAPES)


def captions(item: Shape, language: str) -> list[str]:
    """Every caption template for ``item`` in ``language`` (one of ``LANGUAGES``).

    The sample crawl's own sentence comes first; English, German and French add short
    alt-text styles of their own.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
    crawl_sentence = sample_crawl.caption(
        language, sample_crawl.COLORS["en"].index(item.colour), sample_crawl.SHAPES["en"].index(item.shape)
    )
    _, de_stem, fr_m, fr_f = COLOURS[item.colour]
    de_noun, de_gender, fr_noun, fr_gender = SHAPES[item.shape]
    if language == "en":
        article = "an" if item.colour[0] in "aeiou" else "a"
        return [
            crawl_sentence,
            f"{article} {item.colour} {item.shape}",
            f"a photo of {article} {item.colour} {item.shape}",
            f"{item.colour} {item.shape} on a grey background",
        ]
    if language == "de":
        article, ending = _GERMAN_ARTICLE[de_gender]
        return [
            crawl_sentence,
            f"{article} {de_stem}{ending} {de_noun}",
            f"Foto: {article} {de_stem}{ending} {de_noun}",
            f"{de_stem}{ending} {de_noun} auf grauem Hintergrund",
        ]
    if language == "fr":
        article, adjective = ("une", fr_f) if fr_gender == "f" else ("un", fr_m)
        return [
            crawl_sentence,
            f"{article} {fr_noun} {adjective}",
            f"une photo d'{article} {fr_noun} {adjective}",
            f"{fr_noun} {adjective} sur fond gris",
        ]
    return [crawl_sentence]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    raise ValueError(f"no polygon for {shape!r}")


def draw(item: Shape, rng: random.Random, size: int = 64) -> Image.Image:
    """A ``size``-pixel RGB picture of ``item`` at a random place and scale.

    Half the pictures sit on a plain grey, half on grainy white like the sample crawl's.
    """
    white = rng.random() < 0.5
    grey = 255 if white else rng.randint(95, 165)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    pen = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.38) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    colour = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[item.colour][0])
    if item.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif item.shape == "square":
        pen.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=colour)
    else:
        angle = -math.pi / 2 + rng.uniform(-0.2, 0.2)
        pen.polygon(_polygon(item.shape, cx, cy, r, angle), fill=colour)
    if white:
        grain = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (size, size, 1))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    return image


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` encoded as JPEG, the way stage 2 stores every image."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def sample_pairs(n: int, seed: int, size: int = 64) -> list[tuple[Shape, str, str, bytes]]:
    """``n`` random (shape, language, caption, jpeg) pairs; the same seed gives the same pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        item = rng.choice(ALL_SHAPES)
        language = rng.choice(LANGUAGES)
        caption = rng.choice(captions(item, language))
        pairs.append((item, language, caption, jpeg_bytes(draw(item, rng, size))))
    return pairs


@dataclass(frozen=True)
class ShardSample:
    """One candidate as stage 2 leaves it: caption, category and the image bytes it downloaded."""

    text: str
    image: bytes | None
    category: str = "en"
    language: str = "en"
    status: str = DownloadStatus.OK


def write_image_shard(root, segment: str, shard: int, samples: list[ShardSample]) -> list[str]:
    """Write ``samples`` as image shard ``shard`` of ``segment`` in stage 2's layout; returns the keys.

    The tar holds ``<key>.jpg/.txt/.json`` for ok samples with an image; the parquet one row per
    sample; ``NNNNN.done`` is written last. For tests, benchmarks and the offline demo of the
    clip_pairs stage without running the downloader.
    """
    import hashlib
    import json
    import tarfile

    import pyarrow as pa

    from cah_resources.contract import IMAGE_SHARDS, shard_paths, shard_row_schema, stage_folder

    rows: list[dict] = []
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for i, sample in enumerate(samples):
            key = f"{shard:05d}{i:05d}"
            url = f"http://127.0.0.1/{segment}/{key}.jpg"
            uid = hashlib.blake2b(f"{url}\x00{sample.text}".encode(), digest_size=16).hexdigest()
            ok = sample.status == DownloadStatus.OK
            width = height = None
            if ok and sample.image is not None:
                try:
                    width, height = Image.open(io.BytesIO(sample.image)).size
                except Exception:  # corrupt test images have no size
                    width = height = None
            row = {
                "uid": uid,
                "url": url,
                "text": sample.text,
                "page_url": f"http://127.0.0.1/{segment}/page{i}",
                "category": sample.category,
                "language": sample.language,
                "language_prob": 0.99,
                "wat_file": f"{segment}.wat.gz",
                "url_attribute": "src",
                "key": key,
                "status": sample.status,
                "http_status": 200 if ok else 404,
                "error_message": None if ok else "HTTP 404",
                "bytes": len(sample.image) if ok and sample.image else None,
                "sha256": hashlib.sha256(sample.image).hexdigest() if ok and sample.image else None,
                "width": width,
                "height": height,
                "original_width": width,
                "original_height": height,
            }
            rows.append(row)
            if ok and sample.image is not None:
                for suffix, data in (
                    (".jpg", sample.image),
                    (".txt", sample.text.encode()),
                    (".json", json.dumps(row).encode()),
                ):
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    paths = shard_paths(stage_folder(root, IMAGE_SHARDS, segment), shard)
    root.write_bytes(paths["tar"], tar_bytes.getvalue())
    root.write_parquet(paths["parquet"], pa.Table.from_pylist(rows, schema=shard_row_schema()))
    ok_count = sum(r["status"] == DownloadStatus.OK for r in rows)
    root.write_json(paths["stats"], {COUNT: len(rows), SUCCESSES: ok_count})
    root.write_json(paths["done"], {COUNT: len(rows), SUCCESSES: ok_count})
    return [r["key"] for r in rows]
