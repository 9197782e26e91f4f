"""Which pending segments enter the pipeline next: active crawls first, newest crawl first, under an in-flight cap."""

from cah_resources.crawl.segments import parse_segment_key


def next_segments(
    keys: list[str], started: set[str], in_flight: set[str], active: list[str], count: int, max_in_flight: int
) -> tuple[list[str], int]:
    """Up to ``count`` never-started segments of the active crawls, leaving at most ``max_in_flight`` in flight.

    ``started``: segments whose first stage has any status (materialized, failed or running);
    ``in_flight``: segments with any stage queued or running. Returns the chosen segments and how
    many are in flight now. A segment whose first stage failed is not picked again: a person
    retries it (its run failed after every retry). No ``active`` crawl: every crawl, newest first.
    """
    by_crawl: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        crawl, index = parse_segment_key(key)
        if key not in started and key not in in_flight:
            by_crawl.setdefault(crawl, []).append((index, key))
    order = active or sorted(by_crawl, reverse=True)
    room = max(0, min(count, max_in_flight - len(in_flight)))
    pending = [key for crawl in order for _, key in sorted(by_crawl.get(crawl, []))]
    return pending[:room], len(in_flight)
