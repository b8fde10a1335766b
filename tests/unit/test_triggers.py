"""Triggers: cron across DST, intervals, one-offs, and what a restart owes (no sleeping)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlers.models.task_config import (
    CronSchedule,
    ExternalSchedule,
    IntervalSchedule,
    OneOffSchedule,
)
from crawlers.services.scheduler.triggers import (
    DEFAULT_GRACE,
    AnySchedule,
    FakeClock,
    SystemClock,
    due_fires,
    next_fire,
    previous_fire,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(
    zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def fires(schedule: AnySchedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire in (start, end], by next_fire."""
    found = []
    fire = next_fire(schedule, start)
    while fire is not None and fire <= end:
        found.append(fire)
        fire = next_fire(schedule, fire)
    return found


def wall(fires: list[datetime], zone: ZoneInfo) -> list[str]:
    return [fire.astimezone(zone).strftime("%m-%d %H:%M%z") for fire in fires]


# --- what we rely on in croniter ----------------------------------------------------


def test_croniter_matches_naive_wall_times_strictly() -> None:
    """All triggers.py takes from croniter: if that changes, this says so first."""
    ten = datetime(2026, 3, 29, 10)
    assert croniter("0 * * * *", ten).get_next(datetime) == datetime(2026, 3, 29, 11)
    assert croniter("0 * * * *", ten).get_prev(datetime) == datetime(2026, 3, 29, 9)
    just_after = ten + timedelta(microseconds=1)
    assert croniter("0 * * * *", just_after).get_prev(datetime) == ten
    assert croniter("0 * * * *", ten - timedelta(microseconds=1)).get_next(datetime) == ten
    # no zone, no DST: the 02:30 that Berlin skips that day is an ordinary wall time
    walls = croniter("30 2 * * *", datetime(2026, 3, 28, 12))
    assert walls.get_next(datetime) == datetime(2026, 3, 29, 2, 30)
    assert walls.get_next(datetime).tzinfo is None


def test_croniter_with_a_zone_is_what_we_avoid() -> None:
    """Why triggers.py maps wall times itself: croniter's own DST handling fires a fixed
    time twice on fall-back day, and in a 30-minute zone its next and prev disagree."""
    autumn = croniter("30 2 * * *", local(BERLIN, 2026, 10, 25, 0))
    first, second = autumn.get_next(datetime), autumn.get_next(datetime)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    start = datetime(2026, 4, 4, 14, 56, tzinfo=UTC).astimezone(lord_howe)  # 01:56 +11:00
    after_start = croniter("*/7 * * * *", start).get_next(datetime).astimezone(UTC)
    assert after_start == datetime(2026, 4, 4, 15, 30, tzinfo=UTC)  # 01:35 +10:30 skipped
    schedule = CronSchedule(cron="*/7 * * * *", timezone="Australia/Lord_Howe")
    assert next_fire(schedule, start) == datetime(2026, 4, 4, 15, 5, tzinfo=UTC)


# --- cron across DST ------------------------------------------------------------------


def test_a_daily_0230_in_berlin_fires_once_on_both_change_days() -> None:
    schedule = CronSchedule(cron="30 2 * * *", timezone="Europe/Berlin")
    spring = fires(schedule, local(BERLIN, 2026, 3, 27), local(BERLIN, 2026, 3, 31))
    assert wall(spring, BERLIN) == [
        "03-27 02:30+0100",
        "03-28 02:30+0100",
        "03-29 03:00+0200",  # 02:30 does not exist: the first instant after the gap
        "03-30 02:30+0200",
    ]
    autumn = fires(schedule, local(BERLIN, 2026, 10, 23), local(BERLIN, 2026, 10, 27))
    assert wall(autumn, BERLIN) == [
        "10-23 02:30+0200",
        "10-24 02:30+0200",
        "10-25 02:30+0200",  # the first 02:30 only
        "10-26 02:30+0100",
    ]
    assert all(fire.tzinfo is UTC for fire in spring + autumn)


