"""robots.txt and TDMRep of image hosts, judged once per host per task (RFC 9309, W3C TDMRep)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protego import Protego
from yarl import URL

from cah_resources.contract import DownloadStatus, ShardStats

ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
# RFC 9309 2.5: a crawler must parse at least the first 500 KiB; Google stops there too.
SITE_FILE_MAX_BYTES = 500 * 1024
# Allow/Disallow lines of one robots.txt that are parsed and matched: 500 KiB of wildcard rules
# cost a second to parse and ~20 ms per URL to match, on the event loop every URL shares. A
# robots.txt with more rules is not evaluated: its host is refused (robots_too_complex), as an
# owner's opt-out we cannot afford to read.
ROBOTS_MAX_RULES = 2_000
# A robots.txt up to this size is parsed on the event loop (Protego: ~45 us for a typical 400-byte
# file, ~3 ms at this bound if every line is a wildcard rule): handing it to a thread costs ~90 us
# of CPU more, and a host's robots.txt is parsed once per task.
ROBOTS_INLINE_BYTES = 4 * 1024
_RULE_LINE = re.compile(rb"allow[ \t]*:", re.IGNORECASE)  # Allow and Disallow, whatever the line ends
# robots.txt fetch outcomes where no request reached a server that answered: the host cannot be
# reached, so RFC 9309's "unreachable" (disallow) applies, and the image keeps that network status.
NETWORK_FAILURES = frozenset(
    {
        DownloadStatus.TIMEOUT,
        DownloadStatus.CONNECTION_ERROR,
        DownloadStatus.TLS_ERROR,
        DownloadStatus.TRUNCATED,
        DownloadStatus.BAD_RESPONSE,
        DownloadStatus.ERROR,
        DownloadStatus.DNS_TIMEOUT,
    }
)
# Every other outcome leaves robots.txt "unavailable" (RFC 9309 2.3.1.3: crawl freely): a 4xx, more
# than max_redirects redirects, a redirect to a refused address, a name that does not exist (the
# image then fails on its own with that status).


@dataclass(frozen=True)
class PathPattern:
    """A robots.txt-style path pattern: ``*`` any characters, a final ``$`` the end, else a prefix.

    Matched by finding its literal pieces left to right (each at its first place after the last),
    as Google's robots.txt matcher does: time linear in the path, whatever the stars, where a
    regular expression of ``.*`` pieces backtracks exponentially.
    """

    pieces: tuple[str, ...]
    anchored: bool

    @classmethod
    def parse(cls, location: str) -> PathPattern:
        anchored = location.endswith("$")
        body = location[:-1] if anchored else location
        return cls(tuple(body.split("*")), anchored)

    def match(self, path: str) -> bool:
        first, *rest = self.pieces
        if not path.startswith(first):
            return False
        if not rest:
            return not self.anchored or path == first
        at = len(first)
        *middle, last = rest
        for piece in middle:
            found = path.find(piece, at)
            if found < 0:
                return False
            at = found + len(piece)
        if self.anchored:
            return len(path) - len(last) >= at and path.endswith(last)
        return path.find(last, at) >= 0


@dataclass(frozen=True)
class TdmRule:
    """One entry of a tdmrep.json: paths matching ``location`` are reserved (or not), under ``policy``."""

    location: str
    pattern: PathPattern
    reserved: bool
    policy: str | None = None


@dataclass
class HostRules:
    """What one origin (scheme, host, port) says about crawling and mining it."""

    robots: Protego | None = None  # None: robots.txt unavailable, everything allowed
    unreachable: tuple[str, str] | None = None  # (status, why) while robots.txt cannot be had
    too_complex: int = 0  # robots.txt rule lines, when over ROBOTS_MAX_RULES: the host is refused
    tdm: list[TdmRule] = field(default_factory=list)
    expires: float = float("inf")


def path_pattern(location: str) -> PathPattern:
    """A tdmrep.json ``location`` (a path pattern or an absolute URL) as a PathPattern; ValueError if unusable."""
    location = location.strip()
    if "://" in location:
        try:
            location = URL(location).raw_path_qs
        except (ValueError, TypeError, UnicodeError) as exc:  # "http://[/", a port of 99999
            raise ValueError(f"location {location[:100]!r} is no URL: {exc}") from None
    return PathPattern.parse(location)


def parse_tdmrep(text: str) -> list[TdmRule]:
    """The rules of a tdmrep.json (an array of {location, tdm-reservation, tdm-policy}); malformed entries skipped.

    Never raises for anything a site sends: text that is no JSON (or nested past the parser's
    depth) has no rules, and an entry whose location is unusable is skipped.
    """
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError):
        return []
    rules = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            continue
        try:
            pattern = path_pattern(entry["location"])
        except ValueError:
            continue
        reserved = str(entry.get("tdm-reservation", 0)).strip() == "1"
        policy = entry.get("tdm-policy") if isinstance(entry.get("tdm-policy"), str) else None
        rules.append(TdmRule(entry["location"], pattern, reserved, policy))
    return rules


def tdm_header_reserved(values: list[str]) -> bool:
    """True when a response's ``tdm-reservation`` header reserves text and data mining rights."""
    return any(value.strip() == "1" for value in values)


@dataclass(frozen=True)
class Refusal:
    """Why a URL is not requested: a row status and its one-line message."""

    status: str
    message: str


SiteFetch = Callable[[URL], Awaitable[tuple[str, int | None, bytes | None]]]


