"""When a schedule fires: pure functions of a schedule and instants, plus the clocks.

Every instant is timezone-aware and every returned one is in UTC. Nothing here reads
the time itself: the service passes ``clock.now()``, so tests drive a ``FakeClock``
across days and DST changes without sleeping.

Cron and DST. croniter (7.x) is used on naive wall-clock times only, where it is plain
field matching: ``get_next``/``get_prev`` from a naive start return the next/previous
matching wall time, strictly after/before it, with no time zone involved (pinned by a
test). Given an aware start in a zone, croniter handles DST itself, but not consistently:
in Australia/Lord_Howe (30-minute shift) ``get_next`` skips the repeated half hour that
``get_prev`` returns, and in every zone a fixed time in the repeated hour fires twice.
So the mapping from wall times to instants is ours, following Vixie cron:

* a wall time that exists once fires at that instant;
* a wall time skipped by spring forward fires once at the end of the gap if the
  expression names fixed times (``30 2 * * *`` in Europe/Berlin on 2026-03-29 fires at
  03:00 CEST; ``0,30 2 * * *`` also fires once then), and not at all if its minute or
  hour field starts with ``*`` (an hourly job simply has one hour less that day);
* a wall time repeated by fall back fires at its first occurrence, and at the second
  too if the minute or hour field starts with ``*`` (``*/20 * * * *`` keeps firing every
  20 real minutes through the repeated hour; a daily 02:30 job runs once).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from crawlers.models.task_config import (
    CronSchedule,
    ExternalSchedule,
    IntervalSchedule,
    Missed,
    OneOffSchedule,
)

AnySchedule = CronSchedule | IntervalSchedule | OneOffSchedule | ExternalSchedule

#: an interval's anchor when the schedule has none
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: how late a fire may be handled and still count as on time (``missed="skip"``)
DEFAULT_GRACE = timedelta(seconds=60)
_TICK = timedelta(microseconds=1)
#: croniter steps before giving up (a bound: a minutely expression needs ~400 near a DST change)
_MAX_CRON_STEPS = 10_000
#: how far from a DST change wall times and instants may be out of order (>= any shift)
_NEAR = timedelta(hours=3)


class Clock(Protocol):
    """Where the scheduler gets the time."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to, for tests."""

    def __init__(self, start: datetime) -> None:
        self._now = _aware(start, "start")

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Moves forward by ``seconds`` (never back: time does not) and returns the new now."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> datetime:
        """Jumps to ``when`` (forward or back: a test may simulate a bad system clock)."""
        self._now = _aware(when, "when")
        return self._now


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _wildcard(schedule: CronSchedule) -> bool:
    minute, hour = schedule.fields.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _changes_near(zone: ZoneInfo, instant: datetime) -> bool:
    """The zone's UTC offset changes within ``_NEAR`` of ``instant``."""
    before = (instant - _NEAR).astimezone(zone).utcoffset()
    return before != (instant + _NEAR).astimezone(zone).utcoffset()


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant the DST gap holding ``wall`` ends: its first existing wall minute."""
    probe = wall.replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        probe += timedelta(minutes=1)
        instant = probe.replace(tzinfo=zone).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == probe:
            return instant
    raise AssertionError("no DST gap lasts a day")  # pragma: no cover


def _instants(wall: datetime, zone: ZoneInfo, wildcard: bool) -> list[datetime]:
    """The instants a matching wall time fires at (the rules in the module docstring)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # the wall time exists twice
        return sorted((first, second)) if wildcard else [min(first, second)]
    return [] if wildcard else [_gap_end(wall, zone)]


def _cron_next(schedule: CronSchedule, after: datetime) -> datetime | None:
    zone, wildcard = schedule.zone, _wildcard(schedule)
    start = after.astimezone(zone).replace(tzinfo=None)
    if _changes_near(zone, after):  # earlier wall times may map to later instants
        start -= _NEAR
    walls = croniter(schedule.fields, start - timedelta(seconds=1))
    best: datetime | None = None
    horizon: datetime | None = None
    for _ in range(_MAX_CRON_STEPS):
        try:
            wall: datetime = walls.get_next(datetime)
        except CroniterBadDateError:  # no match within croniter's 50-year search
            return best
        if horizon is not None and wall > horizon:
            return best
        for instant in _instants(wall, zone, wildcard):
            if instant > after and (best is None or instant < best):
                best = instant
                if not _changes_near(zone, best):  # later wall times fire later
                    return best
                horizon = wall + _NEAR
    return best


