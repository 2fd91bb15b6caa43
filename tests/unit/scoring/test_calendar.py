"""Follow-up due times on the business calendar (Asia/Tokyo, 09:00-18:00, Mon-Fri, holidays)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from scoring.calendar import due_at, is_business_day
from scoring.errors import CalendarError
from scoring.rules import Calendar, Timing
from tests.unit.scoring.factory import RULES

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=TOKYO)


@pytest.mark.parametrize(
    ("start", "timing", "due"),
    [
        # demo request: within 1 business hour
        ("2026-03-02 10:00", Timing(kind="business_hours", amount=1), "2026-03-02 11:00"),
        ("2026-03-02 17:30", Timing(kind="business_hours", amount=1), "2026-03-03 09:30"),
        ("2026-03-02 07:00", Timing(kind="business_hours", amount=1), "2026-03-02 10:00"),
        ("2026-03-06 17:45", Timing(kind="business_hours", amount=1), "2026-03-09 09:45"),
        ("2026-03-07 12:00", Timing(kind="business_hours", amount=1), "2026-03-09 10:00"),
        # webinar: next business day 10:00 (Friday -> Monday; skips the 2026-03-20 holiday)
        ("2026-03-02 15:00", Timing(kind="next_business_day"), "2026-03-03 10:00"),
        ("2026-03-06 15:00", Timing(kind="next_business_day"), "2026-03-09 10:00"),
        ("2026-03-19 11:00", Timing(kind="next_business_day"), "2026-03-23 10:00"),
        # content: within 2 business days = 18 business hours
        ("2026-03-02 15:00", Timing(kind="business_days", amount=2), "2026-03-04 15:00"),
        ("2026-03-05 15:00", Timing(kind="business_days", amount=2), "2026-03-09 15:00"),
        # wall-clock hours ignore the calendar
        ("2026-03-07 12:00", Timing(kind="hours", amount=4), "2026-03-07 16:00"),
    ],
)
def test_due_at(start: str, timing: Timing, due: str) -> None:
    assert due_at(jst(start), timing, RULES.calendar) == jst(due)


def test_due_at_is_utc() -> None:
    result = due_at(jst("2026-03-02 10:00"), Timing(kind="hours", amount=1), RULES.calendar)
    assert result.utcoffset() is not None
    assert result.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_holidays_and_weekends_are_not_business_days() -> None:
    assert is_business_day(jst("2026-03-02 00:00").date(), RULES.calendar)
    assert not is_business_day(jst("2026-03-07 00:00").date(), RULES.calendar)
    assert not is_business_day(jst("2026-03-20 00:00").date(), RULES.calendar)


def test_follow_up_timing_per_source_with_default() -> None:
    assert RULES.followup.timing("demo_request").kind == "business_hours"
    assert RULES.followup.timing("webinar").kind == "next_business_day"
    assert RULES.followup.timing(None) == RULES.followup.default
    assert RULES.followup.timing("organic") == RULES.followup.default


def test_calendar_without_business_time_fails_clearly() -> None:
    sundays = Calendar(timezone="Asia/Tokyo", weekdays=["sun"])
    assert due_at(jst("2026-03-02 10:00"), Timing(kind="next_business_day"), sundays) == jst(
        "2026-03-08 10:00"
    )
    # The model refuses an empty weekday list; a calendar built around validation still fails
    # with a clear error instead of looping forever.
    closed = sundays.model_copy(update={"weekdays": []})
    with pytest.raises(CalendarError, match="no business"):
        due_at(jst("2026-03-02 10:00"), Timing(kind="business_hours"), closed)
