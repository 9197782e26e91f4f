"""What a check finds on one segment, and what every stage's checks share to find it."""

from collections.abc import Callable
from dataclasses import dataclass, field

from cah_resources.contract import list_shards
from cah_resources.storage import DataRoot

SHOWN = 5  # offending values shown in a check's metadata


@dataclass(frozen=True)
class Verdict:
    """What a check found on one segment: passed or not, why in one line, and the counts behind it."""

    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def missing(path: str, names: tuple[str, ...]) -> dict[str, Verdict]:
    """Every named check failed because ``path``, which they all read, does not exist."""
    return {name: Verdict(False, f"{path} does not exist") for name in names}


def run_here(fn: Callable, units: list, **kwargs) -> list:
    """Runs ``fn(unit, **kwargs)`` for each unit in this process; Dagster's checks pass the compute engine's instead."""
    return [fn(unit, **kwargs) for unit in units]


def shard_numbers(root: DataRoot, folder: str) -> tuple[list[int], set[int]]:
    """Shards that have a parquet, and shards that have a .done marker."""
    listing = list_shards(root, folder)
    done = {int(name) for name in listing.finished}
    return sorted({int(name) for name in listing.written} | done), done
