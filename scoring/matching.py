"""Text matching shared by fit and exclusion rules (English and Japanese).

Titles arrive as "VP of Sales", "Director" in full-width letters, or "営業部長". We normalise
with NFKC (full-width to ASCII, half-width kana to full width) and casefold, then match: an
ASCII keyword must stand as a whole word ("VP" matches "VP Sales", not "MVP"; "intern" does not
match "International"), while a keyword with any non-ASCII character matches as a substring,
because Japanese titles are not separated by spaces ("営業部長" contains "部長").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=65_536)
def normalise(text: str) -> str:
    """NFKC-normalised, casefolded, whitespace-collapsed ``text`` (memoised: the same titles,
    industries and domains come back on every event)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@lru_cache(maxsize=4096)
def _pattern(keyword: str) -> re.Pattern[str]:
    key = normalise(keyword)
    if key.isascii():
        return re.compile(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])")
    return re.compile(re.escape(key))


def has_keyword(text: str, keywords: Iterable[str]) -> bool:
    """Whether any of ``keywords`` occurs in ``text`` (see the module docstring for how)."""
    norm = normalise(text)
    return any(_pattern(k).search(norm) for k in keywords)


def is_one_of(value: str, candidates: Iterable[str]) -> bool:
    """Whether ``value`` equals one of ``candidates`` after normalisation."""
    norm = normalise(value)
    return any(norm == normalise(c) for c in candidates)


def domain_matches(email: str, domains: Iterable[str]) -> bool:
    """Whether the domain of ``email`` is one of ``domains`` or a subdomain of one.

    ``"ac.jp"`` and ``".ac.jp"`` both match ``u-tokyo.ac.jp``; ``"edu"`` matches ``mit.edu``.
    """
    domain = normalise(email.rsplit("@", 1)[-1])
    for entry in domains:
        suffix = normalise(entry).lstrip(".")
        if suffix and (domain == suffix or domain.endswith("." + suffix)):
            return True
    return False
