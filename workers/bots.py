"""Bot traffic: crawlers and link scanners are dropped before scoring (and counted)."""

from __future__ import annotations

import re

#: Common crawlers, monitoring, and the link scanners mail gateways use to pre-click links.
DEFAULT_BOT_PATTERN = (
    r"bot\b|bot/|crawler|spider|slurp|crawling|headlesschrome|phantomjs|python-requests|"
    r"curl/|wget/|go-http-client|java/|okhttp|facebookexternalhit|linkedinbot|"
    r"bingpreview|proofpoint|mimecast|barracuda|safelinks|urlscan|ahrefs|semrush|"
    r"lighthouse|pingdom|uptimerobot|statuscake"
)


class BotFilter:
    """Case-insensitive user-agent match against one configurable pattern."""

    def __init__(self, pattern: str = DEFAULT_BOT_PATTERN) -> None:
        self._regex = re.compile(pattern, re.IGNORECASE)

    def is_bot(self, user_agent: str | None) -> bool:
        return user_agent is not None and self._regex.search(user_agent) is not None
