"""Fetching image URLs with aiohttp: DNS, limits, timeouts, redirects, retries, opt-outs and the address guard."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import aiohttp
from aiohttp.helpers import is_ip_address
from yarl import URL

from cah_resources.contract import DownloadStatus, OptOutSignal, ShardStats, http_status_failure
from cah_resources.errors import one_line
from cah_resources.image_shards.address_policy import AddressPolicy, BlockedAddressError, GuardedResolver
from cah_resources.image_shards.body_reader import REQUEST_OPTIONS, body_budget, read_body
from cah_resources.image_shards.dns import CachingResolver, DnsLookupError, parse_nameserver, pin_answer, pinned_answer
from cah_resources.image_shards.opt_outs import SITE_FILE_MAX_BYTES, OptOuts, tdm_header_reserved
from cah_resources.retries import image_fetch

DEFAULT_USER_AGENT = "cah-image-downloader/0.1 (Crawling@Home dataset builder; honours X-Robots-Tag noai/noimageai)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPT = "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"


@dataclass(frozen=True)
class FetchSettings:
    """How the downloader behaves on the network; defaults suit one machine crawling the web."""

    concurrency: int = 256
    """URLs in flight at once per shard task (img2dataset's thread_count)."""
    per_host_connections: int = 16
    """Open connections to one host at once, per shard task."""
    connect_timeout: float = 10.0
    """Seconds to open a connection to an image host."""
    read_timeout: float = 20.0
    """Seconds a response may go without sending a byte."""
    total_timeout: float = 60.0
    """Seconds one request may take in all, redirects and body included."""
    max_body_bytes: int = 20_000_000
    """A body past this many bytes ends as too_large, read no further."""
    max_redirects: int = 5
    """Redirects followed per URL; past them the URL ends as too_many_redirects."""
    retries: int = 2
    """More tries of a URL after a transient outcome (a broken connection, 429, 5xx)."""
    retry_backoff: float = 0.5
    """Seconds before the first retry, doubled (with jitter) for each next one, unless the host sent Retry-After."""
    max_retry_after: float = 30.0
    """A Retry-After longer than this many seconds is not waited for: the URL ends with its 429 or 5xx."""
    unresponsive_after_timeouts: int = 4
    """A host (name and port) whose URLs timed out this many times is a tarpit or down: its remaining
    URLs end at once as host_unresponsive instead of each waiting out its own timeout. 0: never."""
    user_agent: str = DEFAULT_USER_AGENT
    """The User-Agent header of every request."""
    user_agent_token: str = "cah"
    """The crawler's name in robots.txt and X-Robots-Tag rules (the rules for this token, else for *)."""
    honour_robots_noai: bool = True
    """Drop an image whose response's X-Robots-Tag holds one of disallowed_robots_directives (robots_noai)."""
    disallowed_robots_directives: tuple[str, ...] = ("noai", "noimageai")
    """X-Robots-Tag directives that keep an image out."""
    honour_robots_txt: bool = True
    """Ask each image host's robots.txt (RFC 9309) once per task and keep out what it disallows; an
    unreachable robots.txt (5xx, 429, no answer) disallows its host for robots_unreachable_seconds."""
    honour_tdmrep: bool = True
    """Keep out images whose host reserves text-and-data mining (TDMRep: the tdm-reservation header,
    /.well-known/tdmrep.json), asked once per host per task."""
    robots_max_bytes: int = SITE_FILE_MAX_BYTES
    """Bytes of a robots.txt or tdmrep.json read; the rest of a longer file is not."""
    robots_unreachable_seconds: float = 600.0
    """Seconds a host whose robots.txt was unreachable stays disallowed before it is asked again."""
    allowed_networks: tuple[str, ...] = ()
    """Networks (CIDR) allowed even when block_private_addresses refuses their kind, e.g. a test web."""
    block_private_addresses: bool = True
    """Refuse URLs whose host resolves to a loopback, private, link-local or other non-public address."""
    verify_tls: bool = True
    """Check image hosts' TLS certificates."""
    nameservers: tuple[str, ...] = ()
    """DNS servers ("ip" or "ip:port") to ask instead of the system's, e.g. a local caching resolver."""
    dns_concurrency: int = 256
    """Lookups in flight at once per shard task, a limit separate from the connection slots."""
    dns_timeout: float = 5.0
    """Seconds a lookup may take, spent before the URL's request and its own timeouts start."""
    dns_min_ttl: float = 60.0
    """Seconds an answer is kept at least, whatever its TTL."""
    dns_max_ttl: float = 3600.0
    """Seconds an answer is kept at most, whatever its TTL."""
    dns_negative_ttl: float = 300.0
    """Seconds a name that does not resolve is remembered as such."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host_connections < 1 or self.dns_concurrency < 1:
            raise ValueError("concurrency, per_host_connections and dns_concurrency must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout", "dns_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {getattr(self, name)}")
        if not 0 <= self.dns_min_ttl <= self.dns_max_ttl:
            raise ValueError(
                f"dns_min_ttl..dns_max_ttl must be a range of seconds, not {self.dns_min_ttl}..{self.dns_max_ttl}"
            )
        for server in self.nameservers:
            parse_nameserver(server)


@dataclass(frozen=True)
class Fetched:
    """One URL's network outcome: ``body`` is set exactly when status is 'fetched'."""

    status: str
    body: bytes | None = None
    http_status: int | None = None
    error_message: str | None = None
    final_url: str | None = None
    transient: bool = False
    retry_after: float | None = None


def robots_disallow(header_values: list[str], token: str, directives: tuple[str, ...]) -> str | None:
    """The X-Robots-Tag value forbidding our use, as img2dataset reads it, or None.

    A value is ``[user-agent:] directive, directive``; unprefixed values address every crawler.
    """
    for value in header_values:
        agent, sep, rest = value.partition(":")
        if sep and agent.strip() and " " not in agent.strip():
            target, scoped = agent.strip().lower(), rest
        else:
            target, scoped = None, value
        words = {word.strip().lower() for word in scoped.split(",")}
        if (target is None or target == token.lower()) and words & set(directives):
            return value.strip()
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        chain.append(link)
        link = getattr(link, "os_error", None) or link.__cause__ or link.__context__
    return chain


def classify_exception(exc: BaseException, url: str) -> Fetched:
    """Map a client-side exception to a status; transient ones are worth a retry."""
    chain = _cause_chain(exc)
    blocked = next((e for e in chain if isinstance(e, BlockedAddressError)), None)
    if blocked is not None:
        return Fetched(DownloadStatus.BLOCKED_ADDRESS, error_message=str(blocked), final_url=url)
    unresolved = next((e for e in chain if isinstance(e, DnsLookupError)), None)
    if unresolved is not None:
        # A timeout may pass on a second try (fetch allows one); NXDOMAIN, SERVFAIL and the like are answers.
        return Fetched(
            unresolved.status,
            error_message=str(unresolved),
            final_url=url,
            transient=unresolved.status == DownloadStatus.DNS_TIMEOUT,
        )
    if isinstance(exc, TimeoutError):
        return Fetched(DownloadStatus.TIMEOUT, error_message=one_line(exc), final_url=url)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, UnicodeError)):
        return Fetched(DownloadStatus.INVALID_URL, error_message=one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Fetched(DownloadStatus.DNS_ERROR, error_message=one_line(exc), final_url=url)
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)):
        return Fetched(DownloadStatus.TLS_ERROR, error_message=one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Fetched(DownloadStatus.CONNECTION_ERROR, error_message=one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Fetched(DownloadStatus.TRUNCATED, error_message=one_line(exc), final_url=url, transient=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return Fetched(DownloadStatus.CONNECTION_ERROR, error_message=one_line(exc), final_url=url, transient=True)
    if isinstance(exc, aiohttp.ClientResponseError):
        # A response that does not parse; aiohttp has closed its connection. On a reused connection
        # it is often the tail of the previous response, sent past its Content-Length: a retry goes
        # out on a fresh connection and gets the URL's own answer.
        return Fetched(DownloadStatus.BAD_RESPONSE, error_message=one_line(exc), final_url=url, transient=True)
    return Fetched(DownloadStatus.ERROR, error_message=one_line(exc), final_url=url)


class _Slots:
    """At most ``total`` requests in flight, and ``per_host`` per host; idle hosts are forgotten.

    A request waits for its host first, so URLs queued behind a busy host do not sit on global
    slots that URLs of idle hosts could use. Plain acquire/release: this runs per attempt.
    """

    def __init__(self, total: int, per_host: int) -> None:
        self.per_host = per_host
        self._total = asyncio.Semaphore(total)
        self._hosts: dict[str, list] = {}  # host -> [semaphore, requests holding or waiting]

    async def acquire(self, host: str) -> None:
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = [asyncio.Semaphore(self.per_host), 0]
        entry[1] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._forget(host, entry)
            raise
        try:
            await self._total.acquire()
        except BaseException:
            entry[0].release()
            self._forget(host, entry)
            raise

    def release(self, host: str) -> None:
        entry = self._hosts[host]
        self._total.release()
        entry[0].release()
        self._forget(host, entry)

    def _forget(self, host: str, entry: list) -> None:
        entry[1] -= 1
        if entry[1] == 0:
            del self._hosts[host]


@contextmanager
def _paused(deadline: asyncio.Timeout | None) -> Iterator[None]:
    """Stop a request's deadline for the block (a lookup, a wait for a host's rules), then give back what was left."""
    when = deadline.when() if deadline is not None else None
    if deadline is None or when is None:
        yield
        return
    loop = asyncio.get_running_loop()
    left = when - loop.time()
    deadline.reschedule(None)
    try:
        yield
    finally:
        deadline.reschedule(loop.time() + left)


class Downloader:
    """One aiohttp session shared by every URL of a shard: ``async with Downloader(s) as d``."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self.policy = AddressPolicy.from_strings(settings.allowed_networks, settings.block_private_addresses)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: Counter[str] = Counter()  # host:port -> URLs of it that timed out
        self.unresponsive_hosts: set[str] = set()

    async def __aenter__(self) -> Downloader:
        s = self.settings
        self.dns = CachingResolver(
            s.nameservers, s.dns_concurrency, s.dns_timeout, s.dns_min_ttl, s.dns_max_ttl, s.dns_negative_ttl
        )
        self._resolver = GuardedResolver(self.policy, self.dns)
        checks = s.honour_robots_txt or s.honour_tdmrep
        connector = aiohttp.TCPConnector(
            # Images and site files have their own limits (below); the connector's hold both.
            limit=s.concurrency * (2 if checks else 1),
            limit_per_host=s.per_host_connections + (1 if checks else 0),
            use_dns_cache=False,  # CachingResolver caches, with TTLs and negative answers
            resolver=self._resolver,
            ssl=bool(s.verify_tls),  # True: aiohttp's default verification
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
            headers={"User-Agent": s.user_agent, "Accept": ACCEPT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._slots = _Slots(s.concurrency, s.per_host_connections)
        self.opt_outs = None
        if checks:
            # Site files share the images' connections (the image then reuses its host's robots.txt
            # connection) but not their slots: a redirect waiting for its target's rules holds an
            # image slot, and the site files must not wait for it.
            self._site_slots = asyncio.Semaphore(s.concurrency)
            self.opt_outs = OptOuts(
                self.fetch_site_file,
                s.user_agent_token,
                s.honour_robots_txt,
                s.honour_tdmrep,
                s.robots_unreachable_seconds,
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            # aiohttp closes only a resolver it made. Left open, c-ares queries still waiting on a
            # silent nameserver answer when the channel is collected, after the loop has closed:
            # one "Exception ignored ... Event loop is closed" traceback each. Cancelled here, their
            # callbacks run on this loop while it still runs.
            await self._resolver.close()
            await asyncio.sleep(0)
        self.opt_outs = None

    def dns_totals(self) -> ShardStats:
        """What this downloader's lookups cost so far (see DnsStats)."""
        return self.dns.stats.as_totals()

    def opt_out_totals(self) -> ShardStats:
        """Site files requested so far (robots.txt, tdmrep.json) and the opt-out signals honoured."""
        s = self.settings
        honoured = [
            name
            for name, on in (
                (OptOutSignal.ROBOTS_NOAI, s.honour_robots_noai),
                (OptOutSignal.ROBOTS_TXT, s.honour_robots_txt),
                (OptOutSignal.TDMREP, s.honour_tdmrep),
            )
            if on
        ]
        totals = self.opt_outs.totals() if self.opt_outs is not None else ShardStats()
        totals.opt_out_signals = [str(name) for name in honoured]
        return totals

    async def fetch_site_file(self, url: URL) -> tuple[str, int | None, bytes | None]:
        """One attempt at a host's own file (robots.txt, tdmrep.json): (status, HTTP status, first bytes).

        Redirects are followed and the address guard applies as for images; the body is cut at
        ``robots_max_bytes``. Not retried: a host is asked once per task.
        """
        pin_answer(None)  # this task's own lookups, not the image's that started it
        body_budget.set(None)  # nor its memory claim
        s = self.settings
        try:
            await self._lookup(url.raw_host or "", url.port or 0)
            async with self._site_slots, asyncio.timeout(s.total_timeout) as deadline:  # timers start with the request
                result = await self._follow_redirects(url, deadline, site_file=True)
        except Exception as exc:
            result = classify_exception(exc, str(url))
        return result.status, result.http_status, result.body

    async def fetch(self, url: str) -> Fetched:
        """Download one URL's body, retrying transient failures; never raises.

        The host is looked up first, under the lookup limit and the DNS timeout only. Then each
        attempt holds a slot of the URL's host and a global one (redirect hops are capped by the
        connector), and only then do its timeouts start: a URL waiting in a queue never times out.
        The wait between attempts holds no slot, so a URL backing off does not keep others from
        starting. A DNS timeout is retried once at most; other DNS failures are answers, not retried.
        Whatever a site sends (robots.txt, tdmrep.json, headers, bodies), a failure is a status.
        """
        try:
            return await self._fetch(url)
        except Exception as exc:  # a bug a hostile site found: that URL's status, not the shard's end
            return classify_exception(exc, url)

    async def _fetch(self, url: str) -> Fetched:
        s = self.settings
        try:
            parsed = URL(url)
            # raw_host: the ASCII (IDNA) name aiohttp dials. ``.host`` decodes it back to Unicode with
            # the pure-Python idna package, ~0.1 ms per new name: a third of a URL's CPU on the real web.
            host = parsed.raw_host or ""
        except (ValueError, TypeError):
            parsed, host = None, ""
        dns_timeouts, judged = 0, False

        async def attempt() -> Fetched:
            nonlocal dns_timeouts, judged
            pin_answer(None)  # each attempt looks up afresh (from the cache while its TTL lasts)
            try:
                if parsed is not None and parsed.scheme in ("http", "https") and parsed.raw_host:
                    await self._lookup(parsed.raw_host, parsed.port or 0)
            except Exception as exc:
                result = classify_exception(exc, url)
            else:
                if not judged and self.opt_outs is not None:
                    judged = True
                    # before any slot: it may wait for robots.txt
                    refusal = await self.opt_outs.refusal(parsed) if parsed is not None else None
                    if refusal is not None:
                        return Fetched(refusal.status, error_message=refusal.message, final_url=url)
                site = f"{host}:{parsed.port if parsed is not None else ''}"
                if site in self.unresponsive_hosts:
                    return self._unresponsive(url, site)
                result = await self._attempt(url, host, site)
            if result.status == DownloadStatus.DNS_TIMEOUT:
                dns_timeouts += 1
                result = replace(result, transient=dns_timeouts < 2)
            return result

        # Most URLs end in their first attempt, before any retry policy matters: it runs outside
        # tenacity, whose per-call machinery (~40 us) cost as much as the URL's DNS cache hit and
        # address checks together. A transient outcome hands over to the policy as its first attempt.
        first = await attempt()
        if not first.transient or s.retries == 0:
            return first
        handed_over = [first]

        async def again() -> Fetched:
            return handed_over.pop() if handed_over else await attempt()

        return await image_fetch(s.retries, s.retry_backoff)(again)

    async def _attempt(self, url: str, host: str, site: str) -> Fetched:
        s = self.settings
        await self._slots.acquire(host)
        try:
            if site in self.unresponsive_hosts:  # found out while this URL waited for a slot
                return self._unresponsive(url, site)
            async with asyncio.timeout(s.total_timeout) as deadline:
                return await self._follow_redirects(url, deadline)
        except Exception as exc:
            result = classify_exception(exc, url)
            if isinstance(exc, TimeoutError) and not str(exc):
                result = replace(result, error_message=f"no complete answer within {s.total_timeout:g} s")
            if result.status == DownloadStatus.TIMEOUT and s.unresponsive_after_timeouts:
                self._timeouts[site] += 1
                if self._timeouts[site] >= s.unresponsive_after_timeouts:
                    self.unresponsive_hosts.add(site)
            return result
        finally:
            self._slots.release(host)

    def _unresponsive(self, url: str, site: str) -> Fetched:
        message = f"{site} timed out on {self._timeouts[site]} URLs: its others are not tried"
        return Fetched(DownloadStatus.HOST_UNRESPONSIVE, error_message=message, final_url=url)

    async def _lookup(self, host: str, port: int, deadline: asyncio.Timeout | None = None) -> None:
        """Resolve (and judge) a host before connecting to it; the request's deadline stands still meanwhile.

        IP literals are judged here (aiohttp dials them without asking the resolver); a name's
        answers are judged by the GuardedResolver and held for the connector, which asks again.
        """
        self.policy.check_literal_host(host)
        if is_ip_address(host.strip("[]")) or pinned_answer(host, port) is not None:
            return  # a literal, or the name this attempt has just looked up
        with _paused(deadline):
            answers = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        pin_answer(host, port, answers)

    async def _follow_redirects(
        self, url: str | URL, deadline: asyncio.Timeout | None = None, site_file: bool = False
    ) -> Fetched:
        s = self.settings
        assert self._session is not None, "use Downloader inside 'async with'"
        try:
            current = URL(url)
        except (ValueError, TypeError) as exc:
            return Fetched(DownloadStatus.INVALID_URL, error_message=one_line(exc), final_url=str(url))
        visited: set[str] = set()
        for _hop in range(s.max_redirects + 1):
            if current.scheme not in ("http", "https") or not current.raw_host:
                return Fetched(
                    DownloadStatus.INVALID_URL,
                    error_message=f"not an http(s) URL: {str(current)[:200]}",
                    final_url=str(url),
                )
            if visited and not site_file and self.opt_outs is not None:
                refusal = await self._hop_refusal(self.opt_outs, current, deadline)  # the target host's rules too
                if refusal is not None:
                    return refusal
            await self._lookup(current.raw_host, current.port or 0, deadline)  # the name aiohttp dials (IDNA)
            visited.add(str(current))
            async with self._session.get(current, allow_redirects=False, **REQUEST_OPTIONS) as response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        return Fetched(
                            http_status_failure(response.status),
                            http_status=response.status,
                            error_message="redirect without a Location header",
                            final_url=str(current),
                        )
                    try:
                        current = current.join(URL(location))
                    except (ValueError, TypeError) as exc:
                        return Fetched(
                            DownloadStatus.INVALID_URL,
                            http_status=response.status,
                            final_url=str(current),
                            error_message=f"redirect to an unusable Location: {one_line(exc)}",
                        )
                    if str(current) in visited:
                        return Fetched(
                            DownloadStatus.REDIRECT_LOOP,
                            http_status=response.status,
                            error_message=f"redirects back to {str(current)[:200]}",
                            final_url=str(current),
                        )
                    continue
                return await self._read(response, str(current), site_file)
        return Fetched(
            DownloadStatus.TOO_MANY_REDIRECTS,
            error_message=f"more than {s.max_redirects} redirects",
            final_url=str(current),
        )

    @staticmethod
    async def _hop_refusal(opt_outs: OptOuts, url: URL, deadline: asyncio.Timeout | None) -> Fetched | None:
        """The opt-out refusal of a redirect's target; the request's deadline stands still meanwhile."""
        with _paused(deadline):
            refusal = await opt_outs.refusal(url)
        if refusal is None:
            return None
        return Fetched(refusal.status, error_message=refusal.message, final_url=str(url))

    async def _read(self, response: aiohttp.ClientResponse, url: str, site_file: bool = False) -> Fetched:
        s = self.settings
        code = response.status
        if site_file:  # read whatever the answer (capped): a connection read to its end is reused
            body = await read_body(response, s.robots_max_bytes, head_only=True)
            status = body.status if 200 <= code < 300 else http_status_failure(code)
            return Fetched(status, body=body.data, http_status=code, error_message=body.message, final_url=url)
        if code == 429 or code >= 500:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            too_long = wait is not None and wait > s.max_retry_after
            message = f"HTTP {code} {response.reason or ''}".strip()
            if too_long:
                message += f"; Retry-After {wait:g} s is over the {s.max_retry_after:g} s limit"
            return Fetched(
                http_status_failure(code),
                http_status=code,
                error_message=message,
                final_url=url,
                transient=not too_long,
                retry_after=wait,
            )
        if not 200 <= code < 300:
            return Fetched(
                http_status_failure(code),
                http_status=code,
                error_message=f"HTTP {code} {response.reason or ''}".strip(),
                final_url=url,
            )
        if s.honour_robots_noai:
            refusal = robots_disallow(
                response.headers.getall("X-Robots-Tag", []), s.user_agent_token, s.disallowed_robots_directives
            )
            if refusal is not None:
                return Fetched(
                    DownloadStatus.ROBOTS_NOAI,
                    http_status=code,
                    error_message=f"X-Robots-Tag: {refusal}"[:300],
                    final_url=url,
                )
        if s.honour_tdmrep and tdm_header_reserved(response.headers.getall("tdm-reservation", [])):
            # The body is never read, so its bytes are never held, let alone written.
            policy = response.headers.get("tdm-policy")
            message = "tdm-reservation: 1" + (f", tdm-policy: {policy}" if policy else "")
            return Fetched(DownloadStatus.TDM_RESERVED, http_status=code, error_message=message[:300], final_url=url)
        body = await read_body(response, s.max_body_bytes)
        return Fetched(body.status, body=body.data, http_status=code, error_message=body.message, final_url=url)
