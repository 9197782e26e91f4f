"""The fleet sensor: Hetzner CPU runners sized to the segments in flight, through hcloud against the fake API."""

from __future__ import annotations

import dagster as dg
import pytest
from dask_peers import make_tls
from fake_hcloud import FakeHetznerCloud

from cah_assets.definitions import defs
from cah_assets.fleet import fleet_sensor
from cah_assets.partitions import segments
from cah_assets.resources import HetznerFleet
from cah_resources.contract import CANDIDATES, stage_assets
from cah_resources.fleet.settings import LABEL_FLEET, LABEL_MANAGED, LABEL_ROLE

TOKEN = "tokenA0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"
KEYS = [f"CC-MAIN-2024-10_{i:05d}" for i in range(5)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("HCLOUD_TOKENS", TOKEN)
    with FakeHetznerCloud() as fake:
        yield fake


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(segments.name, KEYS)
        yield instance


def queue_runs(instance: dg.DagsterInstance, keys: list[str]) -> None:
    """Runs of candidates created and not finished: segments in flight."""
    job = defs.get_implicit_global_asset_job_def()
    for key in keys:
        instance.create_run_for_job(
            job,
            asset_selection=frozenset(dg.AssetKey(name) for name in stage_assets(CANDIDATES)),  # one step: with pages
            tags={"dagster/partition": key},
            status=dg.DagsterRunStatus.STARTING,
        )


def tick(instance, api, tls, **fields):
    resource = HetznerFleet(
        server_type="cx22",
        endpoint=api.endpoint,
        scheduler_address="tls://203.0.113.250:8786",
        tls_dir=str(tls),
        package="cah",
        **fields,
    )
    with dg.build_sensor_context(instance=instance, resources={"hetzner_fleet": resource}) as context:
        return fleet_sensor(context)


def names(project) -> set[str]:
    return {s["name"] for s in project.servers.values()}


def test_the_fleet_sensor_grows_the_fleet_to_the_backlog_within_its_cap(api, tls, instance):
    project = api.add_project(TOKEN)
    queue_runs(instance, KEYS)

    result = tick(instance, api, tls, segments_per_server=2)
    assert names(project) == {"cah-001", "cah-002", "cah-003"}  # 5 segments, 2 per server
    assert "5 segment(s) in flight" in result.skip_message

    tick(instance, api, tls, segments_per_server=1, max_servers=4)
    assert names(project) == {"cah-001", "cah-002", "cah-003", "cah-004"}


def test_the_fleet_sensor_scales_to_zero_when_idle_and_never_deletes_servers_it_does_not_own(api, tls, instance):
    project = api.add_project(TOKEN)
    api.add_server(TOKEN, "database")  # unlabelled: someone's own server
    api.add_server(TOKEN, "other-001", {LABEL_MANAGED: "cah", LABEL_FLEET: "other", LABEL_ROLE: "cpu-runner"})
    queue_runs(instance, KEYS[:2])
    tick(instance, api, tls)
    assert names(project) == {"database", "other-001", "cah-001"}

    for run in instance.get_runs():
        instance.report_run_canceled(run)
    result = tick(instance, api, tls)

    assert names(project) == {"database", "other-001"}
    assert "0 segment(s) in flight" in result.skip_message


def test_the_fleet_sensor_says_why_it_did_not_scale_in_one_line(api, tls, instance):
    api.add_project(TOKEN)
    queue_runs(instance, KEYS[:1])

    result = tick(instance, api, tls, max_price_per_hour=0.001)

    assert result.skip_message.startswith("fleet not scaled to 1: refusing") and "\n" not in result.skip_message


def test_the_fleet_sensor_is_in_the_definitions_and_off_by_default():
    sensor = defs.resolve_sensor_def("fleet_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert "hetzner_fleet" in sensor.required_resource_keys


def test_the_resource_and_the_cli_take_their_defaults_from_fleet_settings(monkeypatch):
    from cah_assets.cli import fleet_up_command
    from cah_resources.fleet.settings import FLEET_ENV, FleetSettings

    for variable in FLEET_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert HetznerFleet().settings() == FleetSettings()
    options = fleet_up_command.make_context("up", ["1"]).params
    assert FleetSettings(**{k: v for k, v in options.items() if k not in ("count", "no_wait")}) == FleetSettings()
    monkeypatch.setenv("CAH_FLEET_MAX_SERVERS", "3")
    assert HetznerFleet.from_env().max_servers == 3
    assert fleet_up_command.make_context("up", ["1"]).params["max_servers"] == 3
