"""The collector's pace while shards download: raised for the event loop, restored after, shared by threads."""

import gc
import threading

import pytest
from shard_inputs import SEGMENT, SETTINGS, write_candidates

from cah_resources.image_shards import stage
from cah_resources.image_shards.gc_pacing import YOUNG_OBJECTS, fewer_collections
from cah_resources.samples.local_web import LocalImageWeb, LocalUrl
from cah_resources.storage import DataRoot


@pytest.fixture
def default_pace():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_young_objects_are_collected_less_often_inside_and_as_before_after(default_pace):
    with fewer_collections():
        assert gc.get_threshold() == (YOUNG_OBJECTS, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_side_by_side_shards_keep_the_pace_until_the_last_one_ends(default_pace):
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with fewer_collections():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with fewer_collections():
            second_in.set()
            first_out.wait(5)
            seen["after the first left"] = gc.get_threshold()
        seen["after both left"] = gc.get_threshold()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after the first left": (YOUNG_OBJECTS, 10, 10), "after both left": (700, 10, 10)}


@pytest.mark.parametrize("threshold", [(0, 10, 10), (50_000, 10, 10)])
def test_a_collector_turned_off_or_already_slower_is_left_alone(threshold):
    before = gc.get_threshold()
    gc.set_threshold(*threshold)
    try:
        with fewer_collections():
            assert gc.get_threshold() == threshold
        assert gc.get_threshold() == threshold
    finally:
        gc.set_threshold(*before)


def test_a_shard_downloads_at_the_slower_pace_and_restores_it(default_pace, tmp_path, monkeypatch):
    seen = []
    download_rows = stage._download_rows

    async def watched(*args, **kwargs):
        seen.append(gc.get_threshold())
        return await download_rows(*args, **kwargs)

    monkeypatch.setattr(stage, "_download_rows", watched)
    root = DataRoot(str(tmp_path / "data"))
    with LocalImageWeb(n_hosts=1) as web:
        write_candidates(root, SEGMENT, [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(2)])
        (unit,) = stage.plan_shards(root, SEGMENT, 10)
        marker = stage.download_shard(unit, SETTINGS)
    assert marker["status_counts"] == {"ok": 2}
    assert seen == [(YOUNG_OBJECTS, 10, 10)] and gc.get_threshold() == (700, 10, 10)
