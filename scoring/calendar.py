"""Business-calendar arithmetic: when is a follow-up due?

All arithmetic happens on the calendar's local wall clock (``zoneinfo``); results are returned
in UTC. Business time is ``business_start``..``business_end`` on the configured weekdays that are
not holidays.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from scoring.errors import CalendarError
from scoring.rules import WEEKDAYS, Calendar, Timing

#: How far ahead we look for business time before concluding the calendar has none.
_MAX_DAYS = 3660


def is_business_day(day: date, calendar: Calendar) -> bool:
    """Whether ``day`` is a configured weekday and not a holiday."""
    return WEEKDAYS[day.weekday()] in calendar.weekdays and day not in calendar.holidays


def local_date(moment: datetime, calendar: Calendar) -> date:
    """The calendar-local date of ``moment``."""
    return moment.astimezone(calendar.zone).date()


def _day_length(calendar: Calendar) -> timedelta:
    day = date(2000, 1, 3)
    start = datetime.combine(day, calendar.business_start)
    return datetime.combine(day, calendar.business_end) - start


def add_business_time(start: datetime, amount: timedelta, calendar: Calendar) -> datetime:
    """``start`` plus ``amount`` of business time (time outside business hours does not count).

    A start outside business hours begins counting at the next opening.

    Raises:
        CalendarError: no business time within ten years (e.g. every day is a holiday).
    """
    zone = calendar.zone
    local = start.astimezone(zone)
    remaining = amount
    day = local.date()
    for _ in range(_MAX_DAYS):
        if is_business_day(day, calendar):
            opens = datetime.combine(day, calendar.business_start, zone)
            closes = datetime.combine(day, calendar.business_end, zone)
            begin = max(local, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return (begin + remaining).astimezone(UTC)
                remaining -= available
        day += timedelta(days=1)
    raise CalendarError(f"no business time within {_MAX_DAYS} days of {start.isoformat()}")


def next_business_day(start: datetime, calendar: Calendar) -> date:
    """The first business day strictly after ``start``'s local date."""
    day = local_date(start, calendar)
    for _ in range(_MAX_DAYS):
        day += timedelta(days=1)
        if is_business_day(day, calendar):
            return day
    raise CalendarError(f"no business day within {_MAX_DAYS} days of {start.isoformat()}")


def due_at(start: datetime, timing: Timing, calendar: Calendar) -> datetime:
    """When a follow-up created at ``start`` is due, in UTC.

    * ``hours``: ``amount`` wall-clock hours after ``start``.
    * ``business_hours``: ``amount`` hours of business time after ``start``.
    * ``business_days``: ``amount`` business days of business time, i.e. ``amount`` times the
      length of a business day (Monday 15:00 + 2 business days = Wednesday 15:00).
    * ``next_business_day``: at ``timing.at`` local time on the next business day.
    """
    if timing.kind == "hours":
        return (start + timedelta(hours=timing.amount)).astimezone(UTC)
    if timing.kind == "business_hours":
        return add_business_time(start, timedelta(hours=timing.amount), calendar)
    if timing.kind == "business_days":
        return add_business_time(start, _day_length(calendar) * timing.amount, calendar)
    day = next_business_day(start, calendar)
    return datetime.combine(day, timing.at, calendar.zone).astimezone(UTC)
