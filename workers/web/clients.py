"""Who is asking: the client's address, and the key rate limits count it under.

The client is the TCP peer. Only when the peer is a configured reverse proxy
(``LEADCYCLE_HTTP_TRUSTED_PROXIES``) are ``Forwarded`` (RFC 7239) or ``X-Forwarded-For`` read:
anyone else could write any address in them. They are read from the right (the hop nearest to
us) leftwards, skipping addresses that are themselves trusted proxies; the first other address
is the client. A value that is not an address there ends the walk at the last trusted hop.

Rate limits and connection caps count an IPv4 address as one client and an IPv6 address by
its /64: a single host usually gets a whole /64 and can pick any address in it, so per-address
IPv6 limits are no limits at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """LEADCYCLE_HTTP_TRUSTED_PROXIES holds something that is not an address or a CIDR."""


def parse_networks(setting: str, value: str) -> tuple[Network, ...]:
    """``10.0.0.0/8,192.0.2.7,2001:db8::/32`` -> networks (an address is a /32 or /128)."""
    found: list[Network] = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            found.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{setting}: {part.strip()!r} is not an address or CIDR") from None
    return tuple(found)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:443``,
    quoted), IPv4-mapped IPv6 as IPv4; None for ``unknown``, obfuscated ids and garbage."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has two colons or more
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # a zone id says nothing about the client
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def rate_key(address: str | None) -> str:
    """The client a limit counts: an IPv4 address itself, an IPv6 address's /64."""
    if not address:
        return ""
    found = parse_address(address)
    if found is None:
        return address
    if isinstance(found, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(found) >> 64 << 64, 64)))
    return str(found)


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header, first hop first."""
    hops: list[str] = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip().lower() == "for":
                hops.append(value)
    return hops


def _forwarded_proto(header: str) -> str | None:
    """The ``proto=`` of the hop nearest to us in a ``Forwarded`` header."""
    last = header.split(",")[-1]
    for pair in last.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "proto":
            return value.strip().strip('"').lower()
    return None


@dataclass(frozen=True)
class Clients:
    """Tells clients apart; built once from settings (held by :mod:`workers.web.security`)."""

    trusted: tuple[Network, ...] = ()

    def is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in net for net in self.trusted)

    def _peer(self, request: web.Request) -> Address | None:
        return parse_address(request.remote) if request.remote else None

    def client_ip(self, request: web.Request) -> str | None:
        """The client's address: the TCP peer, or what a trusted proxy says it forwarded for."""
        peer = self._peer(request)
        if peer is None:
            return request.remote
        if not self.is_trusted(peer):
            return str(peer)
        forwarded = request.headers.get("Forwarded")
        hops = (
            _forwarded_for(forwarded)
            if forwarded is not None
            else request.headers.get("X-Forwarded-For", "").split(",")
        )
        client = peer
        for hop in reversed(hops):
            found = parse_address(hop)
            if found is None:
                break
            client = found
            if not self.is_trusted(found):
                break
        return str(client)

    def scheme(self, request: web.Request) -> str:
        """``https`` when the connection is TLS, or a trusted proxy says its client's was."""
        if request.secure:
            return "https"
        if self.is_trusted(self._peer(request)):
            forwarded = request.headers.get("Forwarded")
            proto = (
                _forwarded_proto(forwarded)
                if forwarded is not None
                else request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
            )
            if proto in ("http", "https"):
                return proto
        return "http"


CLIENTS = web.AppKey("leadcycle.clients", Clients)


def clients(request: web.Request) -> Clients:
    """The app's :class:`Clients`; none configured (a bare app) means: trust no proxy."""
    return request.app.get(CLIENTS) or Clients()


def client_ip(request: web.Request) -> str | None:
    """The client's address as the whole edge sees it (collector context, limits, logs)."""
    return clients(request).client_ip(request)
