"""Runs that `cah` starts: runs of the workspace's code location, so the UI can re-execute them and lists them.

`cah demo` and `cah materialize` execute a run in their own process (no process start-up, the same
figures), but create it as Dagster's launcher would: with the remote origin of the job in the code
location that workspace.yaml names. "Re-execute all", "Re-execute from failure" and the Overview
timeline need that origin; a run made by ``execute_in_process`` has none.
"""

import os
from collections.abc import Mapping

import dagster as dg

# Private Dagster imports, kept on purpose (Dagster 1.13): the public API executes a job in process
# only through execute_in_process, which records no origin; these are the pieces it is made of, plus
# the origin that the webserver's own launches record.
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import create_execution_plan, execute_run
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.workspace.load_target import WorkspaceFileTarget

from cah_assets.segment_runs import PARTITION_TAG, UnknownSegment, unknown_segment_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKSPACE = os.path.join(REPO, "workspace.yaml")


def job_origin(job_name: str, workspace: str = WORKSPACE) -> RemoteJobOrigin:
    """Where the UI finds ``job_name``: the (one) code location of ``workspace``, its Definitions' repository."""
    (location,) = WorkspaceFileTarget(paths=[workspace]).create_origins()
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def run_job(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    job_name: str,
    partition_key: str | None = None,
    run_config: Mapping | None = None,
) -> dg.JobExecutionResult:
    """Create a run of the code location's ``job_name`` (for ``partition_key``) and execute it in this process.

    ``defs`` must be the code location's definitions for this instance (``build_definitions`` of its
    deployment): the run records the UI's origin of the job and executes ``defs``' job. An unknown
    segment raises UnknownSegment, with the message the UI's launch gives, and creates no run.
    """
    tags = {PARTITION_TAG: partition_key} if partition_key is not None else {}
    problem = unknown_segment_message(instance, tags)
    if problem:
        raise UnknownSegment(problem)
    job_def = defs.resolve_job_def(job_name)
    job = InMemoryJob(job_def)
    run_config = dict(run_config or {})
    ref = instance.get_ref() if instance.is_persistent else None  # an ephemeral instance (a test, a rehearsal) has none
    plan = create_execution_plan(job, run_config=run_config, tags=tags, instance_ref=ref)
    run = instance.create_run_for_job(
        job_def=job_def,
        execution_plan=plan,
        run_config=run_config,
        tags={**job_def.run_tags, **tags},
        remote_job_origin=job_origin(job_name),
    )
    return execute_run(job, run, instance)
