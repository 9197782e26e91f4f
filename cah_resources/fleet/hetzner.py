"""The Hetzner Cloud fleet of CPU runners: labelled servers made, counted and deleted through hcloud."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from hcloud import APIException, Client
from hcloud.actions import ActionFailedException, ActionTimeoutException
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.ssh_keys import SSHKey

from cah_resources import retries as retry_policies
from cah_resources.fleet.cloud_init import UserDataError, render_cloud_init
from cah_resources.fleet.compute import ClusterUnavailable, cluster_security, connect_client, worker_resources
from cah_resources.fleet.settings import FleetError, FleetSettings

TOKENS_ENV = "HCLOUD_TOKENS"
TOKEN_ENV = "HCLOUD_TOKEN"
Progress = Callable[[str], None]


class BudgetExceeded(FleetError):
    """The request would run more servers, or cost more per hour, than the user allowed."""


@dataclass(frozen=True)
class Project:
    """One Hetzner project, reached with one API token (never printed)."""

    number: int
    token: str = field(repr=False)
    max_servers: int | None = None

    def __str__(self) -> str:
        return f"project {self.number}"


def load_projects(environ: Mapping[str, str] | None = None) -> list[Project]:
    """Projects from ``HCLOUD_TOKENS`` (comma/space-separated ``TOKEN`` or ``TOKEN:MAX``), else ``HCLOUD_TOKEN``."""
    env = os.environ if environ is None else environ
    raw = env.get(TOKENS_ENV) or env.get(TOKEN_ENV) or ""
    projects = []
    for number, entry in enumerate(raw.replace(",", " ").split(), 1):
        token, _, cap = entry.partition(":")
        if cap and not cap.isdigit():
            # Never echo what follows the ':': tokens separated by a colon make it a whole token.
            raise FleetError(
                f"entry {number} of {TOKENS_ENV} has a ':' not followed by a number of servers; separate tokens "
                "with commas or spaces, and write a cap as TOKEN:MAX"
            )
        projects.append(Project(number, token, int(cap) if cap else None))
    if not projects:
        raise FleetError(
            f"no Hetzner API token: set {TOKENS_ENV} (several projects, comma-separated, filled in order) "
            f"or {TOKEN_ENV}"
        )
    return projects


@dataclass(frozen=True)
class FleetServer:
    """A server of the fleet as the API reports it."""

    project: int
    id: int
    name: str
    status: str
    server_type: str
    location: str
    ipv4: str
    price_per_hour: float


@dataclass
class UpReport:
    requested: int
    existing: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    servers: list[FleetServer] = field(default_factory=list)
    price_per_hour: float = 0.0
    joined: list[str] = field(default_factory=list)
    not_joined: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.servers) >= self.requested and not self.not_joined


@dataclass
class DownReport:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def server_price(server_type, location: str) -> float | None:
    """Hourly gross price of a server type in a location, from the API's price list."""
    for price in server_type.prices or []:
        if price.get("location") == location:
            return float(price["price_hourly"]["gross"])
    return None


def _api_error(exc: APIException) -> str:
    return f"{exc.message} ({exc.code})"


