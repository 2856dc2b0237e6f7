"""Fetching a URL the model chose, without letting it reach this machine or its network (SSRF guard).

A model told to open `http://127.0.0.1:8000/…`, a router's page or the cloud's metadata service
(169.254.169.254) must not. So every request, the first and each redirect (followed here, one hop
at a time), goes through `GuardedTransport`:

1. the host is resolved (a test passes its own resolver), and EVERY address it resolves to is
   checked: loopback, link-local, private networks, CGNAT, multicast, reserved and unspecified
   addresses are refused, IPv4 hidden inside IPv6 (::ffff:a.b.c.d, 6to4, NAT64) included;
2. the connection goes to the checked address itself (the URL's host is replaced by the IP; the
   Host header and TLS's SNI and certificate check keep the name), so a DNS answer that changes
   between the check and the connection (rebinding) can't slip through.

`allowed_hosts` opens the door on purpose: a host name ("intranet.example", matched as written in
the URL) or an address or network ("127.0.0.1", "10.0.0.0/8", matched against what a name
resolves to).
"""

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

# host, port -> the addresses it resolves to (strings, IPv4 or IPv6)
Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
SHARED = ipaddress.ip_network("100.64.0.0/10")  # CGNAT: not private by name, not public either
NAT64 = ipaddress.ip_network("64:ff9b::/96")
REDIRECTS = (301, 302, 303, 307, 308)


class Refused(Exception):
    """A URL the guard won't fetch; the message says which address and why (the model reads it)."""


class FetchError(Exception):
    """The fetch failed (unreachable, timed out, too many redirects, ...); the message says how."""


async def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve {host}: {e.strerror}") from e
    return list(dict.fromkeys(info[4][0] for info in infos))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where it really goes."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_blocked(address: str | IPAddress) -> str | None:
    """Why the browser must not connect to this address, or None for a public one."""
    ip = ipaddress.ip_address(address)
    ip = embedded_ipv4(ip) or ip
    if ip.is_loopback:
        return "a loopback address (this machine)"
    if ip.is_link_local:
        return "a link-local address (the local link, cloud metadata services)"
    if ip.is_unspecified:
        return "the unspecified address (this machine)"
    if ip in SHARED:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private-network address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved, non-public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts the browser may reach besides the public Internet."""

    allowed_hosts: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False)
    networks: tuple = field(init=False)

    def __post_init__(self):
        names, networks = set(), []
        for entry in self.allowed_hosts:
            entry = entry.strip().lower()
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "networks", tuple(networks))

    def check(self, host: str, addresses: list[str]) -> None:
        """Refused unless every address is public, or allowed by name or network."""
        if host.lower().rstrip(".") in self.names:
            return
        for address in addresses:
            reason = why_blocked(address)
            if reason and not any(ipaddress.ip_address(address) in net for net in self.networks):
                shown = host if literal_address(host) == address else f"{host} ({address})"
                raise Refused(f"{shown} is {reason}; the browser does not fetch it")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi's roots), built once: building them costs ~0.1 s."""
    return httpx.create_ssl_context()


def literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, reached only through a checked, pinned address."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver,
                 verify: ssl.SSLContext | None = None):
        self.policy = policy
        self.resolver = resolver
        # No connection is reused: a pooled connection is keyed by the address, and two names on
        # one address must not share a TLS session opened for the other's name.
        self.inner = httpx.AsyncHTTPTransport(verify=verify or tls_context(), retries=0,
                                              limits=httpx.Limits(max_keepalive_connections=0))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in SCHEMES:
            raise Refused(f"{url}: only http and https URLs are fetched")
        host = url.host
        literal = literal_address(host)
        addresses = [literal] if literal else await self.resolver(host, url.port or (443 if url.scheme == "https" else 80))
        if not addresses:
            raise FetchError(f"{host} resolves to no address")
        self.policy.check(host, addresses)
        pinned = httpx.Request(
            request.method, url.copy_with(host=addresses[0]), headers=request.headers, stream=request.stream,
            extensions={**request.extensions, "sni_hostname": host},
        )
        return await self.inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 2 * 1024 * 1024  # body bytes read; the rest is cut off
    timeout: float = 15.0  # seconds for the whole fetch, redirects included
    max_redirects: int = 5


@dataclass
class Fetched:
    url: str  # where the content came from, after redirects
    status: int
    content_type: str  # lower case, without parameters
    charset: str | None
    body: bytes
    truncated: bool  # the body was longer than max_bytes


USER_AGENT = "Mozilla/5.0 (compatible; swallow-server browser tool)"
# identity: a compressed body could inflate far past max_bytes within one chunk
HEADERS = {"User-Agent": USER_AGENT, "Accept": "text/html,text/plain;q=0.9,*/*;q=0.5", "Accept-Encoding": "identity"}


async def fetch(url: str, policy: AddressPolicy, limits: FetchLimits | None = None,
                resolver: Resolver = system_resolver, verify: ssl.SSLContext | None = None) -> Fetched:
    """GET `url` through the guard, following up to `limits.max_redirects` redirects (each one
    checked like the first). Raises Refused or FetchError, with a message for the model.
    `verify`: the TLS roots (a test's own CA); by default certifi's."""
    limits = limits or FetchLimits()
    transport = GuardedTransport(policy, resolver, verify)
    # trust_env=False: no proxy from the environment (it would connect for us, unchecked)
    async with httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                                 headers=HEADERS,
                                 timeout=limits.timeout) as client:
        try:
            async with asyncio.timeout(limits.timeout):
                return await _follow(client, httpx.URL(url), limits)
        except TimeoutError:
            raise FetchError(f"{url} did not answer within {limits.timeout:g} s") from None
        except httpx.TimeoutException:
            raise FetchError(f"{url} did not answer within {limits.timeout:g} s") from None
        except httpx.InvalidURL as e:
            raise FetchError(f"{url} is not a valid URL: {e}") from None
        except httpx.UnsupportedProtocol:
            raise Refused(f"{url}: only http and https URLs are fetched") from None
        except httpx.HTTPError as e:
            raise FetchError(f"{url} could not be fetched: {e.__class__.__name__}: {e}") from None


async def _follow(client: httpx.AsyncClient, url: httpx.URL, limits: FetchLimits) -> Fetched:
    for _ in range(limits.max_redirects + 1):
        if url.scheme not in SCHEMES:
            raise Refused(f"{url}: only http and https URLs are fetched")
        async with client.stream("GET", url) as response:
            location = response.headers.get("location")
            if response.status_code in REDIRECTS and location:
                url = url.join(location)
                continue
            body, truncated = bytearray(), False
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limits.max_bytes:
                    del body[limits.max_bytes:]
                    truncated = True
                    break
            content_type, _, params = response.headers.get("content-type", "").partition(";")
            charset = next((p.split("=", 1)[1].strip().strip('"') for p in params.split(";")
                            if p.strip().lower().startswith("charset=")), None)
            return Fetched(str(url), response.status_code, content_type.strip().lower(), charset, bytes(body),
                           truncated)
    raise FetchError(f"more than {limits.max_redirects} redirects")
