"""Asynchronous, bounded, cached DNS for the downloader: c-ares lookups, a lookup limit, TTL cache, coalescing."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiodns
import pycares
from aiodns import error as ares
from aiohttp.abc import AbstractResolver, ResolveResult

from cah_resources.contract import DownloadStatus, ShardStats

# c-ares error -> (status, what it means in one line, cached as a negative answer)
_ARES_ERRORS = {
    ares.ARES_ETIMEOUT: (DownloadStatus.DNS_TIMEOUT, "no answer from the nameservers in time", False),
    ares.ARES_ENOTFOUND: (DownloadStatus.DNS_ERROR, "NXDOMAIN: no such name", True),
    ares.ARES_ENODATA: (DownloadStatus.DNS_ERROR, "no address records for the name", True),
    ares.ARES_ESERVFAIL: (DownloadStatus.DNS_ERROR, "SERVFAIL: the nameserver could not answer", True),
    ares.ARES_EREFUSED: (DownloadStatus.DNS_ERROR, "the nameserver refused the query", True),
    ares.ARES_EBADNAME: (DownloadStatus.DNS_ERROR, "not a valid hostname", True),
    ares.ARES_ECONNREFUSED: (DownloadStatus.DNS_ERROR, "no nameserver could be reached", False),
}
SOCKET_BUFFER_BYTES = 4 * 2**20
# c-ares's bounds on one try's timeout (c-ares >= 1.22, docs/features.md): see CachingResolver.
ARES_TRY_FLOOR_S, ARES_TRY_CAP_S = 0.25, 5.0


def ares_tries(timeout: float) -> int:
    """Tries that cover ``timeout`` even when c-ares gives each its shortest wait (250 ms, doubling).

    No more: c-ares cannot cancel one query, so tries left when the lookup gives up are still sent.
    """
    tries, waited, wait = 0, 0.0, ARES_TRY_FLOOR_S
    while waited < timeout:
        tries, waited, wait = tries + 1, waited + wait, min(wait * 2, ARES_TRY_CAP_S)
    return max(tries, 2)


# Seconds without an answer before a lookup's query is sent again (Chrome's resolver waits about as
# long): far above an uncached recursive lookup (30-300 ms), far below a whole timeout.
HEDGE_AFTER_S = 1.0
# How often c-ares's timeouts are processed while queries are out (its shortest try is 250 ms).
ARES_TIMER_S = 0.05
MAX_CACHED_NAMES = 200_000  # per task; a shard meets at most its row count of names (plus redirects)

# The answer the current task just looked up for the host it is about to connect to: the
# connector asks the resolver again at connect time, and must not wait for a lookup slot then
# (nor find the entry expired after a wait for a connection slot).
_pinned: contextvars.ContextVar[tuple[str, int, list[ResolveResult]] | None] = contextvars.ContextVar(
    "cah_pinned_dns_answer", default=None
)


def pinned_answer(host: str, port: int) -> list[ResolveResult] | None:
    """The answer pinned for (host, port) in the current task, if any."""
    pinned = _pinned.get()
    return pinned[2] if pinned is not None and pinned[0] == host and pinned[1] == port else None


def pin_answer(host: str | None, port: int = 0, answers: list[ResolveResult] | None = None) -> None:
    """Hand ``answers`` to the current task's next resolve of (host, port); ``pin_answer(None)`` clears it."""
    _pinned.set(None if host is None else (host, port, answers or []))


class DnsLookupError(OSError):
    """A name could not be resolved; ``status`` is dns_timeout or dns_error, the message one line."""

    def __init__(self, host: str, status: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.status = status
        self.reason = reason


def parse_nameserver(text: str) -> str:
    """``"9.9.9.9"``, ``"127.0.0.1:5353"``, ``"[::1]:53"`` -> the form c-ares takes; else a one-line ValueError."""
    value = text.strip()
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "bad")
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ip = ipaddress.ip_address(host)
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"bad port {port!r}")
    except ValueError as exc:
        raise ValueError(f"nameserver {text!r} is not 'ip' or 'ip:port' ('[ipv6]:port'): {exc}") from None
    if port is None:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass
