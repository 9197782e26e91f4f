"""The retry policy of each kind of outside call: what is retried, how many times, and how long apart."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import tenacity


def _doubling_with_jitter(base_s: float) -> Callable[[tenacity.RetryCallState], float]:
    # base, 2x base, 4x base, ... each scaled by 0.5-1.5 at random, so that many workers whose
    # downloads broke off together (a mirror restarting) do not come back in step.
    return lambda state: base_s * 2 ** (state.attempt_number - 1) * (0.5 + random.random())


def crawl_download(retries: int, backoff_s: float, retried: tuple[type[BaseException], ...]) -> tenacity.AsyncRetrying:
    """A crawl file's download: ``retries`` more tries after a break-off, doubling with jitter.

    The last error is raised as it is (``reraise``); the caller wraps it with the attempt count.
    """
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=_doubling_with_jitter(backoff_s),
        retry=tenacity.retry_if_exception_type(retried),
        reraise=True,
    )


def image_fetch(retries: int, backoff_s: float) -> tenacity.AsyncRetrying:
    """An image URL's transient outcome (a broken connection, 429, 5xx): ``retries`` more tries, after
    its Retry-After when it sent one, else doubling with jitter. The last outcome comes back as it is:
    fetching an image never raises."""
    doubling = _doubling_with_jitter(backoff_s)

    def wait(state: tenacity.RetryCallState) -> float:
        retry_after = state.outcome.result().retry_after if state.outcome is not None else None
        return doubling(state) if retry_after is None else retry_after

    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=wait,
        retry=tenacity.retry_if_result(lambda outcome: outcome.transient),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome is not None else None,
    )


def unreachable_source(
    attempts: int,
    backoff_s: float,
    is_unreachable: Callable[[BaseException], bool],
    on_wait: Callable[[BaseException, int, float], None],
) -> tenacity.Retrying:
    """A crawl source a person waits on (`cah register`): ``attempts`` tries in all, doubling from
    ``backoff_s``; ``on_wait(error, next attempt, seconds)`` is told before each wait, so the waiting
    is visible. The last error is raised as it is; any other error at once."""

    def tell(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        on_wait(error or RuntimeError("no outcome"), state.attempt_number + 1, state.upcoming_sleep)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, exp_base=2),
        retry=tenacity.retry_if_exception(is_unreachable),
        before_sleep=tell,
        reraise=True,
    )


def hetzner_rate_limit(
    retries: int,
    backoff_s: float,
    is_rate_limit: Callable[[BaseException], bool],
    on_wait: Callable[[float], None],
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """A Hetzner API call refused for its rate limit: ``retries`` more tries, doubling, no jitter.

    hcloud retries briefly by itself; the hourly limit needs longer waits than it makes.
    ``on_wait(seconds)`` is told before each wait; any other error is raised at once.
    """
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=backoff_s, exp_base=2),
        retry=tenacity.retry_if_exception(is_rate_limit),
        before_sleep=lambda state: on_wait(state.upcoming_sleep),
        sleep=sleep,
        reraise=True,
    )


def sqlite_wal_switch(deadline_s: float, is_locked: Callable[[BaseException], bool]) -> tenacity.Retrying:
    """Switching a new SQLite file to WAL: SQLite answers "locked" at once to all but one opener,
    so the others try again every 10 ms until one has won (or ``deadline_s`` has passed)."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_delay(deadline_s),
        wait=tenacity.wait_fixed(0.01),
        retry=tenacity.retry_if_exception(is_locked),
        reraise=True,
    )


def postgres_transaction(retries: int, is_transient: Callable[[BaseException], bool]) -> tenacity.Retrying:
    """A Postgres transaction that lost a lock cycle (deadlock, serialization failure): redone up to
    ``retries`` times, 50 ms more apart each time; the whole transaction is safe to redo."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_incrementing(start=0.05, increment=0.05),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )


def existence_check(
    retries: int, backoff_s: float, is_transient: Callable[[BaseException], bool]
) -> tenacity.AsyncRetrying:
    """A dataset file asked for at registration (a HEAD where its folder lists nothing): ``retries`` more
    tries after a broken connection, 429 or 5xx, doubling with jitter; "not there" is an answer, not retried.
    The last error is raised as it is."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=_doubling_with_jitter(backoff_s),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )
