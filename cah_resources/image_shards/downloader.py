"""Fetching image URLs with aiohttp: limits, timeouts, redirects, retries, robots and the address guard."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, replace

import aiohttp
from yarl import URL

from cah_resources.image_shards.address_policy import AddressPolicy, BlockedAddressError, GuardedResolver
from cah_resources.image_shards.body_reader import REQUEST_OPTIONS, read_body

DEFAULT_USER_AGENT = (
    "cah-image-downloader/0.1 (Crawling@Home dataset builder; honours X-Robots-Tag noai/noimageai)"
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPT = "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"


@dataclass(frozen=True)
class FetchSettings:
    """How the downloader behaves on the network; defaults suit one machine crawling the web."""

    concurrency: int = 256
    per_host_connections: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    max_body_bytes: int = 20_000_000
    max_redirects: int = 5
    retries: int = 2
    retry_backoff: float = 0.5
    max_retry_after: float = 30.0
    user_agent: str = DEFAULT_USER_AGENT
    user_agent_token: str = "cah"
    honour_robots_noai: bool = True
    disallowed_robots_directives: tuple[str, ...] = ("noai", "noimageai")
    allowed_networks: tuple[str, ...] = ()
    block_private_addresses: bool = True
    verify_tls: bool = True
    dns_cache_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host_connections < 1:
            raise ValueError("concurrency and per_host_connections must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {getattr(self, name)}")


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
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__
    return chain


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


def classify_exception(exc: BaseException, url: str) -> Fetched:
    """Map a client-side exception to a status; transient ones are worth a retry."""
    chain = _cause_chain(exc)
    blocked = next((e for e in chain if isinstance(e, BlockedAddressError)), None)
    if blocked is not None:
        return Fetched("blocked_address", error_message=str(blocked), final_url=url)
    if isinstance(exc, TimeoutError):
        return Fetched("timeout", error_message=_one_line(exc), final_url=url)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, UnicodeError)):
        return Fetched("invalid_url", error_message=_one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Fetched("dns_error", error_message=_one_line(exc), final_url=url)
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)):
        return Fetched("tls_error", error_message=_one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Fetched("connection_error", error_message=_one_line(exc), final_url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Fetched("truncated", error_message=_one_line(exc), final_url=url, transient=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return Fetched("connection_error", error_message=_one_line(exc), final_url=url, transient=True)
    if isinstance(exc, aiohttp.ClientResponseError):
        # A response that does not parse; aiohttp has closed its connection. On a reused connection
        # it is often the tail of the previous response, sent past its Content-Length: a retry goes
        # out on a fresh connection and gets the URL's own answer.
        return Fetched("bad_response", error_message=_one_line(exc), final_url=url, transient=True)
    return Fetched("error", error_message=_one_line(exc), final_url=url)


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


class Downloader:
    """One aiohttp session shared by every URL of a shard: ``async with Downloader(s) as d``."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self.policy = AddressPolicy.from_strings(settings.allowed_networks, settings.block_private_addresses)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Downloader:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency,
            limit_per_host=s.per_host_connections,
            use_dns_cache=True,
            ttl_dns_cache=s.dns_cache_seconds,
            resolver=GuardedResolver(self.policy),
            ssl=None if s.verify_tls else False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
            headers={"User-Agent": s.user_agent, "Accept": ACCEPT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._slots = _Slots(s.concurrency, s.per_host_connections)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> Fetched:
        """Download one URL's body, retrying transient failures; never raises.

        Each attempt holds a slot of the URL's host and a global one (redirect hops are capped by
        the connector); the wait between attempts holds neither, so a URL backing off does not
        keep other URLs from starting.
        """
        s = self.settings
        try:
            host = URL(url).host or ""
        except (ValueError, TypeError):
            host = ""
        for attempt in range(s.retries + 1):
            await self._slots.acquire(host)
            try:
                async with asyncio.timeout(s.total_timeout):
                    result = await self._follow_redirects(url)
            except Exception as exc:
                result = classify_exception(exc, url)
                if isinstance(exc, TimeoutError) and not str(exc):
                    result = replace(result, error_message=f"no complete answer within {s.total_timeout:g} s")
            finally:
                self._slots.release(host)
            if not result.transient or attempt == s.retries:
                return result
            delay = result.retry_after
            if delay is None:
                delay = s.retry_backoff * 2**attempt * random.uniform(0.5, 1.5)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns")

    async def _follow_redirects(self, url: str) -> Fetched:
        s = self.settings
        assert self._session is not None, "use Downloader inside 'async with'"
        try:
            current = URL(url)
        except (ValueError, TypeError) as exc:
            return Fetched("invalid_url", error_message=_one_line(exc), final_url=url)
        visited: set[str] = set()
        for _hop in range(s.max_redirects + 1):
            if current.scheme not in ("http", "https") or not current.host:
                return Fetched("invalid_url", error_message=f"not an http(s) URL: {str(current)[:200]}", final_url=url)
            self.policy.check_literal_host(current.host)
            visited.add(str(current))
            async with self._session.get(current, allow_redirects=False, **REQUEST_OPTIONS) as response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        return Fetched(
                            f"http_{response.status}", http_status=response.status,
                            error_message="redirect without a Location header", final_url=str(current),
                        )
                    try:
                        current = current.join(URL(location))
                    except (ValueError, TypeError) as exc:
                        return Fetched("invalid_url", http_status=response.status, final_url=str(current),
                                       error_message=f"redirect to an unusable Location: {_one_line(exc)}")
                    if str(current) in visited:
                        return Fetched("redirect_loop", http_status=response.status,
                                       error_message=f"redirects back to {str(current)[:200]}", final_url=str(current))
                    continue
                return await self._read(response, str(current))
        return Fetched("too_many_redirects", error_message=f"more than {s.max_redirects} redirects", final_url=str(current))

    async def _read(self, response: aiohttp.ClientResponse, url: str) -> Fetched:
        s = self.settings
        code = response.status
        if code == 429 or code >= 500:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            too_long = wait is not None and wait > s.max_retry_after
            message = f"HTTP {code} {response.reason or ''}".strip()
            if too_long:
                message += f"; Retry-After {wait:g} s is over the {s.max_retry_after:g} s limit"
            return Fetched(f"http_{code}", http_status=code, error_message=message, final_url=url,
                           transient=not too_long, retry_after=wait)
        if not 200 <= code < 300:
            return Fetched(f"http_{code}", http_status=code, error_message=f"HTTP {code} {response.reason or ''}".strip(),
                           final_url=url)
        if s.honour_robots_noai:
            refusal = robots_disallow(response.headers.getall("X-Robots-Tag", []), s.user_agent_token,
                                      s.disallowed_robots_directives)
            if refusal is not None:
                return Fetched("robots_noai", http_status=code, error_message=f"X-Robots-Tag: {refusal}"[:300], final_url=url)
        body = await read_body(response, s.max_body_bytes)
        return Fetched(body.status, body=body.data, http_status=code, error_message=body.message, final_url=url)
