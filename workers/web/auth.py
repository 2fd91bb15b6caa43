"""Who may call what: collector write keys (per site; browser or server) and sales bearer
tokens (per rep, admin).

Secrets come from settings as ``name=secret[,name=secret]``. Comparisons are constant-time so
a caller cannot learn a key byte by byte from response times.

The call-list page signs in once and then holds a **session cookie**, never the token itself:
``v1.<kind>.<rep>.<expiry>.<mac>`` where ``kind`` is ``r`` (a rep) or ``a`` (admin), ``rep``
is the rep's id base64url-encoded, ``expiry`` Unix seconds, and ``mac`` the HMAC-SHA256 of the
rest keyed with that principal's own token. Any worker process can check it with nothing but
its settings (no shared session store); a stolen cookie does not reveal the token and dies at
its expiry; rotating a rep's token ends every session of that rep at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import SecretStr

from events.tracking import KeyKind

if TYPE_CHECKING:
    from infra.settings import Settings

#: Cookie the call-list page keeps its session in (HttpOnly, SameSite=Strict).
SALES_COOKIE = "leadcycle_sales"
#: How long a page session lasts (the cookie's Max-Age and the signed expiry).
SESSION_SECONDS = 12 * 3600
#: Longest cookie value looked at: a real one is ~100 characters.
_MAX_SESSION = 512


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
        if not token or not _encodable(token):
            return None
        if self.admin and hmac.compare_digest(self.admin.encode(), token.encode()):
            return Principal(rep=None)
        rep = _match(self.by_rep, token)
        return Principal(rep=rep) if rep is not None else None

    def from_request(
        self, request: web.Request, *, now: int, cookie: bool = False
    ) -> Principal | None:
        """The bearer token's principal; the page may also use its session cookie (valid at
        ``now``, Unix seconds). Raises :class:`Malformed` for a header that is not UTF-8."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self.principal(_text(token.strip(), "Authorization header"))
        if cookie:
            return self.from_session(request.cookies.get(SALES_COOKIE, ""), now=now)
        return None

    def presented(self, request: web.Request, *, cookie: bool = False) -> bool:
        """Whether the request carries a credential at all (a bearer token, or the cookie)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return True
        return cookie and bool(request.cookies.get(SALES_COOKIE))

    def _key(self, kind: str, rep: str) -> str | None:
        if kind == "a":
            return self.admin
        return self.by_rep.get(rep) if kind == "r" else None

    def session(self, who: Principal, *, expires: int) -> str:
        """A session cookie value for ``who``, valid until ``expires`` (Unix seconds)."""
        kind, rep = ("a", "") if who.admin else ("r", who.rep or "")
        key = self._key(kind, rep)
        if key is None:
            raise ValueError("no token for this principal: it cannot have a session")
        body = f"v1.{kind}.{_b64(rep.encode())}.{expires}"
        return f"{body}.{_mac(key, body)}"

    def from_session(self, value: str, *, now: int) -> Principal | None:
        """The principal of a session cookie that is well formed, signed and not expired."""
        if not value or len(value) > _MAX_SESSION or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != "v1" or not parts[3].isdigit():
            return None
        _, kind, rep_b64, expires, mac = parts
        try:
            rep = base64.urlsafe_b64decode(rep_b64 + "=" * (-len(rep_b64) % 4)).decode()
        except (binascii.Error, ValueError):
            return None
        key = self._key(kind, rep)
        if key is None:
            return None
        body = ".".join(parts[:4])
        if not hmac.compare_digest(_mac(key, body).encode(), mac.encode()):
            return None
        if int(expires) <= now:
            return None
        return Principal(rep=None if kind == "a" else rep)


class Malformed(ValueError):
    """A credential that cannot even be read (not UTF-8): a 400, not a guess."""


def _encodable(value: str) -> bool:
    # Undecodable bytes survive decoding as lone surrogates: no token anyone holds has them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: str, what: str) -> str:
    if not _encodable(value):
        raise Malformed(f"{what} is not valid UTF-8")
    return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _mac(key: str, body: str) -> str:
    digest = hmac.new(key.encode(), b"leadcycle-session:" + body.encode(), hashlib.sha256)
    return _b64(digest.digest())
