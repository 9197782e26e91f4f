"""Which network addresses the image downloader may connect to, judged after DNS resolution."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6-only networks reach IPv4 hosts through NAT64 (RFC 6052); those addresses carry a public
# IPv4 address in their last 32 bits and must be judged by it, not refused as "reserved".
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
# A DNS name as resolvers take it: letters, digits and hyphens (underscores too, which real
# hostnames carry and no address parser reads as a number), at most 63 per label and 253 in all.
# The last label starts with a letter, as every top-level domain does: a name ending in a number
# ("127.1", "0x7f.1", "2130706433") is an IPv4 address to inet_aton and to some URL parsers.
_DNS_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"(?:{_DNS_LABEL}\.)*[a-z](?:[a-z0-9_-]{{0,61}}[a-z0-9_])?\.?", re.IGNORECASE)
NOT_CANONICAL = "not a canonical host name or IP address"


class BlockedAddressError(ConnectionRefusedError):
    """A URL's host is, or resolves only to, addresses the policy refuses; nothing was connected."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to blocked address {address} ({reason})")
        self.host = host
        self.address = address
        self.reason = reason


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["127.0.0.0/8", "::1"]`` -> networks; a bad entry raises a one-line ValueError."""
    parsed = []
    for text in networks:
        try:
            parsed.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"allowed network {text!r} is not an IP network: {exc}") from None
    return tuple(parsed)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(address: str | IPAddress) -> str | None:
    """Why a public web crawler must not connect to ``address``, or None when it may."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return blocked_reason(embedded)
    for reason in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Refuse non-public addresses (``block_private``) except those inside ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()
    block_private: bool = True

    @classmethod
    def from_strings(cls, allowed: Iterable[str] = (), block_private: bool = True) -> AddressPolicy:
        return cls(parse_networks(allowed), block_private)

    def refusal(self, address: str) -> str | None:
        """The reason ``address`` is refused, or None when a connection to it is allowed."""
        return _address_refusal(self, address)

    def check_literal_host(self, host: str) -> None:
        """Raise BlockedAddressError when ``host`` is an IP literal the policy refuses, or no
        canonical host at all.

        aiohttp hands IP literals straight to ``connect`` without asking the resolver, so they
        must be judged here, for the first URL and for every redirect target. A host that is
        neither a DNS name nor a canonical IP literal (``0177.0.0.1``, ``2130706433``) is refused
        whatever the HTTP library would make of it: some read such forms as addresses.
        """
        reason = _literal_refusal(self, host)
        if reason is not None:
            raise BlockedAddressError(host, host.strip("[]"), reason)


@functools.lru_cache(maxsize=65_536)
def _address_refusal(policy: AddressPolicy, address: str) -> str | None:
    # Every answer is judged twice per URL (the downloader's lookup, then aiohttp's); parsing it
    # each time cost ~40 us a URL. Hosts of the real web share a far smaller set of addresses (CDNs).
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if embedded is not None:
        candidates.append(embedded)
    if any(c.version == net.version and c in net for c in candidates for net in policy.allowed):
        return None
    if not policy.block_private:
        return None
    return blocked_reason(ip)


@functools.lru_cache(maxsize=65_536)
def _literal_refusal(policy: AddressPolicy, host: str) -> str | None:
    # Every hop of every URL asks; a shard meets the same few thousand hosts again and again.
    bare = host.strip("[]")
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare.split("%", 1)[0])
        except ValueError:
            return NOT_CANONICAL
        return policy.refusal(bare)
    try:
        ipaddress.IPv4Address(bare)  # dotted decimal only: no octal, hex, short or integer forms
    except ValueError:
        pass
    else:
        return policy.refusal(bare)
    if not bare.isascii():
        try:  # an internationalized name is dialled as its punycode form; judge that one
            bare = URL.build(scheme="http", host=bare).raw_host or ""
        except (ValueError, UnicodeError):
            return NOT_CANONICAL
    if len(bare) > 254 or not _DNS_NAME.fullmatch(bare):
        return NOT_CANONICAL
    return None  # a name: the resolver judges what it resolves to


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops refused addresses from every answer, so they are never dialled.

    When every address of a name is refused it raises BlockedAddressError. The inner resolver
    (the downloader's CachingResolver) caches raw answers, so every call, for the first URL and
    each redirect hop, is judged here again.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if self.policy.refusal(a["host"]) is None]
        if not allowed and answers:
            first = answers[0]["host"]
            raise BlockedAddressError(host, first, self.policy.refusal(first) or "refused")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
