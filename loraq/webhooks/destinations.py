"""Where a webhook may go, and the one way it is sent there.

By default only https to public (globally routable) addresses: a webhook URL is a request the server
makes on a tenant's behalf, and must not reach the server's own network (cloud metadata at
169.254.169.254, databases on loopback, the office LAN). The check runs when an endpoint is registered
and again at every send, on the addresses the name resolves to then; the request then goes to the
address that was checked (with the URL's name as Host header and TLS server name), so a name that
resolves to something else a moment later (DNS rebinding) changes nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

import httpx

from loraq.core.errors import InvalidRequest
from loraq.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
# A receiver's answer is read this far at most (an excerpt is kept for the attempt's log).
MAX_RESPONSE_BYTES = 4096
RESPONSE_EXCERPT_CHARS = 512
# NAT64's well-known prefix: its addresses carry an IPv4 address in their last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Policy:
    allow_private_networks: bool = False
    allow_http: bool = False
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            allow_private_networks=settings.webhook_allow_private_networks,
            # A private network is where plain http is common: allowing one allows the other.
            allow_http=settings.webhook_allow_http or settings.webhook_allow_private_networks,
            timeout_seconds=settings.webhook_timeout_seconds,
        )


@dataclass(frozen=True)
class Attempt:
    """What one send came to: a status code, or an error when no answer came (or it was refused)."""

    status_code: int | None
    error: str | None
    response_excerpt: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class RefusedDestination(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="url", code="invalid_webhook_url")


def check_url(url: str, policy: Policy) -> None:
    """Refuse a URL that the policy forbids, by its form and by the addresses its host resolves to now."""
    _resolve(_parse(url, policy), policy)


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, also when it is an IPv4 address wrapped in an IPv6 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not address.is_multicast


def send(url: str, *, body: str, headers: dict[str, str], policy: Policy) -> Attempt:
    """POST body to url once, following no redirect, reading at most MAX_RESPONSE_BYTES of the answer."""
    started = time.monotonic()

    def attempt(status_code: int | None, error: str | None, excerpt: str | None = None) -> Attempt:
        return Attempt(status_code, error, excerpt, int((time.monotonic() - started) * 1000))

    try:
        target = _parse(url, policy)
        address = _resolve(target, policy)[0]
    except InvalidRequest as refused:
        return attempt(None, refused.message)
    host = target.raw_host.decode("ascii")
    extensions = {} if _ip_literal(host) else {"sni_hostname": host}
    request_headers = {**headers, "host": target.netloc.decode("ascii"), "user-agent": "loraq-webhooks"}
    # trust_env=False: no proxy from the environment, the connection goes to the address checked.
    with httpx.Client(timeout=policy.timeout_seconds, follow_redirects=False, trust_env=False) as client:
        try:
            request = client.build_request(
                "POST",
                target.copy_with(host=str(address)),
                content=body.encode(),
                headers=request_headers,
                extensions=extensions,
            )
            response = client.send(request, stream=True)
            try:
                received = bytearray()
                for chunk in response.iter_raw():
                    received += chunk
                    # A receiver that drips its answer gets no more than the timeout as a whole.
                    if (
                        len(received) >= MAX_RESPONSE_BYTES
                        or time.monotonic() - started > policy.timeout_seconds
                    ):
                        break
            finally:
                response.close()
            excerpt = received[:RESPONSE_EXCERPT_CHARS].decode("utf-8", errors="replace")
            return attempt(response.status_code, None, excerpt)
        except httpx.HTTPError as error:
            return attempt(None, f"{type(error).__name__}: {error}"[:500])


def _parse(url: str, policy: Policy) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise RefusedDestination(f"url: longer than {MAX_URL_LENGTH} characters")
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as bad:
        raise RefusedDestination(f"url: not a URL ({bad})") from bad
    if target.scheme not in ("https", "http") or not target.raw_host:
        raise RefusedDestination("url: must be an https:// URL with a host")
    if target.scheme == "http" and not policy.allow_http:
        raise RefusedDestination("url: must be https:// (this server does not allow plain http webhooks)")
    if target.userinfo:
        raise RefusedDestination("url: must not hold a user name or password")
    return target.copy_with(fragment=None)


def _resolve(target: httpx.URL, policy: Policy) -> list[IPAddress]:
    """The host's addresses, all of them allowed, or RefusedDestination."""
    host = target.raw_host.decode("ascii")
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = socket.getaddrinfo(host, target.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as unresolved:
            raise RefusedDestination(f"url: the host {host} does not resolve ({unresolved})") from unresolved
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found))
        if not addresses:
            raise RefusedDestination(f"url: the host {host} does not resolve")
    if not policy.allow_private_networks:
        refused = [str(address) for address in addresses if not is_public(address)]
        if refused:
            raise RefusedDestination(
                f"url: {host} is (or resolves to) a private, loopback, link-local or otherwise "
                f"non-public address ({', '.join(refused)}); this server sends webhooks to public "
                "addresses only"
            )
    return addresses


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, compatible, NAT64, 6to4 or Teredo."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d, the deprecated "compatible" form
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None