def _cron_previous(schedule: CronSchedule, before: datetime) -> datetime | None:
    zone, wildcard = schedule.zone, _wildcard(schedule)
    start = before.astimezone(zone).replace(tzinfo=None)
    if _changes_near(zone, before):  # later wall times may map to earlier instants
        start += _NEAR
    walls = croniter(schedule.fields, start + timedelta(seconds=1))
    best: datetime | None = None
    horizon: datetime | None = None
    for _ in range(_MAX_CRON_STEPS):
        try:
            wall: datetime = walls.get_prev(datetime)
        except CroniterBadDateError:
            return best
        if horizon is not None and wall < horizon:
            return best
        for instant in reversed(_instants(wall, zone, wildcard)):
            if instant < before and (best is None or instant > best):
                best = instant
                if not _changes_near(zone, best):  # earlier wall times fired earlier
                    return best
                horizon = wall - _NEAR
    return best


def next_fire(schedule: AnySchedule, after: datetime) -> datetime | None:
    """The first fire strictly after ``after`` (None: the schedule never fires again).

    Intervals fire at ``anchor + k * every`` for k >= 0 (the epoch when no anchor is
    stored), so the answer depends on the schedule alone, never on when we last looked.
    """
    after = _aware(after, "after")
    if isinstance(schedule, CronSchedule):
        return _cron_next(schedule, after)
    if isinstance(schedule, IntervalSchedule):
        anchor = EPOCH if schedule.anchor is None else schedule.anchor.astimezone(UTC)
        if after < anchor:
            return anchor
        period = schedule.interval
        return anchor + ((after - anchor) // period + 1) * period
    if isinstance(schedule, OneOffSchedule):
        at = schedule.at.astimezone(UTC)
        return at if at > after else None
    return None  # external: only a trigger starts it


def previous_fire(schedule: AnySchedule, before: datetime) -> datetime | None:
    """The last fire strictly before ``before`` (None: there is none)."""
    before = _aware(before, "before")
    if isinstance(schedule, CronSchedule):
        return _cron_previous(schedule, before)
    if isinstance(schedule, IntervalSchedule):
        anchor = EPOCH if schedule.anchor is None else schedule.anchor.astimezone(UTC)
        if before <= anchor:
            return None
        period = schedule.interval
        return anchor + ((before - anchor - _TICK) // period) * period
    if isinstance(schedule, OneOffSchedule):
        at = schedule.at.astimezone(UTC)
        return at if at < before else None
    return None


def due_fires(
    schedule: AnySchedule,
    last_fire: datetime | None,
    now: datetime,
    missed: Missed = "run_once",
    grace: timedelta = DEFAULT_GRACE,
) -> list[datetime]:
    """The fires to run now for the window ``(last_fire, now]``: at most one, coalesced.

    ``last_fire`` is the ``now`` of the previous call (store it even when this returns
    nothing); None means the task was never scheduled, so nothing can have been missed.
    The rule, with L the latest fire in the window:

    * no fire in the window: ``[]``;
    * L later than ``now - grace`` (on time, however many fires precede it): ``[L]``;
    * L older (the scheduler was down or stalled): ``missed="run_once"`` gives ``[L]``,
      one catch-up run for all the missed fires, unless ``last_fire`` is None;
      ``missed="skip"`` gives ``[]``.

    One run stands for every fire it covers: back-to-back runs of the same task after
    an outage would fetch the same data again.
    """
    now = _aware(now, "now")
    latest = previous_fire(schedule, now + _TICK)
    if latest is None:
        return []
    if last_fire is not None and latest <= _aware(last_fire, "last_fire"):
        return []
    if latest > now - grace:
        return [latest]
    if missed == "run_once" and last_fire is not None:
        return [latest]
    return []
