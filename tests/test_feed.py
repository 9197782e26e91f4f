"""Which segments the schedule feeds next: never-started ones, active crawls in order, under the in-flight cap."""

from cah_resources.crawl.feed import next_segments

OLD, NEW = "CC-MAIN-2024-10", "CC-MAIN-2024-18"
KEYS = [f"{crawl}_{i:05d}" for crawl in (OLD, NEW) for i in range(3)]


def test_without_active_crawls_the_newest_crawl_comes_first_in_segment_order():
    chosen, running = next_segments(KEYS, set(), set(), [], count=4, max_in_flight=10)
    assert chosen == [f"{NEW}_00000", f"{NEW}_00001", f"{NEW}_00002", f"{OLD}_00000"] and running == 0


def test_active_crawls_are_fed_in_their_order_and_others_wait():
    chosen, _ = next_segments(KEYS, set(), set(), [OLD], count=5, max_in_flight=10)
    assert chosen == [f"{OLD}_00000", f"{OLD}_00001", f"{OLD}_00002"]


def test_started_and_in_flight_segments_are_not_picked_again():
    started, running = {f"{NEW}_00000"}, {f"{NEW}_00001"}
    chosen, count = next_segments(KEYS, started, running, [NEW], count=5, max_in_flight=10)
    assert chosen == [f"{NEW}_00002"] and count == 1


def test_the_cap_counts_segments_already_in_flight():
    running = {f"{NEW}_00000", f"{NEW}_00001"}
    assert next_segments(KEYS, running, running, [], count=5, max_in_flight=3)[0] == [f"{NEW}_00002"]
    assert next_segments(KEYS, running, running, [], count=5, max_in_flight=2) == ([], 2)
