"""Domain errors of the scoring core.

Like procrastinate's ``exceptions.py``: one base class, and each class's docstring is its default
message, so ``raise RulesError()`` still says something useful.
"""

from __future__ import annotations


class ScoringError(Exception):
    """Scoring failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class RulesError(ScoringError):
    """The rule set is invalid."""


class CalendarError(ScoringError):
    """The business calendar has no business time in reach."""
