"""Dispatch policy: priority order under limits, skip/queue/replace, and retry back-off."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawlers.models.task_config import Concurrency, RetryPolicy, TaskConfig
from crawlers.services.scheduler.queue import (
    Dispatch,
    FiredJob,
    PriorityDispatcher,
    Skipped,
    retry_delay,
)

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def fired(
    task: str,
    job_id: str,
    priority: int = 50,
    concurrency: Concurrency = "skip",
    max_parallel: int = 1,
) -> FiredJob:
    return FiredJob(task, priority, T0, job_id, concurrency, max_parallel)


def started(round_dispatched: list[Dispatch]) -> list[str]:
    return [dispatch.job.job_id for dispatch in round_dispatched]


def test_priority_order_under_a_global_limit_of_two() -> None:
    """Ten jobs of ten tasks, two slots: highest priority first, FIFO within a priority."""
    priorities = [10, 90, 50, 90, 10, 50, 70, 50, 90, 30]
    dispatcher = PriorityDispatcher()
    for index, priority in enumerate(priorities):
        dispatcher.push(fired(f"task-{index}", f"job-{index}", priority))
    expected = [
        f"job-{index}" for index in sorted(range(10), key=lambda index: (-priorities[index], index))
    ]
    assert [job.job_id for job in dispatcher.waiting()] == expected

    running: dict[str, list[str]] = {}
    order: list[str] = []
    while len(dispatcher):
        result = dispatcher.dispatch(running, global_limit=2)
        assert result.skipped == []
        assert len(started(result.dispatched)) == 2  # never more than the free slots
        for dispatch in result.dispatched:
            running[dispatch.job.task] = [dispatch.job.job_id]
        assert sum(len(ids) for ids in running.values()) <= 2
        order += started(result.dispatched)
        assert dispatcher.dispatch(running, global_limit=2).dispatched == []  # full: none
        running.pop(next(iter(running)))  # one ends, then the other
        running.pop(next(iter(running)))
    assert order == expected


def test_jobs_running_elsewhere_count_against_the_global_limit() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-1"))
    dispatcher.push(fired("b", "b-1"))
    result = dispatcher.dispatch({"other": ["x-1"]}, global_limit=2)
    assert started(result.dispatched) == ["a-1"]
    assert dispatcher.dispatch({"other": ["x-1"], "a": ["a-1"]}, global_limit=2).dispatched == []
    assert started(dispatcher.dispatch({}, global_limit=2).dispatched) == ["b-1"]


def test_skip_drops_a_fire_while_the_task_runs() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-2"))
    result = dispatcher.dispatch({"a": ["a-1"]}, global_limit=10)
    assert result.dispatched == []
    assert result.skipped == [
        Skipped(fired("a", "a-2"), "1 job(s) of the task still running (max_parallel 1)")
    ]
    assert len(dispatcher) == 0
    dispatcher.push(fired("a", "a-3"))
    assert started(dispatcher.dispatch({}, global_limit=10).dispatched) == ["a-3"]


def test_skip_also_applies_to_a_second_fire_of_the_same_round() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-1"))
    dispatcher.push(fired("a", "a-2"))
    result = dispatcher.dispatch({}, global_limit=10)
    assert started(result.dispatched) == ["a-1"]
    assert [skip.job.job_id for skip in result.skipped] == ["a-2"]


def test_a_skip_fire_waiting_for_a_global_slot_is_not_skipped() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-1"))
    result = dispatcher.dispatch({"b": ["b-1"]}, global_limit=1)
    assert (result.dispatched, result.skipped) == ([], [])
    assert started(dispatcher.dispatch({}, global_limit=1).dispatched) == ["a-1"]


def test_queue_waits_for_the_task_without_blocking_others() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-2", priority=90, concurrency="queue"))
    dispatcher.push(fired("b", "b-1", priority=10))
    result = dispatcher.dispatch({"a": ["a-1"]}, global_limit=5)
    assert started(result.dispatched) == ["b-1"]  # a-2 waits, b-1 goes past it
    assert result.skipped == []
    assert [job.job_id for job in dispatcher.waiting()] == ["a-2"]
    assert dispatcher.dispatch({"a": ["a-1"], "b": ["b-1"]}, global_limit=5).dispatched == []
    assert started(dispatcher.dispatch({"b": ["b-1"]}, global_limit=5).dispatched) == ["a-2"]


def test_queue_with_max_parallel_two() -> None:
    dispatcher = PriorityDispatcher()
    for n in range(1, 5):
        dispatcher.push(fired("a", f"a-{n}", concurrency="queue", max_parallel=2))
    assert started(dispatcher.dispatch({}, global_limit=10).dispatched) == ["a-1", "a-2"]
    running = {"a": ["a-1", "a-2"]}
    assert dispatcher.dispatch(running, global_limit=10).dispatched == []
    assert started(dispatcher.dispatch({"a": ["a-2"]}, global_limit=10).dispatched) == ["a-3"]
    assert [job.job_id for job in dispatcher.waiting()] == ["a-4"]


def test_replace_cancels_the_oldest_running_job() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-3", concurrency="replace"))
    # the global limit is full, yet the new job takes over the cancelled one's slot
    result = dispatcher.dispatch({"a": ["a-1"], "b": ["b-1"]}, global_limit=2)
    assert result.dispatched == [Dispatch(fired("a", "a-3", concurrency="replace"), cancel="a-1")]
    dispatcher.push(fired("a", "a-4", concurrency="replace", max_parallel=2))
    result = dispatcher.dispatch({"a": ["a-2", "a-3"]}, global_limit=10)
    assert [(d.job.job_id, d.cancel) for d in result.dispatched] == [("a-4", "a-2")]


def test_replace_with_a_free_slot_cancels_nothing() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-2", concurrency="replace", max_parallel=2))
    result = dispatcher.dispatch({"a": ["a-1"]}, global_limit=10)
    assert [(d.job.job_id, d.cancel) for d in result.dispatched] == [("a-2", None)]
    dispatcher.push(fired("a", "a-3", concurrency="replace"))
    assert dispatcher.dispatch({"b": ["b-1"]}, global_limit=1).dispatched == []  # no slot


def test_only_the_newest_fires_of_a_replace_task_survive() -> None:
    dispatcher = PriorityDispatcher()
    for n in range(1, 4):
        dispatcher.push(fired("a", f"a-{n}", concurrency="replace"))
    result = dispatcher.dispatch({"a": ["a-0"]}, global_limit=10)
    assert [(d.job.job_id, d.cancel) for d in result.dispatched] == [("a-3", "a-0")]
    assert [(s.job.job_id, s.reason) for s in result.skipped] == [
        ("a-1", "superseded by a newer fire of the task"),
        ("a-2", "superseded by a newer fire of the task"),
    ]
    assert len(dispatcher) == 0


def test_waiting_jobs_can_be_removed_and_ids_are_unique() -> None:
    dispatcher = PriorityDispatcher()
    dispatcher.push(fired("a", "a-1"))
    dispatcher.push(fired("b", "b-1"))
    with pytest.raises(ValueError, match="already waiting"):
        dispatcher.push(fired("a", "a-1"))
    assert dispatcher.remove("a-1") == fired("a", "a-1")
    assert dispatcher.remove("a-1") is None
    assert [job.job_id for job in dispatcher.waiting()] == ["b-1"]
    dispatcher.push(fired("a", "a-1"))  # gone, so the id is free again
    with pytest.raises(ValueError, match="global_limit"):
        dispatcher.dispatch({}, global_limit=-1)
    with pytest.raises(ValueError, match="max_parallel"):
        fired("a", "a-9", max_parallel=0)


def test_a_fired_job_takes_its_policy_from_the_config() -> None:
    config = TaskConfig.model_validate(
        {
            "name": "prices",
            "spider": "prices",
            "schedule": {"every": 60},
            "priority": 7,
            "concurrency": "queue",
            "max_parallel": 3,
        }
    )
    job = FiredJob.of(config, T0, "prices:1")
    assert job == FiredJob("prices", 7, T0, "prices:1", "queue", 3)


@given(
    jobs=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(0, 100),
            st.sampled_from(["skip", "queue", "replace"]),
            st.integers(1, 3),
        ),
        max_size=30,
    ),
    running=st.dictionaries(st.integers(0, 4), st.integers(0, 3)),
    limit=st.integers(0, 6),
)
def test_a_round_never_exceeds_a_limit(
    jobs: list[tuple[int, int, Concurrency, int]], running: dict[int, int], limit: int
) -> None:
    dispatcher = PriorityDispatcher()
    for n, (task, priority, concurrency, max_parallel) in enumerate(jobs):
        dispatcher.push(
            FiredJob(
                f"t{task}", priority, T0 + timedelta(seconds=n), f"j{n}", concurrency, max_parallel
            )
        )
    ids = {f"t{task}": [f"r{task}-{k}" for k in range(count)] for task, count in running.items()}
    before = sum(len(v) for v in ids.values())
    result = dispatcher.dispatch(ids, limit)
    cancelled = [d.cancel for d in result.dispatched if d.cancel is not None]
    fresh = [d for d in result.dispatched if d.cancel is None]
    assert len(fresh) <= max(0, limit - before)  # new slots only from free ones
    assert len(set(cancelled)) == len(cancelled)
    assert all(any(c in v for v in ids.values()) for c in cancelled)  # only running jobs
    handled = [d.job.job_id for d in result.dispatched] + [s.job.job_id for s in result.skipped]
    left = [job.job_id for job in dispatcher.waiting()]
    assert sorted(handled + left) == sorted(f"j{n}" for n in range(len(jobs)))
    # per task: no task runs more than it did or its dispatched jobs' policy allows
    for name in {f"t{task}" for task, *_ in jobs}:
        before_round = ids.get(name, [])
        mine = [d for d in result.dispatched if d.job.task == name]
        after_round = len(before_round) - sum(c in before_round for c in cancelled) + len(mine)
        if mine:
            assert after_round <= max(*(d.job.max_parallel for d in mine), len(before_round))
    # order: what started is in priority order
    priorities = [d.job.priority for d in fresh]
    assert priorities == sorted(priorities, reverse=True)


# --- retry back-off ---------------------------------------------------------------------


class Fixed:
    """A random source that always says the same."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_back_off_grows_then_caps() -> None:
    policy = RetryPolicy(
        max_retries=10, backoff_seconds=10, backoff_factor=2, max_backoff_seconds=100, jitter=0
    )
    delays = [retry_delay(policy, attempt, Fixed(0.5)) for attempt in range(1, 7)]
    assert delays == [10, 20, 40, 80, 100, 100]
    assert retry_delay(policy, 100_000, Fixed(0.5)) == 100  # no overflow
    assert retry_delay(RetryPolicy(backoff_seconds=0, max_backoff_seconds=0), 5, Fixed(0.5)) == 0
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(policy, 0, Fixed(0.5))