def test_new_york_fixed_times_fire_once_on_both_change_days() -> None:
    spring = fires(
        CronSchedule(cron="30 2 * * *", timezone="America/New_York"),
        local(NEW_YORK, 2026, 3, 7),
        local(NEW_YORK, 2026, 3, 10),
    )
    assert wall(spring, NEW_YORK) == ["03-07 02:30-0500", "03-08 03:00-0400", "03-09 02:30-0400"]
    autumn = fires(
        CronSchedule(cron="30 1 * * *", timezone="America/New_York"),
        local(NEW_YORK, 2026, 10, 31),
        local(NEW_YORK, 2026, 11, 3),
    )
    assert wall(autumn, NEW_YORK) == ["10-31 01:30-0400", "11-01 01:30-0400", "11-02 01:30-0500"]


@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [
        ("Europe/Berlin", (2026, 3, 29), (2026, 10, 25)),
        ("America/New_York", (2026, 3, 8), (2026, 11, 1)),
    ],
)
def test_wildcard_hours_fire_every_real_hour(
    zone: str, spring: tuple[int, int, int], autumn: tuple[int, int, int]
) -> None:
    tz = ZoneInfo(zone)
    schedule = CronSchedule(cron="15 * * * *", timezone=zone)

    def day(date: tuple[int, int, int]) -> list[datetime]:
        start = datetime(*date, tzinfo=tz)
        return fires(schedule, start, start.replace(hour=23, minute=59))

    assert len(day(spring)) == 23
    assert len(day(autumn)) == 25
    for found in (day(spring), day(autumn)):
        gaps = {later - earlier for earlier, later in pairwise(found)}
        assert gaps == {timedelta(hours=1)}
    every_20 = CronSchedule(cron="*/20 * * * *", timezone=zone)
    start = datetime(*autumn, tzinfo=tz).astimezone(UTC)  # so that + is real time
    found = fires(every_20, start - timedelta(seconds=1), start + timedelta(hours=25))
    assert len(found) == 76  # the 25-hour day and the next midnight
    assert {later - earlier for earlier, later in pairwise(found)} == {timedelta(minutes=20)}


def test_fixed_hour_lists_fire_once_per_wall_time() -> None:
    schedule = CronSchedule(cron="0,30 1,2,3 * * *", timezone="Europe/Berlin")
    autumn = fires(schedule, local(BERLIN, 2026, 10, 25), local(BERLIN, 2026, 10, 25, 23))
    assert wall(autumn, BERLIN) == [
        "10-25 01:00+0200",
        "10-25 01:30+0200",
        "10-25 02:00+0200",
        "10-25 02:30+0200",
        "10-25 03:00+0100",
        "10-25 03:30+0100",
    ]
    spring = fires(schedule, local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 29, 23))
    assert wall(spring, BERLIN) == [
        "03-29 01:00+0100",
        "03-29 01:30+0100",
        "03-29 03:00+0200",  # 02:00 and 02:30 both land on the end of the gap: once
        "03-29 03:30+0200",
    ]


def test_a_fake_clock_drives_a_scheduler_loop_across_fall_back() -> None:
    """A loop ticking every 90 s for two days: every fire exactly once, on time."""
    hourly = CronSchedule(cron="0 * * * *", timezone="Europe/Berlin")
    daily = CronSchedule(cron="30 2 * * *", timezone="Europe/Berlin")
    clock = FakeClock(local(BERLIN, 2026, 10, 24, 12))
    last: dict[str, datetime | None] = {"hourly": clock.now(), "daily": clock.now()}
    fired: dict[str, list[datetime]] = {"hourly": [], "daily": []}
    end = local(BERLIN, 2026, 10, 26, 12)
    while clock.now() < end:
        clock.advance(90)
        now = clock.now()
        for name, schedule in (("hourly", hourly), ("daily", daily)):
            found = due_fires(schedule, last[name], now, "skip")
            fired[name] += found
            assert all(now - fire < timedelta(seconds=90) for fire in found)
            last[name] = now
    assert len(fired["hourly"]) == 49  # 48 hours of wall clock, 49 real hours
    assert wall(fired["daily"], BERLIN) == ["10-25 02:30+0200", "10-26 02:30+0100"]
    per_day = Counter(fire.astimezone(BERLIN).date().day for fire in fired["hourly"])
    assert per_day[25] == 25


# --- intervals, one-offs, external ----------------------------------------------------