class DnsStats:
    """What a task's lookups cost: names sent to the nameservers, answers reused, failures, seconds."""

    lookups: int = 0  # lookups sent to c-ares (one per name and family, however many URLs wanted it)
    cache_hits: int = 0
    coalesced: int = 0  # callers that waited for a lookup another URL had started
    seconds: float = 0.0  # summed duration of the lookups sent
    peak_in_flight: int = 0
    hedged: int = 0  # lookups whose query was sent again after HEDGE_AFTER_S without an answer
    failures: Counter[str] = field(default_factory=Counter)  # per DownloadStatus

    def as_totals(self) -> ShardStats:
        """These lookups as a shard's stats (the dns_* stats of its NNNNN_stats.json and marker)."""
        return ShardStats(
            dns_lookups=self.lookups,
            dns_cache_hits=self.cache_hits,
            dns_coalesced=self.coalesced,
            dns_failures=Counter(self.failures),
            dns_seconds=round(self.seconds, 3),
            dns_peak_in_flight=self.peak_in_flight,
            dns_hedged=self.hedged,
        )


class _LoopDrivenResolver(aiodns.DNSResolver):
    """aiodns with c-ares's sockets watched by the event loop instead of a c-ares thread of its own.

    pycares 5 starts an event thread per channel by default: every answer then wakes that thread,
    which takes the GIL from the event loop and wakes the loop again through its self-pipe (about
    50 us of CPU per lookup, a fifth of one). aiodns's own fallback (``sock_state_cb``, what it uses
    where that thread cannot start) reads the answers in the loop. c-ares's retry timers are then
    driven by a loop timer, every ARES_TIMER_S (aiodns's fallback ticks once a second).
    """

    def _make_channel(self, **kwargs: Any) -> tuple[bool, pycares.Channel]:
        weak_self = weakref.ref(self)

        def sock_state_cb(fd: int, readable: bool, writable: bool) -> None:
            this = weak_self()
            if this is not None:
                this._sock_state_cb(fd, readable, writable)

        return False, pycares.Channel(sock_state_cb=sock_state_cb, timeout=self._timeout, **kwargs)

    def _start_timer(self) -> None:
        self._timer = self.loop.call_later(ARES_TIMER_S, self._timer_cb)