class OptOuts:
    """The opt-out rules of every origin a shard task meets: robots.txt and tdmrep.json fetched once
    per origin (concurrent URLs of one origin share the fetch) and kept for the task; a robots.txt
    that was unreachable is asked again after ``unreachable_seconds`` (RFC 9309's bounded disallow).

    ``fetch`` gets a URL and returns (status, http status, body): the downloader's guarded, capped
    fetch of a site file.
    """

    def __init__(
        self, fetch: SiteFetch, token: str, robots: bool = True, tdmrep: bool = True, unreachable_seconds: float = 600.0
    ) -> None:
        self._fetch = fetch
        self.token, self.robots, self.tdmrep = token, robots, tdmrep
        self.unreachable_seconds = unreachable_seconds
        self._rules: dict[str, HostRules] = {}
        self._in_flight: dict[str, asyncio.Task[HostRules]] = {}
        self.requests: Counter[str] = Counter()  # requests sent per site file path (robots.txt, tdmrep.json)

    def totals(self) -> ShardStats:
        """What judging hosts cost a shard: site files requested, origins judged."""
        return ShardStats(
            robots_txt_requests=self.requests[ROBOTS_PATH],
            tdmrep_requests=self.requests[TDMREP_PATH],
            opt_out_origins=len(self._rules),
        )

    async def refusal(self, url: str | URL) -> Refusal | None:
        """Why ``url`` must not be requested, or None; URLs that do not parse are left to the fetch to report."""
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError):
            return None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            return None
        site = parsed.origin()
        origin = str(site)
        rules = self._rules.get(origin)
        if rules is None or rules.expires <= time.monotonic():
            task = self._in_flight.get(origin)
            if task is None:
                task = self._in_flight[origin] = asyncio.create_task(self._load(origin, site))
                task.add_done_callback(lambda _t: self._in_flight.pop(origin, None))
            rules = await asyncio.shield(task)  # one URL giving up does not cancel the fetch others await
        return self._judge(rules, parsed, origin)

    def _judge(self, rules: HostRules, url: URL, origin: str) -> Refusal | None:
        if rules.unreachable is not None:
            status, why = rules.unreachable
            return Refusal(status, f"{origin}{ROBOTS_PATH} unreachable ({why}): RFC 9309 disallows the host"[:300])
        if rules.too_complex:
            return Refusal(
                DownloadStatus.ROBOTS_TOO_COMPLEX,
                f"{origin}{ROBOTS_PATH} has {rules.too_complex} rules, over the {ROBOTS_MAX_RULES} evaluated",
            )
        if rules.robots is not None and not rules.robots.can_fetch(str(url), self.token):
            return Refusal(
                DownloadStatus.ROBOTS_DISALLOWED,
                f"{origin}{ROBOTS_PATH} disallows {url.raw_path_qs} for {self.token!r}"[:300],
            )
        path = url.raw_path_qs
        for rule in rules.tdm:
            if rule.pattern.match(path):
                if rule.reserved:
                    policy = f", policy {rule.policy}" if rule.policy else ""
                    return Refusal(
                        DownloadStatus.TDM_RESERVED, f"{origin}{TDMREP_PATH} reserves {rule.location}{policy}"[:300]
                    )
                break  # the first matching entry decides
        return None

    async def _load(self, origin: str, site: URL) -> HostRules:
        # One after the other: tdmrep.json, then the image, reuse robots.txt's connection (one
        # connection per host instead of three costs more CPU than the round trip it saves).
        robots_answer = await self._site_file(site.with_path(ROBOTS_PATH), ROBOTS_PATH) if self.robots else None
        tdm_answer = None
        if self.tdmrep and not (robots_answer is not None and robots_answer[0] in NETWORK_FAILURES):
            tdm_answer = await self._site_file(site.with_path(TDMREP_PATH), TDMREP_PATH)
        rules = HostRules()
        if robots_answer is not None:
            status, code, body = robots_answer
            if status == DownloadStatus.FETCHED:  # site files: fetched only on 2xx (Downloader._read)
                body = body or b""  # (a fetched file always has its bytes)
                count = len(_RULE_LINE.findall(body))
                if count > ROBOTS_MAX_RULES:
                    rules.too_complex = count
                elif len(body) <= ROBOTS_INLINE_BYTES:  # most are: parsed here, cheaper than the hop
                    rules.robots = Protego.parse(body.decode("utf-8", errors="replace"))
                else:  # up to ~0.1 s of parsing: off the event loop, where the other URLs' timers run
                    rules.robots = await asyncio.to_thread(Protego.parse, body.decode("utf-8", errors="replace"))
            elif status in NETWORK_FAILURES or (code is not None and (code == 429 or code >= 500)):
                rules.unreachable = (
                    DownloadStatus.ROBOTS_UNREACHABLE if code else status,
                    f"HTTP {code}" if code else status,
                )
                rules.expires = time.monotonic() + self.unreachable_seconds
            # else 4xx, or a redirect or address problem: unavailable, everything allowed
        if tdm_answer is not None:
            status, code, body = tdm_answer
            if status == DownloadStatus.FETCHED:  # site files: fetched only on 2xx (Downloader._read)
                rules.tdm = parse_tdmrep((body or b"").decode("utf-8", errors="replace"))
        self._rules[origin] = rules
        return rules

    async def _site_file(self, url: URL, kind: str) -> tuple[str, int | None, bytes | None]:
        self.requests[kind] += 1
        return await self._fetch(url)
