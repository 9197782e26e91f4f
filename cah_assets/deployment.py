"""Which resource set a code location uses: the deployment recorded in the Dagster instance's own folder.

`cah demo` writes ``$DAGSTER_HOME/cah_deployment.json``; `dagster dev` / `cah dev` on that instance then
loads the demo's crawl, data root, image web and tiny CLIP without any environment variable. An instance
without the file is a ``local`` one: one-machine defaults, which deploy/cah.env overrides in production.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

DEPLOYMENT_FILE = "cah_deployment.json"
DEPLOYMENTS = ("local", "demo")
NO_INSTANCE = (
    "DAGSTER_HOME is not set: run `make demo` and use its instance (DAGSTER_HOME=$PWD/.demo/dagster_home), "
    "or export DAGSTER_HOME=<a folder for runs and event logs>"
)


@dataclass(frozen=True)
class Deployment:
    """One instance's resource set: its name and what differs from the one-machine defaults."""

    name: str = "local"
    crawl_source: str = ""  # folder or URL holding crawl-data/<CRAWL>/wat.paths.gz; empty: Common Crawl
    data_root: str = ""  # empty: ./data
    # demo: the local image web's seed and host:port addresses, so `cah dev` serves the same URLs again
    web_seed: int = 0
    web_hosts: list[str] = field(default_factory=list)
    # demo: where a browser reads the data root (report plots shown inline in the UI); empty: none
    files_url: str = ""

    def __post_init__(self) -> None:
        if self.name not in DEPLOYMENTS:
            raise ValueError(f"deployment {self.name!r} is not one of {', '.join(DEPLOYMENTS)}")


def deployment_path(home: str) -> str:
    return os.path.join(home, DEPLOYMENT_FILE)


def read_deployment(home: str | None = None) -> Deployment:
    """The deployment recorded in ``home`` (default ``$DAGSTER_HOME``); ``local`` when none is recorded."""
    home = home if home is not None else os.environ.get("DAGSTER_HOME", "")
    path = deployment_path(home) if home else ""
    if not path or not os.path.exists(path):
        return Deployment()
    with open(path) as handle:
        return Deployment(**json.load(handle))


def write_deployment(home: str, deployment: Deployment) -> str:
    """Record ``deployment`` in the instance folder ``home`` (atomically); returns the file's path."""
    os.makedirs(home, exist_ok=True)
    path = deployment_path(home)
    with open(path + ".tmp", "w") as handle:
        json.dump(asdict(deployment), handle, indent=2)
    os.replace(path + ".tmp", path)
    return path


def instance_home() -> str:
    """``$DAGSTER_HOME``, or a one-line error saying how to set it."""
    home = os.environ.get("DAGSTER_HOME", "")
    if not home:
        raise LookupError(NO_INSTANCE)
    if not os.path.isdir(home):
        raise LookupError(f"DAGSTER_HOME={home} is not a folder: create it (mkdir -p) or run `make demo` for one")
    return home
