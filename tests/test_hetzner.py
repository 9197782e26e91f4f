"""The Hetzner fleet through the real hcloud client against a Hetzner Cloud API twin on loopback."""

from __future__ import annotations

import time

import pytest
import yaml
from dask_peers import cah_worker, make_tls, scheduler, wait_for_worker_names
from fake_hcloud import FakeHetznerCloud

from cah_assets.cli import main as cah_main
from cah_assets.resources import HetznerFleet
from cah_resources.fleet.hetzner import BudgetExceeded, Fleet, load_projects, servers_for_backlog
from cah_resources.fleet.settings import LABEL_FLEET, LABEL_MANAGED, LABEL_ROLE, FleetError, FleetSettings

TOKEN_A = "tokenA0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"
TOKEN_B = "tokenB0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"
SCHEDULER = "tls://203.0.113.250:8786"
PACKAGE = "cah @ https://example.org/cah-0.1.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def api():
    with FakeHetznerCloud() as fake:
        yield fake


def settings(api: FakeHetznerCloud, tls, **overrides) -> FleetSettings:
    values = dict(
        name="cah",
        server_type="cx22",
        location="fsn1",
        endpoint=api.endpoint,
        scheduler_address=SCHEDULER,
        tls_dir=str(tls),
        package=PACKAGE,
        action_poll_s=0.01,
        join_timeout_s=0,
        join_poll_s=0.2,
        rate_limit_backoff_s=0.01,
    )
    values.update(overrides)
    return FleetSettings(**values)


def fleet(api, tls, tokens=(TOKEN_A,), lines=None, **overrides) -> Fleet:
    projects = load_projects({"HCLOUD_TOKENS": ",".join(tokens)})
    return Fleet(settings(api, tls, **overrides), projects, progress=(lines.append if lines is not None else None))


def names(project) -> set[str]:
    return {s["name"] for s in project.servers.values()}


def test_up_creates_servers_carrying_the_fleet_labels(api, tls):
    project = api.add_project(TOKEN_A)

    report = fleet(api, tls).up(3, wait=False)

    assert report.created == ["cah-001", "cah-002", "cah-003"]
    assert names(project) == {"cah-001", "cah-002", "cah-003"}
    for server in project.servers.values():
        assert server["labels"] == {LABEL_MANAGED: "cah", LABEL_FLEET: "cah", LABEL_ROLE: "cpu-runner"}
        assert server["status"] == "running"
    assert [s.name for s in report.servers] == report.created
    assert report.price_per_hour == pytest.approx(3 * 0.0060 * 1.19)


def test_up_to_a_size_already_reached_creates_nothing(api, tls):
    api.add_project(TOKEN_A)
    fleet(api, tls).up(2, wait=False)

    report = fleet(api, tls).up(2, wait=False)

    assert report.created == [] and report.existing == ["cah-001", "cah-002"]
    assert len(api.calls("POST", "/servers")) == 2


def test_down_deletes_only_servers_with_the_fleet_labels(api, tls):
    project = api.add_project(TOKEN_A)
    api.add_server(TOKEN_A, "database")  # unlabelled: someone's own server
    api.add_server(TOKEN_A, "other-001", {LABEL_MANAGED: "cah", LABEL_FLEET: "other", LABEL_ROLE: "cpu-runner"})
    api.add_server(TOKEN_A, "lookalike", {LABEL_FLEET: "cah"})  # not made by cah
    fleet(api, tls).up(2, wait=False)

    report = fleet(api, tls).down()

    assert sorted(report.deleted) == ["cah-001", "cah-002"]
    assert names(project) == {"database", "other-001", "lookalike"}
    assert len(api.calls("DELETE", "/servers/")) == 2


def test_down_keep_removes_the_newest_servers_first(api, tls):
    project = api.add_project(TOKEN_A)
    fleet(api, tls).up(3, wait=False)

    report = fleet(api, tls).down(keep=1)

    assert report.kept == ["cah-001"] and sorted(report.deleted) == ["cah-002", "cah-003"]
    assert names(project) == {"cah-001"}


def test_rate_limited_create_is_retried(api, tls):
    project = api.add_project(TOKEN_A)
    api.fail_next("POST", "/servers", 429, "rate_limit_exceeded", "limit of 3600 requests per hour reached")

    report = fleet(api, tls).up(1, wait=False)

    assert report.created == ["cah-001"] and not report.problems
    assert names(project) == {"cah-001"}
    assert len(api.calls("POST", "/servers")) == 2


def test_quota_error_mid_up_is_reported_and_every_made_server_is_counted(api, tls):
    project = api.add_project(TOKEN_A, server_limit=2)

    report = fleet(api, tls).up(4, wait=False)

    assert report.created == ["cah-001", "cah-002"]
    assert any("project 1: quota reached after 2 server(s)" in p for p in report.problems)
    assert any("only 2 of 4 servers exist" in p for p in report.problems)
    assert [s.name for s in report.servers] == ["cah-001", "cah-002"] == sorted(names(project))
    assert not report.complete


