"""Webdataset tars as img2dataset writes them (key.jpg/png/webp + key.txt + key.json), from our own shard samples."""

from __future__ import annotations

import io
import json
import tarfile

from PIL import Image

from cah_resources.samples.tiny_clip.shapes import ShardSample

EXTENSIONS = ("jpg", "png", "jpeg", "webp")


def reencoded(jpeg: bytes, extension: str) -> bytes:
    """The image in ``extension``'s format: JPEG bytes as they are, else the decoded pixels losslessly."""
    if extension in ("jpg", "jpeg"):
        return jpeg
    out = io.BytesIO()
    options = {"lossless": True} if extension == "webp" else {}
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(out, format=extension.upper(), **options)
    return out.getvalue()


def img2dataset_members(i: int, sample: ShardSample, url: str | None) -> list[tuple[str, bytes]]:
    """One sample's members: the image in a rotating format, its caption, img2dataset's json."""
    key = f"{i:09d}"
    extension = EXTENSIONS[i % len(EXTENSIONS)]
    width, height = Image.open(io.BytesIO(sample.image)).size
    doc = {"key": key, "caption": sample.text, "width": width, "height": height, "status": "success"}
    doc |= {"url": url, "original_width": 2 * width, "original_height": 2 * height} if url else {}
    return [
        (f"{key}.{extension}", reencoded(sample.image, extension)),
        (f"{key}.txt", sample.text.encode()),
        (f"{key}.json", json.dumps(doc).encode()),
    ]


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_webdataset(
    fs, folder: str, samples: list[ShardSample], per_tar: int, urls: list[str | None] | None = None
) -> list[str]:
    """``samples`` as img2dataset's output in ``folder``: ``000000.tar``, ``000001.tar``, ...; returns the paths."""
    fs.makedirs(folder, exist_ok=True)
    paths = []
    for t, start in enumerate(range(0, len(samples), per_tar)):
        members = []
        for i in range(start, min(start + per_tar, len(samples))):
            members += img2dataset_members(i, samples[i], urls[i] if urls else f"https://img.example/{i}.jpg")
        path = f"{folder}/{t:06d}.tar"
        with fs.open(path, "wb") as handle:
            handle.write(tar_bytes(members))
        paths.append(path)
    return paths
