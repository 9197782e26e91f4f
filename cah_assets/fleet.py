"""The Hetzner fleet from Dagster: a sensor that sizes the CPU runners to the segments in flight."""

import dagster as dg
import requests
from hcloud import APIException

from cah_assets.automation import in_flight, pipeline_status
from cah_assets.partitions import SEGMENTS
from cah_assets.resources import HetznerFleet
from cah_resources.contract import CANDIDATES, IMAGE_SHARDS
from cah_resources.fleet.hetzner import servers_for_backlog
from cah_resources.fleet.settings import FleetError

# The stages whose work runs on the CPU runners (clip_pairs runs on GPU executors, not on this fleet).
CPU_STAGES = (CANDIDATES, IMAGE_SHARDS)


def segments_in_flight(instance: dg.DagsterInstance) -> int:
    """Segments with a CPU stage queued or running: the backlog the runners are there to clear."""
    keys = list(instance.get_dynamic_partitions(SEGMENTS))
    status = pipeline_status(instance, keys, list(CPU_STAGES))
    return len(in_flight(status))


@dg.sensor(
    minimum_interval_seconds=300,
    # Off by default: it creates servers that cost money; a person turns it on with tokens in HCLOUD_TOKENS.
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Scales the Hetzner CPU runners to the segments in flight, and down to none when idle.",
)
def fleet_sensor(context: dg.SensorEvaluationContext, hetzner_fleet: HetznerFleet) -> dg.SkipReason:
    backlog = segments_in_flight(context.instance)
    wanted = servers_for_backlog(backlog, hetzner_fleet.segments_per_server, hetzner_fleet.max_servers)
    try:
        # wait=False: a tick must not block on workers joining; the next tick sees them.
        report = hetzner_fleet.fleet(progress=context.log.info).scale_to(wanted, wait=False)
    except FleetError as error:
        return dg.SkipReason(f"fleet not scaled to {wanted}: {error}")
    except APIException as error:
        return dg.SkipReason(f"fleet not scaled to {wanted}: Hetzner API error {error.message} ({error.code})")
    except requests.RequestException as error:
        return dg.SkipReason(f"fleet not scaled to {wanted}: Hetzner API unreachable ({type(error).__name__})")
    for problem in report.problems:
        context.log.warning(problem)
    return dg.SkipReason(f"{backlog} segment(s) in flight: fleet {hetzner_fleet.name} scaled to {wanted} server(s)")
