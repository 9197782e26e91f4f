"""A DNS server on loopback (UDP and TCP, built on dnslib) for the local web's hostnames and every DNS fault.

Names are answered by their last labels, so a URL list can give every URL a hostname of its own
without registering any: ``<anything>.h<i>.web.test`` is the local web's i-th host address, and
``<anything>.<mode>.web.test`` fails the way ``mode`` says (``FAILURE_MODES``). Every query is
counted per name, so tests see how many lookups the downloader issued. ``latency`` delays each
answer by a (min, max) seconds range drawn per query, like an uncached recursive lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import socket
import struct
import sys
from collections import Counter

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from cah_resources.samples.loop_thread import LoopThread

ZONE = "web.test"
# mode -> what the server does for a name under <mode>.web.test
FAILURE_MODES = {
    "nxdomain": "answers NXDOMAIN (the name does not exist)",
    "servfail": "answers SERVFAIL (the resolver could not get an answer)",
    "noanswer": "answers NOERROR with no address (the name exists without A/AAAA records)",
    "silent": "never answers (a lookup times out)",
    "lossy": "drops the first query of each name and type (a lost packet), then answers as h0",
    "private": "answers 10.0.0.1, a private address a public crawler must refuse",
}
PRIVATE_ANSWER = "10.0.0.1"
SOCKET_BUFFER_BYTES = 4 * 2**20


class LocalDns:
    """Serve DNS from a background thread: ``with LocalDns(web.addresses) as dns: dns.nameserver``.

    ``addresses[i]`` answers ``*.h<i>.web.test``. ``extra_listen`` adds (address, port) pairs the
    server also answers on, e.g. ("127.0.0.53", 53) for programs that read /etc/resolv.conf.
    """

    def __init__(
        self,
        addresses: list[str] | tuple[str, ...] = (),
        latency: tuple[float, float] = (0.0, 0.0),
        ttl: int = 300,
        host: str = "127.0.0.1",
        extra_listen: tuple[tuple[str, int], ...] = (),
        seed: int = 0,
        fast_loop: bool = False,
    ) -> None:
        self.addresses = list(addresses)
        self.fast_loop = fast_loop  # uvloop (LoopThread's fast): for a server in a process of its own
        self.latency = latency
        self.ttl = ttl
        self.host = host
        self.extra_listen = extra_listen
        self.seed = seed
        self.port = 0
        self.queries: Counter[str] = Counter()  # per (lower-case) name, every type and transport
        self.tcp_queries = 0
        self.peak_pending = 0  # most queries waiting for their answer at once
        self.peak_pending_names = 0  # most distinct names with a query waiting at once
        self._pending = 0
        self._pending_names: Counter[bytes] = Counter()
        self._dropped: set[tuple[str, int]] = set()
        self._loop_thread: LoopThread | None = None
        self._closers: list = []

    @property
    def nameserver(self) -> str:
        """``ip:port`` of the server, as FetchSettings.nameservers takes it."""
        return f"{self.host}:{self.port}"

    def name(self, host_index: int, label: str) -> str:
        """A hostname of its own that resolves to the local web's host ``host_index``."""
        return f"{label}.h{host_index}.{ZONE}"

    def failing_name(self, mode: str, label: str = "x") -> str:
        if mode not in FAILURE_MODES:
            raise KeyError(f"unknown DNS failure mode {mode!r}; choose from {', '.join(FAILURE_MODES)}")
        return f"{label}.{mode}.{ZONE}"

    def reset_counters(self) -> None:
        self.queries.clear()
        self.tcp_queries = 0
        self.peak_pending = 0
        self.peak_pending_names = 0

    # ---- answering -----------------------------------------------------------------------

    def _delay(self, name: str, count: int) -> float:
        low, high = self.latency
        if high <= 0:
            return 0.0
        digest = hashlib.blake2b(f"{self.seed}:{name}:{count}".encode(), digest_size=8).digest()
        return low + (high - low) * int.from_bytes(digest, "big") / 2**64

    def answer(self, packet: bytes) -> tuple[bytes | None, float]:  # noqa: C901 - a fake server's table of query kinds
        """The reply to one query packet (None: stay silent) and how long to wait before sending it."""
        fast = self._answer_address(packet)
        if fast is not None:
            return fast
        try:
            request = DNSRecord.parse(packet)
        except Exception:
            return None, 0.0
        reply = request.reply()
        if not request.questions:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack(), 0.0
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        self.queries[name] += 1
        delay = self._delay(name, self.queries[name])
        labels = name.split(".")
        if not name.endswith("." + ZONE) or len(labels) < 3:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack(), delay
        zone_label = labels[-3]
        if zone_label == "silent":
            return None, 0.0
        if zone_label == "lossy":
            if (name, question.qtype) not in self._dropped:
                self._dropped.add((name, question.qtype))
                return None, 0.0
            zone_label = "h0"
        if zone_label == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack(), delay
        if zone_label == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack(), delay
        if zone_label == "noanswer":
            return reply.pack(), delay
        if zone_label == "private":
            address = PRIVATE_ANSWER
        elif zone_label.startswith("h") and zone_label[1:].isdigit() and int(zone_label[1:]) < len(self.addresses):
            address = self.addresses[int(zone_label[1:])]
        else:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack(), delay
        version = ipaddress.ip_address(address).version
        if question.qtype == QTYPE.A and version == 4:
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif question.qtype == QTYPE.AAAA and version == 6:
            reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=self.ttl))
        return reply.pack(), delay

    def _answer_address(self, packet: bytes) -> tuple[bytes, float] | None:
        """A/AAAA of a ``*.h<i>`` name, by hand: dnslib takes ~0.2 ms a query, which on a busy machine
        made this server, not the client under test, the bottleneck of a flood of lookups. Anything
        else (failure modes, malformed or multi-question packets) returns None for ``answer``."""
        if len(packet) < 17 or packet[4:6] != b"\x00\x01" or packet[2] & 0x78:  # one question, a plain query
            return None
        labels, at = [], 12
        while at < len(packet) and packet[at]:
            length = packet[at]
            if length > 63:
                return None
            labels.append(packet[at + 1 : at + 1 + length])
            at += 1 + length
        if at + 5 > len(packet) or len(labels) < 3:
            return None
        qtype, qclass = struct.unpack(">HH", packet[at + 1 : at + 5])
        name = b".".join(labels).decode("ascii", "replace").lower()
        zone_label = name.split(".")[-3] if name.endswith("." + ZONE) else ""
        if qclass != 1 or qtype not in (1, 28) or not (zone_label[:1] == "h" and zone_label[1:].isdigit()):
            return None
        if int(zone_label[1:]) >= len(self.addresses):
            return None
        self.queries[name] += 1
        delay = self._delay(name, self.queries[name])
        address = ipaddress.ip_address(self.addresses[int(zone_label[1:])])
        question = packet[12 : at + 5]
        rd = packet[2] & 0x01
        answers = b""
        if (qtype == 1) == (address.version == 4):
            rdata = address.packed
            answers = struct.pack(">HHHIH", 0xC00C, qtype, 1, self.ttl, len(rdata)) + rdata
        header = packet[:2] + bytes([0x84 | rd, 0x80]) + struct.pack(">HHHH", 1, 1 if answers else 0, 0, 0)
        return header + question + answers, delay

    # ---- serving -------------------------------------------------------------------------

    async def _serve(self) -> None:  # noqa: C901 - a fake server's table of transports and faults
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr) -> None:
                reply, delay = server.answer(data)
                if reply is not None:
                    server._pending += 1
                    server.peak_pending = max(server.peak_pending, server._pending)
                    question = data[12:].split(b"\x00", 1)[0].lower()  # the name; A and AAAA are one
                    server._pending_names[question] += 1
                    server.peak_pending_names = max(server.peak_pending_names, len(server._pending_names))
                    loop.call_later(delay, self.send, reply, addr, question)

            def send(self, reply: bytes, addr, question: bytes) -> None:
                server._pending -= 1
                server._pending_names[question] -= 1
                if not server._pending_names[question]:
                    del server._pending_names[question]
                self.transport.sendto(reply, addr)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (length,) = struct.unpack(">H", await reader.readexactly(2))
                    server.tcp_queries += 1
                    reply, delay = server.answer(await reader.readexactly(length))
                    if reply is None:
                        continue
                    await asyncio.sleep(delay)
                    writer.write(struct.pack(">H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        for address, port in ((self.host, self.port), *self.extra_listen):
            # An ephemeral UDP port may be taken for TCP (a client socket's local port): try others.
            for attempt in range(1 if port else 20):
                sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
                # A burst of hundreds of queries must queue, not be dropped, while this thread waits for the GIL.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
                sock.bind((address, port))
                transport, _ = await loop.create_datagram_endpoint(Udp, sock=sock)
                bound = transport.get_extra_info("sockname")[1]
                try:
                    # TCP on the same port number, as resolvers expect when an answer is truncated.
                    tcp_server = await asyncio.start_server(tcp, address, bound)
                    break
                except OSError:
                    transport.close()
                    if port or attempt == 19:
                        raise
            self._closers += [transport.close, tcp_server.close]
            if address == self.host and port == self.port:
                self.port = bound

    def start(self) -> LocalDns:
        """Start serving on a background thread; returns once every address listens."""
        if self._loop_thread is not None:
            return self
        self._loop_thread = LoopThread("local-dns", fast=self.fast_loop)
        self._loop_thread.run(self._serve())
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; safe to call twice."""
        if self._loop_thread is None:
            return
        for close in self._closers:
            self._loop_thread.call(close)
        self._closers = []
        self._loop_thread.close()
        self._loop_thread = None

    def __enter__(self) -> LocalDns:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes, in a process of its own (a real resolver does not share the web's GIL).

    Prints ``{"nameserver": "ip:port"}`` first; each ``dns`` line read from stdin is answered with
    ``{"dns_queries": N}``, the queries served so far.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", required=True, help="comma-separated: the i-th answers *.h<i>.web.test")
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--ttl", type=int, default=300)
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="IP:PORT",
        help="another address to answer on, e.g. 127.0.0.53:53 for programs reading /etc/resolv.conf",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    listen = tuple((a, int(p)) for a, p in (entry.rsplit(":", 1) for entry in args.listen))
    addresses = args.addresses.split(",")
    with LocalDns(addresses, tuple(args.latency), args.ttl, extra_listen=listen, seed=args.seed, fast_loop=True) as dns:
        print(json.dumps({"nameserver": dns.nameserver}), flush=True)
        for line in sys.stdin:
            if line.strip() == "dns":
                print(json.dumps({"dns_queries": sum(dns.queries.values())}), flush=True)


if __name__ == "__main__":
    main()