class Fleet:
    """CPU runners on Hetzner Cloud: ``up`` to N, ``down``, ``status``; only servers with the fleet's labels."""

    def __init__(
        self,
        settings: FleetSettings,
        projects: list[Project],
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.projects = projects
        self.progress = progress or (lambda line: None)
        self.sleep = sleep
        self._clients: dict[int, Client] = {}

    def client(self, project: Project) -> Client:
        if project.number not in self._clients:
            self._clients[project.number] = Client(
                token=project.token,
                api_endpoint=self.settings.endpoint,
                application_name="cah-fleet",
                poll_interval=self.settings.action_poll_s,
                timeout=60,
            )
        return self._clients[project.number]

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, waiting out rate limits beyond the retries hcloud makes by itself."""
        policy = retry_policies.hetzner_rate_limit(
            self.settings.rate_limit_retries,
            self.settings.rate_limit_backoff_s,
            is_rate_limit=lambda exc: isinstance(exc, APIException) and exc.code == "rate_limit_exceeded",
            on_wait=lambda delay: self.progress(f"rate limited while {what}; retrying in {delay:.0f}s"),
            sleep=self.sleep,
        )
        return policy(fn, *args, **kwargs)

    # --- reading ------------------------------------------------------------------------------
    def servers(self) -> list[FleetServer]:
        """Every server carrying this fleet's labels, in every project."""
        found = []
        for project in self.projects:
            try:
                listed = self._call(
                    f"listing {project}", self.client(project).servers.get_all, label_selector=self.settings.selector
                )
            except APIException as exc:
                if exc.code in ("unauthorized", "forbidden", 401, 403):
                    raise FleetError(
                        f"{project}: the API refused its token ({exc.message}); "
                        f"check entry {project.number} of {TOKENS_ENV}"
                    ) from None
                raise
            for s in listed:
                if not self.settings.owns(s.labels):
                    continue
                ipv4 = s.public_net.ipv4.ip if s.public_net and s.public_net.ipv4 else ""
                price = server_price(s.server_type, s.location.name) if s.server_type and s.location else None
                found.append(
                    FleetServer(
                        project.number, s.id, s.name, s.status, s.server_type.name, s.location.name, ipv4, price or 0.0
                    )
                )
        return sorted(found, key=lambda s: s.name)

    def price_per_server(self) -> float:
        """Hourly gross price of one new server, from the API's server types."""
        project = self.projects[0]
        stype = self._call(
            "reading server types", self.client(project).server_types.get_by_name, self.settings.server_type
        )
        if stype is None:
            raise FleetError(f"server type {self.settings.server_type!r} does not exist; see `hcloud server-type list`")
        price = server_price(stype, self.settings.location)
        if price is None:
            offered = ", ".join(p["location"] for p in stype.prices or []) or "nowhere"
            raise FleetError(
                f"server type {self.settings.server_type} is not sold in {self.settings.location} "
                f"(offered in {offered})"
            )
        return price

    def check_budget(self, existing: list[FleetServer], new: int, price: float) -> float:
        """The fleet's price per hour after adding ``new`` servers, or BudgetExceeded."""
        s = self.settings
        total = len(existing) + new
        if total > s.max_servers:
            raise BudgetExceeded(
                f"refusing to run {total} servers: max_servers is {s.max_servers} (raise it if you mean it)"
            )
        cost = sum(e.price_per_hour for e in existing) + new * price
        if cost > s.max_price_per_hour + 1e-9:
            raise BudgetExceeded(
                f"refusing: {total} servers ({new} new {s.server_type} in {s.location} at €{price:.4f}/h) cost "
                f"€{cost:.4f}/h, over max_price_per_hour €{s.max_price_per_hour:.4f}"
            )
        return cost

    # --- making -------------------------------------------------------------------------------
    def user_data(self) -> str:
        s = self.settings
        if not s.scheduler_address:
            raise FleetError("no scheduler address: the servers' workers must know where to join (tls://HOST:8786)")
        try:
            return render_cloud_init(
                s.scheduler_address,
                fleet=s.name,
                package=s.package,
                tls_dir=s.tls_dir,
                nthreads=s.nthreads,
                extra_packages=s.extra_packages,
            )
        except UserDataError as exc:
            raise FleetError(str(exc)) from None

    def _next_name(self, taken: set[str]) -> str:
        """The lowest free name; names are unique across projects because Dask worker names must be."""
        i = 1
        while f"{self.settings.name}-{i:03d}" in taken:
            i += 1
        return f"{self.settings.name}-{i:03d}"

    def up(self, count: int, *, wait: bool = True) -> UpReport:
        """Grow the fleet to ``count`` servers, filling projects in order; then wait for their workers."""
        if count < 0:
            raise FleetError("the number of servers cannot be negative")
        s = self.settings
        existing = self.servers()
        report = UpReport(count, existing=[e.name for e in existing])
        missing = count - len(existing)
        if missing <= 0:
            self.progress(f"fleet {s.name} already has {len(existing)} server(s); nothing to create")
        else:
            user_data = self.user_data()
            price = self.price_per_server()
            cost = self.check_budget(existing, missing, price)
            self.progress(f"creating {missing} × {s.server_type} in {s.location} (fleet €{cost:.4f}/h when complete)")
            self._create(missing, existing, user_data, report)
        report.servers = self.servers()
        report.price_per_hour = sum(x.price_per_hour for x in report.servers)
        unaccounted = {x.name for x in report.servers} - set(report.existing) - set(report.created)
        for name in sorted(unaccounted):
            report.problems.append(
                f"{name} carries the fleet's labels but was not made by this run; counted in the fleet"
            )
        if len(report.servers) < count:
            report.problems.append(f"only {len(report.servers)} of {count} servers exist; see the problems above")
        if wait and report.servers:
            report.joined, report.not_joined = self.wait_for_workers([x.name for x in report.servers])
        return report

    def _create(self, missing: int, existing: list[FleetServer], user_data: str, report: UpReport) -> None:
        s = self.settings
        taken = {e.name for e in existing}
        pending = []  # (project, server, action) whose creation we still wait for
        per_project = {p.number: sum(e.project == p.number for e in existing) for p in self.projects}
        for project in self.projects:
            client = self.client(project)
            while missing > 0:
                if project.max_servers is not None and per_project[project.number] >= project.max_servers:
                    report.problems.append(f"{project}: its cap of {project.max_servers} servers is reached")
                    break
                name = self._next_name(taken)
                try:
                    made = self._call(
                        f"creating {name}",
                        client.servers.create,
                        name=name,
                        server_type=ServerType(name=s.server_type),
                        image=Image(name=s.image),
                        location=Location(name=s.location),
                        ssh_keys=[SSHKey(name=k) for k in s.ssh_keys] or None,
                        user_data=user_data,
                        labels=s.labels,
                    )
                except APIException as exc:
                    if exc.code == "uniqueness_error":
                        taken.add(name)
                        adopted = self._adopt(client, name)
                        if adopted:
                            report.created.append(name)
                            per_project[project.number] += 1
                            missing -= 1
                        continue
                    if exc.code == "resource_limit_exceeded":
                        report.problems.append(
                            f"{project}: quota reached after {per_project[project.number]} server(s) "
                            f"({exc.message}); moving on"
                        )
                    else:
                        report.problems.append(f"{project}: creating {name} failed: {_api_error(exc)}")
                    self.progress(report.problems[-1])
                    break
                except requests.RequestException as exc:
                    report.problems.append(f"{project}: API unreachable while creating {name}: {type(exc).__name__}")
                    self.progress(report.problems[-1])
                    break
                taken.add(name)
                pending.append((project, made.server, made.action))
                report.created.append(name)
                per_project[project.number] += 1
                missing -= 1
                self.progress(
                    f"created {name} in {project} ({len(report.existing) + len(report.created)}/{report.requested})"
                )
            if missing == 0:
                break
        for project, server, action in pending:
            self._settle(project, server, action, report)

    def _adopt(self, client: Client, name: str):
        """A name already taken in the project: ours (a retried create) counts; anything else is skipped."""
        found = client.servers.get_by_name(name)
        return found if found is not None and self.settings.owns(found.labels) else None

    def _settle(self, project: Project, server, action, report: UpReport) -> None:
        """Wait for a server's creation; a failed one is deleted so that nothing half-made stays billed."""
        try:
            action.wait_until_finished()
        except ActionFailedException:
            report.created.remove(server.name)
            report.problems.append(f"{project}: creating {server.name} failed in Hetzner; deleting it")
            try:
                self._call(f"deleting {server.name}", self.client(project).servers.delete, server).wait_until_finished()
            except (APIException, ActionFailedException, ActionTimeoutException) as exc:
                report.problems.append(
                    f"{project}: could not delete half-made {server.name} ({exc}); run `cah fleet down`"
                )
        except ActionTimeoutException:
            report.problems.append(f"{project}: {server.name} is still being created; it carries the fleet's labels")

    # --- joining ------------------------------------------------------------------------------
    def _client_security(self):
        tls = self.settings.tls_dir
        if not tls:
            return cluster_security()
        return cluster_security(
            os.path.join(tls, "ca.pem"), os.path.join(tls, "client.pem"), os.path.join(tls, "client-key.pem")
        )

    def wait_for_workers(self, names: list[str], timeout_s: float | None = None) -> tuple[list[str], list[str]]:
        """Which servers' workers joined the scheduler before the timeout (a worker is named after its server)."""
        timeout_s = self.settings.join_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            client = connect_client(
                self.settings.scheduler_address, self._client_security(), min(30.0, max(timeout_s, 10.0))
            )
        except ClusterUnavailable as exc:
            self.progress(f"cannot check which workers joined: {exc}")
            return [], sorted(names)
        joined: list[str] = []
        try:
            while True:
                workers = list(worker_resources(client))
                now_joined = sorted(n for n in names if any(w == n or w.startswith(f"{n}-") for w in workers))
                if now_joined != joined:
                    joined = now_joined
                    self.progress(f"{len(joined)}/{len(names)} servers have joined the scheduler")
                if len(joined) == len(names) or time.monotonic() >= deadline:
                    break
                self.sleep(min(self.settings.join_poll_s, max(0.0, deadline - time.monotonic())))
        finally:
            client.close()
        return joined, sorted(set(names) - set(joined))

    # --- removing -----------------------------------------------------------------------------
    def down(self, keep: int = 0) -> DownReport:
        """Delete the fleet's servers (all, or all but the ``keep`` oldest names); nothing without its labels."""
        report = DownReport()
        ours = self.servers()
        report.kept = [x.name for x in ours[:keep]]
        doomed = ours[keep:]
        by_project = {p.number: p for p in self.projects}
        pending = []
        for server in doomed:
            project = by_project[server.project]
            client = self.client(project)
            try:
                bound = client.servers.get_by_id(server.id)
                if not self.settings.owns(bound.labels):  # relabelled since listing: not ours any more
                    report.problems.append(f"{server.name} lost the fleet's labels; left alone")
                    continue
                pending.append((server, self._call(f"deleting {server.name}", client.servers.delete, bound)))
            except APIException as exc:
                report.problems.append(f"{project}: deleting {server.name} failed: {_api_error(exc)}")
        for server, action in pending:
            try:
                action.wait_until_finished()
                report.deleted.append(server.name)
                self.progress(f"deleted {server.name}")
            except (ActionFailedException, ActionTimeoutException) as exc:
                report.problems.append(f"deleting {server.name} did not finish: {type(exc).__name__}")
        return report

    def scale_to(self, count: int, *, wait: bool = False) -> UpReport | DownReport:
        """Grow or shrink the fleet to ``count`` servers (shrinking deletes the newest names first)."""
        if count >= len(self.servers()):
            return self.up(count, wait=wait)
        return self.down(keep=count)


def servers_for_backlog(pending_units: int, units_per_server: int, max_servers: int) -> int:
    """How many runners a backlog deserves: enough to clear it, none when idle, never over the cap."""
    if pending_units <= 0:
        return 0
    return min(max_servers, -(-pending_units // max(1, units_per_server)))


# --- `cah fleet up | down | status` (the options are click's, in cah_assets/cli.py) ------------------
def _print_servers(servers: list[FleetServer]) -> None:
    for x in servers:
        print(
            f"  {x.name:<16} project {x.project}  {x.status:<12} {x.server_type:<8} {x.location:<5} {x.ipv4:<15} "
            f"€{x.price_per_hour:.4f}/h"
        )


def _say(line: str) -> None:
    print(f"cah fleet: {line}", flush=True)


def _complain(line: str) -> None:
    print(f"cah fleet: {line}", file=sys.stderr)


def _run_on_fleet(settings: dict[str, Any], action: Callable[[Fleet], int]) -> int:
    """``action`` on the fleet made of ``settings`` (FleetSettings fields); every failure is one line and exit 2."""
    try:
        return action(Fleet(FleetSettings(**settings), load_projects(), progress=_say))
    except FleetError as exc:
        _complain(str(exc))
    except APIException as exc:
        _complain(f"Hetzner API error: {_api_error(exc)}")
    except requests.RequestException as exc:
        _complain(f"Hetzner API unreachable ({type(exc).__name__}); check the network or HCLOUD_ENDPOINT")
    return 2


def fleet_up(count: int, *, wait: bool = True, **settings: Any) -> int:
    """``cah fleet up N``: 0 once N servers exist (and, with ``wait``, joined), 1 when fewer, 2 when refused."""

    def up(fleet: Fleet) -> int:
        report = fleet.up(count, wait=wait)
        _print_servers(report.servers)
        for problem in report.problems:
            _complain(f"problem: {problem}")
        if report.not_joined:
            _complain(f"not joined yet: {', '.join(report.not_joined)}")
        _say(f"{len(report.servers)}/{count} servers, {len(report.joined)} joined, €{report.price_per_hour:.4f}/h")
        return 0 if report.complete or (not wait and len(report.servers) >= count) else 1

    return _run_on_fleet(settings, up)


def fleet_down(keep: int, **settings: Any) -> int:
    """``cah fleet down``: delete the fleet's servers but the ``keep`` oldest; 1 when a deletion had a problem."""

    def down(fleet: Fleet) -> int:
        report = fleet.down(keep=keep)
        for problem in report.problems:
            _complain(f"problem: {problem}")
        _say(f"deleted {len(report.deleted)} server(s), kept {len(report.kept)}")
        return 1 if report.problems else 0

    return _run_on_fleet(settings, down)


def fleet_status(**settings: Any) -> int:
    """``cah fleet status``: the fleet's servers, their price, and (given a scheduler address) which joined."""

    def status(fleet: Fleet) -> int:
        servers = fleet.servers()
        _print_servers(servers)
        _say(f"{len(servers)} server(s), €{sum(x.price_per_hour for x in servers):.4f}/h")
        if fleet.settings.scheduler_address and servers:
            joined, missing = fleet.wait_for_workers([x.name for x in servers], timeout_s=0)
            _say(f"{len(joined)} joined; not joined: {', '.join(missing) or 'none'}")
        return 0

    return _run_on_fleet(settings, status)
