"""Outbound network policy: which hosts a step may call, and which addresses it may reach.

Two independent checks, both required:

1. **Host allow-list** (static, usable at lint time): the URL's scheme, host and port must match one of the
   configured patterns, so an alert label cannot point a step at an arbitrary host.
2. **Address check** (at connect time): every address the host resolves to must be public, unless it falls
   inside an explicitly allowed CIDR. Private, loopback, link-local, shared (CGNAT), multicast, reserved and
   unspecified addresses are refused, including when embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64).
   Cloud metadata addresses (169.254.169.254, fd00:ec2::254, ...) are refused even inside an allowed range;
   only a CIDR naming exactly that address (/32 or /128) opens one.

Callers resolve with `resolve()` (which checks *every* address and refuses the host if any one is blocked)
and then connect to one of the returned addresses rather than to the name, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot smuggle in a different address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from runbot.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}

# Instance metadata / credential endpoints of the major clouds and orchestrators. Reaching one from a step
# would hand out the bot's cloud credentials, so a broad CIDR (e.g. 169.254.0.0/16) never opens them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)

_SHARED = ipaddress.ip_network(
    "100.64.0.0/10"
)  # carrier-grade NAT; Python calls it neither private nor global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class PolicyError(Exception):
    """The outbound policy refused a URL, host or address; the message is one line and says why."""


class ResolveError(Exception):
    """The host name could not be resolved (a transient condition, unlike a refusal)."""


def normalize_host(host: str) -> str:
    """Lowercase, without brackets or a trailing dot, IDNA-encoded; IP literals in canonical form."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.rstrip(".")
    ip = ip_literal(h)
    if ip is not None:
        return ip.compressed
    if h.isascii():
        return h
    return h.encode("idna").decode("ascii")