def test_several_tokens_fill_projects_in_order_until_n(api, tls):
    first = api.add_project(TOKEN_A, server_limit=2)
    second = api.add_project(TOKEN_B)

    report = fleet(api, tls, tokens=(TOKEN_A, TOKEN_B)).up(3, wait=False)

    assert names(first) == {"cah-001", "cah-002"} and names(second) == {"cah-003"}
    assert [(s.name, s.project) for s in report.servers] == [("cah-001", 1), ("cah-002", 1), ("cah-003", 2)]
    assert fleet(api, tls, tokens=(TOKEN_A, TOKEN_B)).down().deleted == ["cah-001", "cah-002", "cah-003"]
    assert not first.servers and not second.servers


def test_a_per_token_cap_moves_on_to_the_next_project(api, tls):
    first = api.add_project(TOKEN_A)
    second = api.add_project(TOKEN_B)

    fleet(api, tls, tokens=(f"{TOKEN_A}:1", TOKEN_B)).up(3, wait=False)

    assert names(first) == {"cah-001"} and names(second) == {"cah-002", "cah-003"}


def test_a_failed_creation_is_deleted_not_left_half_made(api, tls):
    project = api.add_project(TOKEN_A)
    api.failing_creates.add("cah-002")

    report = fleet(api, tls).up(3, wait=False)

    assert report.created == ["cah-001", "cah-003"]
    assert any("creating cah-002 failed in Hetzner; deleting it" in p for p in report.problems)
    assert names(project) == {"cah-001", "cah-003"}


def test_a_name_taken_by_a_stranger_is_skipped_and_the_stranger_kept(api, tls):
    project = api.add_project(TOKEN_A)
    api.add_server(TOKEN_A, "cah-001")

    report = fleet(api, tls).up(1, wait=False)

    assert report.created == ["cah-002"]
    assert names(project) == {"cah-001", "cah-002"}
    assert project.servers[min(project.servers)]["labels"] == {}


def test_cost_guard_refuses_a_fleet_over_the_hourly_budget(api, tls):
    api.add_project(TOKEN_A)

    with pytest.raises(BudgetExceeded, match=r"refusing: 10 servers .* over max_price_per_hour €0\.0500"):
        fleet(api, tls, max_price_per_hour=0.05).up(10, wait=False)

    assert api.calls("POST", "/servers") == []
    fleet(api, tls, max_price_per_hour=0.05).up(7, wait=False)  # 7 x the fake API's EUR 0.00714 fits
    assert len(api.calls("POST", "/servers")) == 7


def test_cost_guard_counts_running_servers_and_the_server_cap(api, tls):
    api.add_project(TOKEN_A)
    fleet(api, tls, server_type="cpx31").up(2, wait=False)

    with pytest.raises(BudgetExceeded, match="max_price_per_hour"):
        fleet(api, tls, max_price_per_hour=2 * 0.0238 * 1.19 + 0.001).up(3, wait=False)
    with pytest.raises(BudgetExceeded, match="max_servers is 2"):
        fleet(api, tls, max_servers=2).up(3, wait=False)
    assert len(api.calls("POST", "/servers")) == 2


def test_unknown_server_type_or_location_is_a_one_line_error(api, tls):
    api.add_project(TOKEN_A)
    with pytest.raises(FleetError, match="server type 'cx999' does not exist"):
        fleet(api, tls, server_type="cx999").up(1, wait=False)
    with pytest.raises(FleetError, match=r"ccx63 is not sold in hel1 \(offered in fsn1, nbg1\)"):
        fleet(api, tls, server_type="ccx63", location="hel1").up(1, wait=False)


def test_user_data_has_the_scheduler_and_worker_certificate_but_no_token(api, tls):
    api.add_project(TOKEN_A)

    fleet(api, tls).up(1, wait=False)

    (create,) = api.calls("POST", "/servers")
    user_data = create["body"]["user_data"]
    assert user_data.startswith("#cloud-config")
    config = yaml.safe_load(user_data)
    service = next(f for f in config["write_files"] if f["path"].endswith("cah-worker.service"))["content"]
    assert f"cah worker --scheduler {SCHEDULER} --name %H" in service
    files = {f["path"]: f for f in config["write_files"]}
    assert files["/etc/cah/tls/worker.pem"]["content"].strip() == (tls / "worker.pem").read_text().strip()
    assert files["/etc/cah/tls/worker-key.pem"]["permissions"] == "0600"
    assert PACKAGE in config["runcmd"][2]
    assert TOKEN_A not in user_data
    assert (tls / "ca-key.pem").read_text().strip() not in user_data
    assert (tls / "client-key.pem").read_text().strip() not in user_data