def test_jitter_only_shortens() -> None:
    policy = RetryPolicy(backoff_seconds=10, jitter=0.1)
    assert retry_delay(policy, 1, Fixed(0.0)) == 10
    assert retry_delay(policy, 1, Fixed(0.999999)) == pytest.approx(9.0, abs=1e-4)
    capped = RetryPolicy(backoff_seconds=10, max_backoff_seconds=60, jitter=0.5)
    spread = {retry_delay(capped, 20, random.Random(seed)) for seed in range(50)}
    assert len(spread) > 40  # jobs failed together do not retry together, even at the cap
    assert all(30 < delay <= 60 for delay in spread)


@given(
    base=st.floats(0, 1000),
    factor=st.floats(1, 10),
    cap_extra=st.floats(0, 10_000),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 5000),
    seed=st.integers(0, 2**32),
)
def test_back_off_stays_within_its_bounds(
    base: float, factor: float, cap_extra: float, jitter: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(
        backoff_seconds=base,
        backoff_factor=factor,
        max_backoff_seconds=base + cap_extra,
        jitter=jitter,
    )
    delay = retry_delay(policy, attempt, random.Random(seed))
    ceiling = expected_ceiling(policy, attempt)
    tolerance = 1e-9 * (1 + ceiling)  # float rounding
    assert ceiling * (1 - jitter) - tolerance <= delay <= ceiling + tolerance
    if attempt > 1:
        assert ceiling >= expected_ceiling(policy, attempt - 1) - tolerance  # never shrinks


def expected_ceiling(policy: RetryPolicy, attempt: int) -> float:
    """``min(cap, base * factor ** (attempt - 1))`` in logarithms, where floats overflow."""
    base, cap = policy.backoff_seconds, policy.max_backoff_seconds
    if base == 0:
        return 0.0
    if math.log(base) + (attempt - 1) * math.log(policy.backoff_factor) >= math.log(cap):
        return cap
    try:
        return float(min(cap, base * policy.backoff_factor ** (attempt - 1)))
    except OverflowError:
        return math.exp(math.log(base) + (attempt - 1) * math.log(policy.backoff_factor))