def ip_literal(host: str) -> IPAddress | None:
    """The address if `host` is an IP literal (brackets allowed), else None."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostPattern:
    """`[scheme://]host[:port]`; host may be `*.suffix` (any subdomain, not the suffix itself) or `*`."""

    scheme: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        raw = text.strip()
        if not raw:
            raise ValueError("empty host pattern")
        scheme: str | None = None
        if "://" in raw:
            scheme, _, raw = raw.partition("://")
            scheme = scheme.lower()
            if scheme not in DEFAULT_PORTS:
                raise ValueError(f"host pattern {text!r}: scheme must be http or https")
        if "/" in raw or "@" in raw or "?" in raw:
            raise ValueError(f"host pattern {text!r}: only [scheme://]host[:port], no path or user")
        host, port = raw, None
        if raw.startswith("["):
            end = raw.find("]")
            if end < 0:
                raise ValueError(f"host pattern {text!r}: unclosed [")
            host, rest = raw[1:end], raw[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"host pattern {text!r}: expected :port after ]")
                port = _port(rest[1:], text)
        elif raw.count(":") == 1:
            host, _, p = raw.partition(":")
            port = _port(p, text)
        if host == "*":
            return cls(scheme, "*", port)
        wildcard = host.startswith("*.")
        body = host[2:] if wildcard else host
        if not body or "*" in body:
            raise ValueError(f"host pattern {text!r}: a wildcard may only be a leading '*.'")
        if ip_literal(body) is None and not all(c.isalnum() or c in "-._" for c in body):
            raise ValueError(f"host pattern {text!r}: invalid host name")
        norm = normalize_host(body)
        if wildcard and ip_literal(norm) is not None:
            raise ValueError(f"host pattern {text!r}: a wildcard cannot prefix an IP address")
        return cls(scheme, f"*.{norm}" if wildcard else norm, port)

    def matches(self, host: str, port: int | None, scheme: str | None = None) -> bool:
        """`host` must already be normalized; `port` is the effective port (default filled in)."""
        if self.scheme is not None and scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{self.port}" if self.port is not None else host
        return f"{self.scheme}://{text}" if self.scheme else text


def _port(text: str, pattern: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"host pattern {pattern!r}: port must be 1-65535")
    return int(text)


def parse_host_patterns(items: Iterable[str]) -> list[HostPattern]:
    return [HostPattern.parse(i) for i in items]


def parse_cidrs(items: Iterable[str]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR like 10.0.0.0/8 or fd00::/8") from None
    return out


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any: connecting to it would reach that IPv4 host."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _classify_one(ip: IPAddress) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def classify(ip: IPAddress) -> str | None:
    """Why `ip` is special (e.g. 'a private address'), or None for an ordinary public address."""
    inner = _embedded_ipv4(ip)
    reason = _classify_one(inner) if inner is not None else None  # what the connection really reaches
    return reason or _classify_one(ip)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # normalized
    port: int  # effective (default filled in)


class NetPolicy:
    """An outbound policy built from configuration; immutable and safe to share between tasks."""

    def __init__(
        self,
        allow_hosts: Sequence[str | HostPattern] = (),
        allow_cidrs: Sequence[str | IPNetwork] = (),
        allow_schemes: Sequence[str] = ("http", "https"),
        *,
        hosts_setting: str = "RUNBOT_HTTP_ALLOW_HOSTS",
        cidrs_setting: str = "RUNBOT_HTTP_ALLOW_CIDRS",
    ) -> None:
        self.patterns = [p if isinstance(p, HostPattern) else HostPattern.parse(p) for p in allow_hosts]
        self.cidrs = [c if not isinstance(c, str) else parse_cidrs([c])[0] for c in allow_cidrs]
        self.schemes = frozenset(s.lower() for s in allow_schemes)
        self._hosts_setting = hosts_setting
        self._cidrs_setting = cidrs_setting

    @classmethod
    def from_settings(cls, settings: Settings) -> NetPolicy:
        return cls(settings.http_allow_hosts, settings.http_allow_cidrs, settings.http_allow_schemes)

    # ---- static checks ------------------------------------------------------------------------------

    def check_target(self, scheme: str, host: str, port: int | None) -> Target:
        """Scheme and host:port against the allow-lists; raises PolicyError. No DNS, no I/O."""
        scheme = scheme.lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes)) or "none"
            raise PolicyError(f"scheme {scheme or '(none)'!r} is not allowed (allowed: {allowed})")
        if not host:
            raise PolicyError("the URL has no host")
        norm = normalize_host(host)
        eff_port = port if port is not None else DEFAULT_PORTS.get(scheme)
        if eff_port is None:
            raise PolicyError(f"no port for scheme {scheme!r}")
        if not any(p.matches(norm, eff_port, scheme) for p in self.patterns):
            shown = f"[{norm}]" if ":" in norm else norm
            if not self.patterns:
                raise PolicyError(f"host {shown}:{eff_port} is not allowed ({self._hosts_setting} is empty)")
            raise PolicyError(f"host {shown}:{eff_port} is not in {self._hosts_setting}")
        return Target(scheme, norm, eff_port)

    def check_url(self, url: str | httpx.URL) -> Target:
        """Parse with httpx (the same parser that sends the request) and check scheme and host."""
        try:
            u = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise PolicyError(f"invalid URL: {exc}") from None
        return self.check_target(u.scheme, u.raw_host.decode("ascii"), u.port)

    # ---- address checks -----------------------------------------------------------------------------

    def address_refusal(self, ip: IPAddress) -> str | None:
        """Why connecting to `ip` is refused, or None if it is allowed."""
        reason = classify(ip)
        if reason is None:
            return None
        views: list[IPAddress] = [ip]
        inner = _embedded_ipv4(ip)
        if inner is not None:
            views.append(inner)
        if reason == "a cloud metadata address":
            exact = [c for c in self.cidrs if c.prefixlen == c.max_prefixlen]
            if any(v in c for v in views for c in exact):
                return None
            return (
                f"{ip.compressed} is {reason} (only an exact /32 or /128 in {self._cidrs_setting} opens it)"
            )
        if any(v in c for v in views for c in self.cidrs):
            return None
        return f"{ip.compressed} is {reason} (not in {self._cidrs_setting})"

    def check_address(self, ip: IPAddress) -> None:
        refusal = self.address_refusal(ip)
        if refusal is not None:
            raise PolicyError(refusal)

    async def resolve(self, host: str, port: int, *, timeout: float | None = None) -> list[IPAddress]:
        """Resolve `host` and check every address; connect only to what this returns.

        If any one address is refused the whole host is refused: a name that mixes public and internal
        answers is either misconfigured or an attack, and trying "the good one" would depend on ordering.
        """
        literal = ip_literal(host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout
            )
        except socket.gaierror as exc:
            raise ResolveError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        except TimeoutError:
            raise ResolveError(f"resolving {host} timed out") from None
        addrs: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in addrs:
                addrs.append(ip)
        if not addrs:
            raise ResolveError(f"{host} has no IPv4 or IPv6 address")
        for ip in addrs:
            refusal = self.address_refusal(ip)
            if refusal is not None:
                raise PolicyError(f"{host} resolves to {refusal}")
        return addrs
