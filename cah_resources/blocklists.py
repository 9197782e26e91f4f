"""Hash blocklists (Re-LAION style): URL or image-content hash lists, loaded once per task, named in metadata."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import fsspec

# Hex digest length -> hash function: a list may hold SHA-256 and MD5 lines side by side.
HASHES = {64: "sha256", 32: "md5"}


@dataclass(frozen=True)
class Blocklist:
    """The hashes of one or more lists, split by function, and what each list was (for the run's metadata)."""

    hashes: dict[str, frozenset[bytes]]  # "sha256" | "md5" -> raw digests
    sources: tuple[dict, ...]  # per list: source, entries, sha256 of its bytes

    def __len__(self) -> int:
        return sum(len(h) for h in self.hashes.values())

    def lists(self, data: bytes) -> bool:
        """True when ``data`` (a URL's UTF-8 bytes or an image's bytes) hashes to a listed digest."""
        return any(digests and hashlib.new(name, data).digest() in digests for name, digests in self.hashes.items())

    def lists_url(self, url: str) -> bool:
        return self.lists(url.encode("utf-8", errors="surrogatepass"))


EMPTY = Blocklist({}, ())


def parse_hash_lines(text: bytes, source: str) -> dict[str, set[bytes]]:
    """SHA-256 / MD5 hex digests, one per line; blank lines and ``#`` comments skipped, anything else an error."""
    found: dict[str, set[bytes]] = {name: set() for name in HASHES.values()}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        name = HASHES.get(len(line))
        try:
            digest = bytes.fromhex(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            name = None
        if name is None:
            raise ValueError(
                f"{source} line {number}: {raw[:80]!r} is not a SHA-256 or MD5 hex digest; "
                "a blocklist holds one hash per line"
            )
        found[name].add(digest)
    return found


def load_blocklist(sources: tuple[str, ...]) -> Blocklist:
    """Read every list (a path or any fsspec URL) into one Blocklist; a missing list is a one-line error."""
    hashes: dict[str, set[bytes]] = {name: set() for name in HASHES.values()}
    described = []
    for source in sources:
        try:
            with fsspec.open(source, "rb") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"blocklist {source} does not exist; fix the setting or remove it") from None
        parsed = parse_hash_lines(text, source)
        for name, digests in parsed.items():
            hashes[name] |= digests
        described.append(
            {
                "source": source,
                "entries": sum(len(d) for d in parsed.values()),
                "sha256": hashlib.sha256(text).hexdigest(),
            }
        )
    return Blocklist({name: frozenset(d) for name, d in hashes.items() if d}, tuple(described))


_LOADED: dict[tuple, Blocklist] = {}
_LOCK = threading.Lock()


def _versions(sources: tuple[str, ...]) -> tuple:
    """What each list is now (fsspec's checksum of its size and modification time or ETag)."""
    versions = []
    for source in sources:
        fs, path = fsspec.core.url_to_fs(source)
        try:
            versions.append(fs.checksum(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"blocklist {source} does not exist; fix the setting or remove it") from None
    return tuple(versions)


def blocklist(sources: tuple[str, ...]) -> Blocklist:
    """The lists ``sources`` name, as they are now: read once and kept by the worker process while
    they stay unchanged, so each task pays one stat per list, not one read."""
    if not sources:
        return EMPTY
    key = (tuple(sources), _versions(tuple(sources)))
    with _LOCK:  # Dask runs tasks in threads: one read, not one per thread
        if key not in _LOADED:
            _LOADED.clear()  # only the current lists are worth their memory
            _LOADED[key] = load_blocklist(key[0])
        return _LOADED[key]