def test_tokens_are_never_in_reprs_or_messages():
    projects = load_projects({"HCLOUD_TOKENS": f"{TOKEN_A}:5, {TOKEN_B}"})
    assert [(p.number, p.max_servers) for p in projects] == [(1, 5), (2, None)]
    assert TOKEN_A not in repr(projects) and TOKEN_A not in str(projects[0])
    with pytest.raises(FleetError, match="set HCLOUD_TOKENS"):
        load_projects({})


def test_tokens_separated_by_a_colon_are_never_echoed(api, tls, monkeypatch, capsys):
    # What follows a ':' is read as a cap; with a colon between tokens it is the second token.
    api.add_project(TOKEN_A)
    monkeypatch.setenv("HCLOUD_TOKENS", f"{TOKEN_A}:{TOKEN_B}")
    resource = HetznerFleet(
        server_type="cx22", endpoint=api.endpoint, scheduler_address=SCHEDULER, tls_dir=str(tls), package=PACKAGE
    )
    with pytest.raises(FleetError, match="entry 1 of HCLOUD_TOKENS") as error:
        resource.fleet()
    assert cah_main(["fleet", "status", "--endpoint", api.endpoint]) == 2
    out = capsys.readouterr()
    assert "separate tokens with commas" in out.err
    for token in (TOKEN_A, TOKEN_B):
        assert token not in str(error.value) + out.out + out.err
        assert token[:12] not in str(error.value) + out.out + out.err
    assert api.requests == []


def test_up_waits_for_workers_and_reports_which_joined(api, tls, tmp_path):
    api.add_project(TOKEN_A)
    with scheduler(tls, tmp_path) as address, cah_worker(address, "cah-001", tls, tmp_path):
        wait_for_worker_names(address, tls, {"cah-001"})
        lines: list[str] = []
        started = time.monotonic()

        report = fleet(api, tls, lines=lines, scheduler_address=address, join_timeout_s=2).up(2)

    assert report.joined == ["cah-001"] and report.not_joined == ["cah-002"]
    assert "1/2 servers have joined the scheduler" in lines
    assert not report.complete
    assert time.monotonic() - started < 60


def test_cli_up_status_down_print_no_token(api, tls, monkeypatch, capsys):
    project = api.add_project(TOKEN_A, server_limit=1)
    monkeypatch.setenv("HCLOUD_TOKENS", TOKEN_A)
    common = ["--endpoint", api.endpoint]
    up = [
        "fleet",
        "up",
        "2",
        "--type",
        "cx22",
        "--scheduler",
        SCHEDULER,
        "--tls-dir",
        str(tls),
        "--package",
        PACKAGE,
        "--no-wait",
    ]

    assert cah_main(up + common) == 1  # the quota stopped it at 1 of 2
    assert cah_main(["fleet", "status", *common]) == 0
    assert cah_main(["fleet", "up", "50", *up[3:], *common]) == 2  # over max_servers: refused
    assert cah_main(["fleet", "down", *common]) == 0

    out = capsys.readouterr()
    assert "quota reached" in out.err and "refusing to run 50 servers" in out.err
    assert "cah-001" in out.out and "deleted 1 server(s)" in out.out
    assert TOKEN_A not in out.out + out.err
    assert project.servers == {}


def test_the_dagster_resource_reads_tokens_from_the_environment(api, tls, monkeypatch):
    project = api.add_project(TOKEN_A)
    monkeypatch.setenv("HCLOUD_TOKENS", TOKEN_A)
    resource = HetznerFleet(
        server_type="cx22", endpoint=api.endpoint, scheduler_address=SCHEDULER, tls_dir=str(tls), package=PACKAGE
    )

    resource.fleet().up(1, wait=False)

    assert names(project) == {"cah-001"}
    assert TOKEN_A not in repr(resource.settings())


def test_backlog_sizing_scales_to_zero_when_idle_and_stops_at_the_cap():
    assert servers_for_backlog(0, 4, 10) == 0
    assert servers_for_backlog(9, 4, 10) == 3
    assert servers_for_backlog(1000, 4, 10) == 10


def test_scale_to_grows_then_shrinks_the_fleet_newest_first(api, tls):
    project = api.add_project(TOKEN_A)

    fleet(api, tls).scale_to(3)
    assert names(project) == {"cah-001", "cah-002", "cah-003"}
    fleet(api, tls).scale_to(1)
    assert names(project) == {"cah-001"}
    fleet(api, tls).scale_to(0)
    assert names(project) == set()


def test_a_refused_token_names_its_project_not_the_token(api, tls):
    api.add_project(TOKEN_A)

    with pytest.raises(FleetError, match=r"project 2: the API refused its token .* entry 2 of HCLOUD_TOKENS") as error:
        fleet(api, tls, tokens=(TOKEN_A, TOKEN_B)).servers()
    assert TOKEN_B not in str(error.value)
