"""The user-data a fleet server boots with: install cah and run a Dask worker joined over TLS."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from importlib import resources

import jinja2
import yaml

TEMPLATE = "cloud_init.yaml.j2"
# Hetzner refuses user-data over 32 KiB.
MAX_USER_DATA_BYTES = 32 * 1024
SCHEDULER_ADDRESS = re.compile(r"^(tls|tcp)://[A-Za-z0-9.\-]+:\d{1,5}$|^(tls|tcp)://\[[0-9A-Fa-f:]+\]:\d{1,5}$")
# What a server needs to join as a worker; the CA key and the client certificate stay home.
WORKER_TLS_FILES = (("ca.pem", "0644"), ("worker.pem", "0644"), ("worker-key.pem", "0600"))


class UserDataError(ValueError):
    """The fleet's settings cannot make valid user-data."""


@dataclass(frozen=True)
class TlsFile:
    path: str
    mode: str
    content: str


def worker_tls_files(tls_dir: str) -> list[TlsFile]:
    """The worker's TLS files from a folder made by deploy/make_tls.sh, as they go on the server."""
    files = []
    for name, mode in WORKER_TLS_FILES:
        local = os.path.join(tls_dir, name)
        if not os.path.isfile(local):
            raise UserDataError(
                f"{local} is missing; make the cluster's certificates with deploy/make_tls.sh {tls_dir}"
            )
        with open(local, encoding="ascii") as handle:
            content = handle.read().strip()
        if "PRIVATE KEY" in content and name != "worker-key.pem":
            raise UserDataError(f"{local} holds a private key; only worker-key.pem may go to fleet servers")
        files.append(TlsFile(f"/etc/cah/tls/{name}", mode, content))
    return files


PRIVATE_NETWORKS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def _is_private_host(address: str) -> bool:
    """Whether the scheduler sits on a private network (RFC 1918 / 4193), as a Hetzner Network gives."""
    host = address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version)


def _is_requirement(text: str) -> bool:
    return bool(text.strip()) and not any(c in text for c in "\r\n\t\0\"'")


def render_cloud_init(
    scheduler_address: str,
    *,
    fleet: str,
    package: str,
    tls_dir: str = "",
    nthreads: int = 1,
    extra_packages: tuple[str, ...] = (),
) -> str:
    """Cloud-config for one fleet server. Takes no cloud credentials, so none can end up in it."""
    if not SCHEDULER_ADDRESS.match(scheduler_address):
        raise UserDataError(f"scheduler address {scheduler_address!r} is not like tls://203.0.113.7:8786")
    if scheduler_address.startswith("tls://") and not tls_dir:
        raise UserDataError("a tls:// scheduler needs tls_dir (the folder deploy/make_tls.sh made)")
    if scheduler_address.startswith("tcp://") and not _is_private_host(scheduler_address):
        # Anyone who reaches a scheduler without TLS can run code on every worker.
        raise UserDataError(
            f"{scheduler_address} is not a private-network address: fleet servers must join over tls:// "
            "(make the certificates with deploy/make_tls.sh)"
        )
    if not _is_requirement(package):
        raise UserDataError(
            f"package {package!r} must be one pip requirement for this project, e.g. "
            "'cah @ git+https://github.com/ORG/cah@COMMIT' or a wheel URL"
        )
    for extra in extra_packages:
        if not _is_requirement(extra):
            raise UserDataError(f"extra package {extra!r} must be one pip requirement, e.g. 's3fs>=2024.6'")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    template = env.from_string(resources.files("cah_resources.fleet").joinpath(TEMPLATE).read_text(encoding="utf-8"))
    text = template.render(
        fleet=fleet,
        scheduler_address=scheduler_address,
        package=package,
        nthreads=int(nthreads),
        tls_files=worker_tls_files(tls_dir) if tls_dir else [],
        extra_packages=list(extra_packages),
    )
    yaml.safe_load(text)  # a template edit that breaks YAML fails here, not on 50 servers
    if len(text.encode()) > MAX_USER_DATA_BYTES:
        raise UserDataError(f"user-data is {len(text.encode())} bytes; Hetzner accepts at most {MAX_USER_DATA_BYTES}")
    return text
