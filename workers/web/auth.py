"""Who may call what: collector write keys (per site; browser or server) and sales bearer
tokens (per rep, admin).

Secrets come from settings as ``name=secret[,name=secret]``. Comparisons are constant-time so
a caller cannot learn a key byte by byte from response times.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import SecretStr

from events.tracking import KeyKind

if TYPE_CHECKING:
    from infra.settings import Settings

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
class KeyHolder:
    """The site a request's write key belongs to, and which kind of key it is."""

    site: str
    kind: KeyKind


@dataclass(frozen=True)
class WriteKeys:
    """Collector write keys, per site.

    Browser keys (``LEADCYCLE_HTTP_WRITE_KEYS``) are public: they ship inside pages, name a
    site and gate the collector, nothing more. Server keys (``LEADCYCLE_HTTP_SERVER_KEYS``)
    are secret: they may send what the topics take, and they key the HMAC a site's server
    signs a visitor's email with (:meth:`email_signed`).
    """

    by_site: dict[str, str]
    server_by_site: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.by_site.values()) & set(self.server_by_site.values()):
            # A key that is also in pages is public: it cannot be a server key too.
            raise ConfigError(
                "a key in LEADCYCLE_HTTP_SERVER_KEYS is also in LEADCYCLE_HTTP_WRITE_KEYS"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> WriteKeys:
        return cls(
            parse_pairs("LEADCYCLE_HTTP_WRITE_KEYS", settings.http_write_keys),
            parse_pairs("LEADCYCLE_HTTP_SERVER_KEYS", settings.http_server_keys),
        )

    @property
    def configured(self) -> bool:
        return bool(self.by_site or self.server_by_site)

    def holder(self, request: web.Request) -> KeyHolder | None:
        """The site and kind of the key the request carries (header or ``?key=``), else None."""
        given = request.headers.get("X-Leadcycle-Key") or request.query.get("key") or ""
        if not given:
            return None
        # Both maps are always compared, so the time taken does not tell which kind matched.
        browser = _match(self.by_site, given)
        server = _match(self.server_by_site, given)
        if server is not None:
            return KeyHolder(server, "server")
        return KeyHolder(browser, "browser") if browser is not None else None

    def site_for(self, request: web.Request) -> str | None:
        """The site whose key (of either kind) the request carries, else None."""
        found = self.holder(request)
        return found.site if found else None

    def email_signed(self, site: str, email: str, signature: str) -> bool:
        """Whether ``signature`` is the site's server signature of ``email``: the hex
        HMAC-SHA256 of the lower-cased, trimmed email keyed with the site's server key (the
        pattern of Intercom's identity verification and Marketo's ``associateLead`` hash)."""
        secret = self.server_by_site.get(site)
        if secret is None:
            return False
        return hmac.compare_digest(sign_email(secret, email), signature.strip().lower())


def sign_email(secret: str, email: str) -> str:
    """The signature a site's server puts in its page for ``email`` (see
    :meth:`WriteKeys.email_signed`)."""
    message = email.strip().lower().encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


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
