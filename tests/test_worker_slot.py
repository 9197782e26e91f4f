"""A unit in its tail gives its Dask thread to the next unit, one tail per thread, on a real cluster."""

import pytest
from distributed import Client, Event, LocalCluster

from cah_resources.fleet.worker_slot import WorkerSlot
from cah_resources.image_shards.stage import TailHandOff


@pytest.fixture(scope="module")
def one_thread():
    """One worker with one thread: without a slot given up, units run strictly one after another."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def tail_waiting_for_the_next_unit(leave: bool, name: str) -> tuple[bool, bool]:
    with WorkerSlot() as slot:
        left = slot.leave() if leave else False
        return left, Event(name).wait(timeout=3 if leave else 1)


def next_unit(name: str) -> None:
    Event(name).set()


@pytest.mark.parametrize("leave", [True, False])
def test_the_next_unit_starts_only_once_a_unit_leaves_its_slot(one_thread, leave):
    name = f"next-started-{leave}"
    first = one_thread.submit(tail_waiting_for_the_next_unit, leave, name, pure=False)
    second = one_thread.submit(next_unit, name, pure=False)
    assert first.result(timeout=30) == (leave, leave)
    second.result(timeout=30)


def tail_until_released(name: str) -> bool:
    with WorkerSlot() as slot:
        left = slot.leave()
        Event(f"{name}-in-tail").set()
        Event(f"{name}-release").wait(timeout=20)
        return left


def try_to_leave() -> bool:
    with WorkerSlot() as slot:
        return slot.leave()


def test_a_second_unit_keeps_its_slot_while_another_tail_fills_the_thread(one_thread):
    first = one_thread.submit(tail_until_released, "held", pure=False)
    assert Event("held-in-tail", client=one_thread).wait(timeout=20)
    assert one_thread.submit(try_to_leave, pure=False).result(timeout=20) is False
    Event("held-release", client=one_thread).set()
    assert first.result(timeout=20) is True
    assert one_thread.submit(try_to_leave, pure=False).result(timeout=20) is True  # the first tail has ended


def test_outside_a_dask_task_there_is_no_slot_to_leave():
    with WorkerSlot() as slot:
        assert slot.leave() is False and not slot.left


def test_the_tail_is_handed_off_when_the_rows_left_fall_to_the_mark_and_asked_again_if_refused():
    asked: list[int] = []
    answers = iter([False, True])
    tail = TailHandOff(10, 3, lambda: asked.append(len(asked)) or next(answers))
    for _ in range(6):
        tail.row_done()
    assert asked == []  # 4 rows left
    tail.row_done()
    assert asked == [0] and not tail.done  # 3 left: refused
    tail.row_done()
    assert asked == [0, 1] and tail.done  # 2 left: asked again, agreed
    tail.row_done()
    assert asked == [0, 1]


def test_a_shard_no_larger_than_the_mark_never_hands_off():
    asked: list[bool] = []
    tail = TailHandOff(3, 3, lambda: asked.append(True) or True)
    for _ in range(3):
        tail.row_done()
    assert asked == []
