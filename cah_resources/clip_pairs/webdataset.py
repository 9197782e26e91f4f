"""Samples of a webdataset tar as webdataset reads them: members grouped by key, image + txt + optional json."""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cah_resources.contract import WEBDATASET_IMAGE_EXTENSIONS, Damage

# webdataset's base_plus_ext: the key is the path up to the first dot of the file name, the rest its extension.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_WANTED = frozenset((*WEBDATASET_IMAGE_EXTENSIONS, "txt", "json"))
# img2dataset's per-sample json fields this project takes, and their types (its sha256 is of the image
# it downloaded, before resizing: image_shards' sha256 too).
_JSON_TEXT = ("url", "caption", "sha256")
_JSON_INT = ("width", "height", "original_width", "original_height")


@dataclass
class Sample:
    """One key's members: the image (the first of WEBDATASET_IMAGE_EXTENSIONS present), caption, json fields."""

    key: str
    image: bytes | None = None
    text: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _sample(key: str, members: dict[str, bytes]) -> Sample:
    sample = Sample(key)
    sample.image = next((members[ext] for ext in WEBDATASET_IMAGE_EXTENSIONS if ext in members), None)
    if "json" in members:
        try:
            doc = json.loads(members["json"])
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            sample.fields = {k: doc[k] for k in _JSON_TEXT if isinstance(doc.get(k), str)}
            sample.fields |= {k: doc[k] for k in _JSON_INT if isinstance(doc.get(k), int)}
    if "txt" in members:
        sample.text = members["txt"].decode("utf-8", errors="replace")
    elif "caption" in sample.fields:
        sample.text = sample.fields["caption"]
    return sample


def iter_samples(handle: Any, damage: Counter[str]) -> Iterator[Sample]:
    """The samples of a tar streamed from ``handle``, in tar order; nothing is written or kept beyond one sample.

    Members are grouped by key as webdataset does (consecutive members sharing the part of the name
    before the first dot). A stretch that is no member (a corrupt header, or the tar cut short) is
    counted in ``damage`` under ``Damage.CORRUPT_TAR`` and skipped; the members after it are read.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    expected = 0  # where the next header starts if nothing was skipped
    try:
        # ignore_zeros: tarfile steps over blocks that are no header, one by one, to the next valid one.
        with tarfile.open(fileobj=handle, mode="r|*", ignore_zeros=True) as tar:
            for member in tar:
                if member.offset > expected:
                    damage[Damage.CORRUPT_TAR] += 1
                expected = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                match = _KEY_AND_EXTENSION.match(member.name.removeprefix("./"))
                if not member.isfile() or match is None:
                    continue
                name, extension = match[1], match[2].lower()
                if name != key:
                    if key is not None:
                        yield _sample(key, members)
                    key, members = name, {}
                if extension in _WANTED:
                    data = tar.extractfile(member)
                    if data is not None:
                        members[extension] = data.read()
            if tar.offset <= expected:  # no end-of-archive blocks after the last member: the tar was cut short
                damage[Damage.CORRUPT_TAR] += 1
    except (tarfile.ReadError, EOFError):  # cut short inside a member: what was read before is kept
        damage[Damage.CORRUPT_TAR] += 1
    if key is not None:
        yield _sample(key, members)