class CachingResolver(AbstractResolver):
    """aiohttp resolver on aiodns: at most ``concurrency`` lookups in flight, each bounded by ``timeout``;
    answers (positive and negative) cached per name for their TTL clamped to ``min_ttl..max_ttl``;
    concurrent lookups of one name share one query. A negative answer carries no TTL through
    getaddrinfo, so it is kept ``negative_ttl`` seconds (clamped the same way).
    """

    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        concurrency: int = 256,
        timeout: float = 5.0,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
    ) -> None:
        servers = [parse_nameserver(n) for n in nameservers]
        # c-ares (>= 1.22) does not give a try ``timeout``: once it has seen a few answers it times a
        # try out at 5x the server's average latency, 250 ms at least and 5 s at most. A resolver that
        # answers cached names in a millisecond would then fail every recursion past 250 ms with one
        # try. So c-ares retries (each try waiting about twice the last) until its tries are spent,
        # and the lookup's own deadline (``timeout``, in _lookup) is what bounds it.
        # A burst of answers to hundreds of lookups must queue, not be dropped (a lost answer costs a timeout).
        self._resolver = _LoopDrivenResolver(
            nameservers=servers or None,
            timeout=timeout,
            tries=ares_tries(timeout),
            socket_receive_buffer_size=SOCKET_BUFFER_BYTES,
        )
        self.timeout = timeout
        self.min_ttl, self.max_ttl = min_ttl, max_ttl
        self.negative_ttl = min(max(negative_ttl, min_ttl), max_ttl)
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[str, int]] | DnsLookupError]] = {}
        self._in_flight: dict[tuple[str, int], asyncio.Task] = {}
        self._running = 0
        self.stats = DnsStats()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pinned = pinned_answer(host, port)
        if pinned is not None:
            return pinned
        key = (host.lower(), int(family))
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self.stats.cache_hits += 1
            answer = cached[1]
        else:
            task = self._in_flight.get(key)
            if task is None:
                task = self._in_flight[key] = asyncio.create_task(self._lookup(host, key))
                task.add_done_callback(lambda _t: self._in_flight.pop(key, None))
            else:
                self.stats.coalesced += 1
            # Shielded: one URL giving up (its task cancelled) does not cancel the lookup others await.
            answer = await asyncio.shield(task)
        if isinstance(answer, DnsLookupError):
            raise DnsLookupError(host, answer.status, answer.reason)
        results = [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)
            for address, fam in answer
        ]
        return results

    async def _lookup(self, host: str, key: tuple[str, int]) -> list[tuple[str, int]] | DnsLookupError:
        """One query to the nameservers; failures come back as values so that every waiter sees them."""
        async with self._slots:
            self._running += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._running)
            self.stats.lookups += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout + 0.5):
                    result = await self._query_hedged(host, socket.AddressFamily(key[1]))
            except ares.DNSError as exc:
                errno = exc.args[0] if exc.args else None
                status, reason, cached = _ARES_ERRORS.get(
                    errno, (DownloadStatus.DNS_ERROR, _one_line_reason(exc), False)
                )
                return self._remember(key, DnsLookupError(host, status, reason), self.negative_ttl if cached else 0)
            except TimeoutError:
                return self._remember(
                    key, DnsLookupError(host, DownloadStatus.DNS_TIMEOUT, _ARES_ERRORS[ares.ARES_ETIMEOUT][1]), 0
                )
            finally:
                self._running -= 1
                self.stats.seconds += time.monotonic() - started
        answers = [(node.addr[0].decode(), node.family) for node in result.nodes]
        if not answers:
            return self._remember(
                key,
                DnsLookupError(host, DownloadStatus.DNS_ERROR, _ARES_ERRORS[ares.ARES_ENODATA][1]),
                self.negative_ttl,
            )
        ttl = min((node.ttl for node in result.nodes), default=0)
        return self._remember(key, answers, min(max(ttl, self.min_ttl), self.max_ttl))

    async def _query_hedged(self, host: str, family: socket.AddressFamily):
        """getaddrinfo, sent again if no answer came within HEDGE_AFTER_S; the first answer wins.

        A lost UDP packet would otherwise cost the whole timeout, and c-ares's own retry drops a
        late answer to the try it gave up on; a second query beside the first keeps both alive.
        """
        first = self._resolver.getaddrinfo(host, family=family, type=socket.SOCK_STREAM)
        queries = {first}
        if self.timeout > HEDGE_AFTER_S:
            done, _ = await asyncio.wait(queries, timeout=HEDGE_AFTER_S)
            if done:  # the usual case, answered without a hedge: no second wait
                return first.result()
            self.stats.hedged += 1
            queries.add(self._resolver.getaddrinfo(host, family=family, type=socket.SOCK_STREAM))
        try:
            while True:
                done, pending = await asyncio.wait(queries, return_when=asyncio.FIRST_COMPLETED)
                for query in sorted(done, key=lambda q: q.exception() is not None):  # an answer first
                    error = query.exception()
                    # A timeout of one query is no answer while the other may still bring one.
                    if not (pending and isinstance(error, ares.DNSError) and error.args[0] == ares.ARES_ETIMEOUT):
                        return query.result()
                queries = pending
        finally:
            for query in queries:
                if not query.done():
                    query.cancel()
                elif not query.cancelled():
                    query.exception()  # retrieved: the loser's error is not worth a warning

    def _remember(self, key, answer, ttl: float):
        if isinstance(answer, DnsLookupError):
            self.stats.failures[answer.status] += 1
        if ttl > 0:
            if len(self._cache) >= MAX_CACHED_NAMES:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[key] = (time.monotonic() + ttl, answer)
        return answer

    async def close(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        await self._resolver.close()


def _one_line_reason(exc: BaseException) -> str:
    text = " ".join(str(exc.args[1] if len(exc.args) > 1 else exc).split())
    return text[:200] or type(exc).__name__
