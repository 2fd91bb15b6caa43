"""Who may call what: collector write keys (per site) and sales bearer tokens (per rep, admin).

Secrets come from settings as ``name=secret[,name=secret]``. Comparisons are constant-time so
a caller cannot learn a key byte by byte from response times.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

#: Cookie the call-list page keeps the sales token in (HttpOnly, SameSite=Strict).
SALES_COOKIE = "leadcycle_sales"


class ConfigError(ValueError):
    """A secrets setting is not in the ``name=secret[,name=secret]`` form."""


def parse_pairs(setting: str, value: SecretStr | None) -> dict[str, str]:
    """``name=secret,...`` -> {name: secret}; an unset setting gives an empty map."""
    if value is None:
        return {}
    pairs: dict[str, str] = {}
    for part in value.get_secret_value().split(","):
        if not part.strip():
            continue
        name, sep, secret = part.partition("=")
        if not sep or not name.strip() or not secret.strip():
            # Never echo the value: it holds secrets.
            raise ConfigError(f"{setting} must look like name=secret[,name=secret]")
        pairs[name.strip()] = secret.strip()
    return pairs


def _match(secrets: dict[str, str], given: str) -> str | None:
    found = None
    for name, secret in secrets.items():
        # No early exit: every configured secret is compared.
        if hmac.compare_digest(secret.encode(), given.encode()):
            found = name
    return found


@dataclass(frozen=True)
class WriteKeys:
    """Collector write keys: public (they ship inside pages) but they name and gate a site."""

    by_site: dict[str, str]

    def site_for(self, request: web.Request) -> str | None:
        """The site whose key the request carries (header or ``?key=``), else None."""
        given = request.headers.get("X-Leadcycle-Key") or request.query.get("key") or ""
        return _match(self.by_site, given) if given else None


@dataclass(frozen=True)
class Principal:
    """An authenticated sales user: a rep, or an admin (``rep is None``)."""

    rep: str | None

    @property
    def admin(self) -> bool:
        return self.rep is None

    def may_see(self, rep: str | None) -> bool:
        return self.admin or rep == self.rep


@dataclass(frozen=True)
class SalesTokens:
    by_rep: dict[str, str]
    admin: str | None

    @property
    def configured(self) -> bool:
        return bool(self.by_rep or self.admin)

    def principal(self, token: str) -> Principal | None:
        if not token:
            return None
        if self.admin and hmac.compare_digest(self.admin.encode(), token.encode()):
            return Principal(rep=None)
        rep = _match(self.by_rep, token)
        return Principal(rep=rep) if rep is not None else None

    def from_request(self, request: web.Request, *, cookie: bool = False) -> Principal | None:
        """The bearer token's principal; the page may also use its cookie."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self.principal(token.strip())
        if cookie:
            return self.principal(request.cookies.get(SALES_COOKIE, ""))
        return None