def test_intervals_keep_to_their_anchor() -> None:
    every_5m = IntervalSchedule(every=300)
    assert next_fire(every_5m, datetime(2026, 1, 1, 10, 2, 31, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 5, tzinfo=UTC
    )  # epoch anchor: round times
    assert next_fire(every_5m, datetime(2026, 1, 1, 10, 5, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 10, tzinfo=UTC
    )
    anchor = datetime(2026, 1, 1, 10, 0, 7, tzinfo=UTC)
    anchored = IntervalSchedule(every="30s", anchor=anchor)
    assert next_fire(anchored, anchor - timedelta(days=1)) == anchor  # the first fire
    assert next_fire(anchored, anchor) == anchor + timedelta(seconds=30)
    assert previous_fire(anchored, anchor) is None
    assert previous_fire(anchored, anchor + timedelta(seconds=30)) == anchor
    assert previous_fire(anchored, anchor + timedelta(seconds=31)) == anchor + timedelta(seconds=30)
    # a day is 24 hours, not a calendar day: intervals do not follow DST
    daily = IntervalSchedule(every="1d", anchor=local(BERLIN, 2026, 3, 28, 9))
    assert next_fire(daily, local(BERLIN, 2026, 3, 28, 10)) == local(BERLIN, 2026, 3, 29, 10)


def test_one_offs_fire_once_and_external_triggers_never() -> None:
    at = datetime(2026, 12, 1, 8, tzinfo=UTC)
    once = OneOffSchedule(at=at.astimezone(BERLIN))
    assert next_fire(once, at - timedelta(seconds=1)) == at
    assert next_fire(once, at) is None
    assert previous_fire(once, at) is None
    assert previous_fire(once, at + timedelta(microseconds=1)) == at
    external = ExternalSchedule(trigger="external")
    assert next_fire(external, at) is None
    assert previous_fire(external, at) is None
    assert due_fires(external, None, at) == []


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        next_fire(IntervalSchedule(every=60), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        due_fires(IntervalSchedule(every=60), None, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        FakeClock(datetime(2026, 1, 1))


# --- missed fires -------------------------------------------------------------------

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
HOURLY = IntervalSchedule(every="1h")


def test_on_time_fires_are_due_under_both_policies() -> None:
    now = T0 + timedelta(seconds=2)
    for missed in ("run_once", "skip"):
        assert due_fires(HOURLY, T0 - timedelta(seconds=1), now, missed) == [T0]
        assert due_fires(HOURLY, now, now + timedelta(seconds=1), missed) == []  # window passed


def test_after_an_outage_run_once_catches_up_once_and_skip_does_not() -> None:
    down_since = T0 - timedelta(hours=5, minutes=30)  # five fires missed: 7:00 ... 11:00
    back = T0 - timedelta(minutes=20)
    assert due_fires(HOURLY, down_since, back, "run_once") == [T0 - timedelta(hours=1)]
    assert due_fires(HOURLY, down_since, back, "skip") == []
    # the next fire is on time again whatever the policy was
    assert due_fires(HOURLY, back, T0 + timedelta(seconds=1), "skip") == [T0]


def test_skip_keeps_a_fire_within_the_grace_window_only() -> None:
    assert due_fires(HOURLY, T0 - timedelta(hours=1), T0 + DEFAULT_GRACE / 2, "skip") == [T0]
    assert due_fires(HOURLY, T0 - timedelta(hours=1), T0 + DEFAULT_GRACE, "skip") == []
    late = T0 + timedelta(minutes=10)
    assert due_fires(
        HOURLY, T0 - timedelta(hours=1), late, "skip", grace=timedelta(minutes=15)
    ) == [T0]


def test_a_task_never_scheduled_has_missed_nothing() -> None:
    assert due_fires(HOURLY, None, T0 + timedelta(minutes=30), "run_once") == []
    assert due_fires(HOURLY, None, T0 + timedelta(seconds=5), "run_once") == [T0]


def test_a_one_off_missed_during_an_outage_runs_once_with_run_once() -> None:
    once = OneOffSchedule(at=T0)
    down_since = T0 - timedelta(hours=1)
    assert due_fires(once, down_since, T0 + timedelta(hours=3), "run_once") == [T0]
    assert due_fires(once, down_since, T0 + timedelta(hours=3), "skip") == []
    assert due_fires(once, T0 + timedelta(hours=3), T0 + timedelta(hours=4), "run_once") == []


def test_cron_catch_up_is_the_latest_missed_fire() -> None:
    daily = CronSchedule(cron="30 2 * * *", timezone="Europe/Berlin")
    down_since = local(BERLIN, 2026, 10, 20, 12)
    back = local(BERLIN, 2026, 10, 25, 2, 50, fold=1)  # after both 02:30s of the change day
    (catch_up,) = due_fires(daily, down_since, back, "run_once")
    assert wall([catch_up], BERLIN) == ["10-25 02:30+0200"]
    assert due_fires(daily, down_since, back, "skip") == []


def test_clocks() -> None:
    clock = FakeClock(local(BERLIN, 2026, 3, 29, 1, 59))
    assert clock.now().tzinfo is UTC
    assert clock.advance(60).astimezone(BERLIN).hour == 3
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    assert clock.set(T0) == T0
    now = SystemClock().now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


# --- properties -----------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
EXPRESSIONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0,30 1-3 * * *",
    "*/15 2 * * *",
    "0 */2 * * *",
    "59 23 * * 0",
    "0 0 1 * *",
    "0 0 29 2 *",
    "@daily",
]


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The hours of ``year`` at which ``zone``'s UTC offset changes."""
    hours = [datetime(year, 1, 1, tzinfo=UTC) + timedelta(hours=n) for n in range(366 * 24)]
    return [
        later
        for earlier, later in pairwise(hours)
        if earlier.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset()
    ]


CHANGES = sorted({change for zone in ZONES for change in transitions(ZoneInfo(zone), 2026)})
#: 2026 at a random second and microsecond, half of the time within 4 hours of a DST change
INSTANTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
) | st.builds(
    lambda change, offset: change + offset,
    st.sampled_from(CHANGES),
    st.timedeltas(min_value=timedelta(hours=-4), max_value=timedelta(hours=4)),
)


@st.composite
def cron_schedules(draw: st.DrawFn) -> CronSchedule:
    return CronSchedule(
        cron=draw(st.sampled_from(EXPRESSIONS)), timezone=draw(st.sampled_from(ZONES))
    )


@st.composite
def interval_schedules(draw: st.DrawFn) -> IntervalSchedule:
    anchor = draw(st.none() | INSTANTS)
    return IntervalSchedule(every=draw(st.floats(1, 10 * 86400)), anchor=anchor)


SCHEDULES = cron_schedules() | interval_schedules() | INSTANTS.map(lambda at: OneOffSchedule(at=at))


@settings(max_examples=300, deadline=None)
@given(schedule=SCHEDULES, after=INSTANTS)
def test_next_and_previous_fire_agree(schedule: AnySchedule, after: datetime) -> None:
    fire = next_fire(schedule, after)
    if fire is None:
        assert isinstance(schedule, OneOffSchedule)
        return
    assert fire > after
    earlier = previous_fire(schedule, fire)
    assert earlier is None or earlier <= after  # nothing fires in (after, fire)
    if earlier is not None:
        assert next_fire(schedule, earlier) == fire
    if isinstance(schedule, CronSchedule):
        wall = fire.astimezone(schedule.zone).replace(tzinfo=None)
        offset_changed = (fire - timedelta(seconds=1)).astimezone(schedule.zone).utcoffset() != (
            fire.astimezone(schedule.zone).utcoffset()
        )
        # the expression names this wall time, or it ends a DST gap that swallowed one
        assert croniter.match(schedule.fields, wall) or offset_changed


@settings(max_examples=200, deadline=None)
@given(
    schedule=SCHEDULES,
    last_fire=INSTANTS,
    window=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
    missed=st.sampled_from(["run_once", "skip"]),
)
def test_due_fires_are_the_latest_fire_in_the_window(
    schedule: AnySchedule, last_fire: datetime, window: timedelta, missed: str
) -> None:
    now = last_fire + window
    due = due_fires(schedule, last_fire, now, "skip" if missed == "skip" else "run_once")
    assert due == sorted(due)
    assert len(due) <= 1
    assert all(last_fire < fire <= now for fire in due)
    in_window = fires(schedule, last_fire, now)
    if in_window and (missed == "run_once" or in_window[-1] > now - DEFAULT_GRACE):
        assert due == [in_window[-1]]
    else:
        assert due == []
