"""Outbound policy: host patterns, address classification, resolution of every address."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from runbot.netpolicy import (
    HostPattern,
    NetPolicy,
    PolicyError,
    ResolveError,
    classify,
    normalize_host,
)
from runbot.settings import Settings


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# ---- host patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "port", "scheme", "expected"),
    [
        ("api.internal.example", "api.internal.example", 443, "https", True),
        ("api.internal.example", "API.internal.example.", 443, "https", True),
        ("api.internal.example", "api.internal.example.evil.com", 443, "https", False),
        ("*.internal.example", "a.internal.example", 80, "http", True),
        ("*.internal.example", "a.b.internal.example", 80, "http", True),
        ("*.internal.example", "internal.example", 80, "http", False),  # the suffix itself is not a subdomain
        ("*.internal.example", "evilinternal.example", 80, "http", False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, "http", True),
        ("127.0.0.1:8080", "127.0.0.1", 8081, "http", False),
        ("https://*.example.com", "x.example.com", 443, "https", True),
        ("https://*.example.com", "x.example.com", 80, "http", False),
        ("[::1]:9000", "::1", 9000, "http", True),
        ("[::1]:9000", "[::1]", 9000, "http", True),
        ("::1", "0:0:0:0:0:0:0:1", 1234, "http", True),
        ("*", "anything.example", 1, "http", True),
        ("bücher.example", "xn--bcher-kva.example", 443, "https", True),
    ],
)
def test_host_pattern_matching(pattern: str, host: str, port: int, scheme: str, expected: bool) -> None:
    assert HostPattern.parse(pattern).matches(normalize_host(host), port, scheme) is expected


@pytest.mark.parametrize(
    "bad",
    ["", "ftp://x.example", "x.example/path", "user@x.example", "a.*.example", "*.", "x.example:0",
     "x.example:99999", "x.example:abc", "[::1", "*.10.0.0.1", "exa mple.com"],
)  # fmt: skip
def test_bad_host_patterns_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        HostPattern.parse(bad)


def test_pattern_str_round_trips() -> None:
    for text in ["*.internal.example", "https://api.example:8443", "[::1]:80", "10.0.0.1"]:
        assert str(HostPattern.parse(text)) == text


# ---- address classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.9.9.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fd12:3456::1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        # IPv4 tunnelled inside IPv6 reaches the IPv4 host: judged by the embedded address
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 of 169.254.169.254
        ("64:ff9b::a00:1", "a private address"),  # NAT64 of 10.0.0.1
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
    ],
)
def test_classify(address: str, reason: str | None) -> None:
    got = classify(ip(address))
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert got == reason


def test_private_addresses_refused_unless_cidr_allows() -> None:
    closed = NetPolicy(["*"])
    assert "private" in (closed.address_refusal(ip("10.1.2.3")) or "")
    assert closed.address_refusal(ip("8.8.8.8")) is None
    opened = NetPolicy(["*"], ["10.0.0.0/8", "::1/128"])
    assert opened.address_refusal(ip("10.1.2.3")) is None
    assert opened.address_refusal(ip("::1")) is None
    assert opened.address_refusal(ip("192.168.0.1")) is not None
    assert opened.address_refusal(ip("::ffff:10.1.2.3")) is None  # same host as 10.1.2.3


def test_metadata_needs_an_exact_cidr() -> None:
    broad = NetPolicy(["*"], ["169.254.0.0/16", "fd00::/8", "0.0.0.0/0"])
    for addr in ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"]:
        refusal = broad.address_refusal(ip(addr))
        assert refusal is not None and "metadata" in refusal and "exact" in refusal
    assert broad.address_refusal(ip("169.254.1.1")) is None  # ordinary link-local is opened by the range
    exact = NetPolicy(["*"], ["169.254.169.254/32"])
    assert exact.address_refusal(ip("169.254.169.254")) is None
    assert exact.address_refusal(ip("169.254.170.2")) is not None


# ---- static URL checks ------------------------------------------------------------------------------


def test_check_url() -> None:
    policy = NetPolicy(["*.internal.example", "127.0.0.1:8080"], allow_schemes=["https", "http"])
    t = policy.check_url("https://API.internal.example/x?y=1")
    assert (t.scheme, t.host, t.port) == ("https", "api.internal.example", 443)
    assert policy.check_url("http://127.0.0.1:8080/").port == 8080
    for url, fragment in [
        ("http://127.0.0.1:8081/", "not in RUNBOT_HTTP_ALLOW_HOSTS"),
        ("http://evil.example/", "not in RUNBOT_HTTP_ALLOW_HOSTS"),
        ("ftp://a.internal.example/", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("/relative", r"scheme '\(none\)'"),
    ]:
        with pytest.raises(PolicyError, match=fragment):
            policy.check_url(url)


def test_empty_allow_list_refuses_everything_and_says_why() -> None:
    with pytest.raises(PolicyError, match="RUNBOT_HTTP_ALLOW_HOSTS is empty"):
        NetPolicy().check_url("https://example.com/")


def test_https_only() -> None:
    policy = NetPolicy(["*"], allow_schemes=["https"])
    policy.check_url("https://example.com/")
    with pytest.raises(PolicyError, match="scheme 'http'"):
        policy.check_url("http://example.com/")


# ---- resolution -------------------------------------------------------------------------------------


def test_resolve_checks_every_resolved_address() -> None:
    async def go() -> None:
        closed = NetPolicy(["localhost"])
        with pytest.raises(PolicyError, match=r"localhost resolves to .* loopback"):
            await closed.resolve("localhost", 80)
        opened = NetPolicy(["localhost"], ["127.0.0.0/8", "::1/128"])
        addrs = await opened.resolve("localhost", 80)
        assert addrs and all(a.is_loopback for a in addrs)
        # literals are checked without DNS
        with pytest.raises(PolicyError, match="metadata"):
            await opened.resolve("169.254.169.254", 80)
        assert await opened.resolve("127.0.0.1", 80) == [ip("127.0.0.1")]
        # decimal / hex spellings of an IPv4 address are resolved, then judged by the real address
        with pytest.raises(PolicyError, match="loopback"):
            await closed.resolve("2130706433", 80)

    asyncio.run(go())


def test_unresolvable_name_is_a_resolve_error() -> None:
    async def go() -> None:
        with pytest.raises(ResolveError, match="cannot resolve"):
            await NetPolicy(["*"]).resolve("no-such-host.invalid", 80, timeout=5)

    asyncio.run(go())


# ---- settings ---------------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_HTTP_ALLOW_HOSTS", json.dumps(["*.Internal.Example", "127.0.0.1:8080"]))
    monkeypatch.setenv("RUNBOT_HTTP_ALLOW_CIDRS", json.dumps(["10.20.0.0/16", "10.1.2.3/8"]))
    s = Settings()
    assert s.http_allow_hosts == ["*.internal.example", "127.0.0.1:8080"]
    assert s.http_allow_cidrs == ["10.20.0.0/16", "10.0.0.0/8"]
    policy = NetPolicy.from_settings(s)
    assert policy.check_url("https://x.internal.example/").host == "x.internal.example"
    assert policy.address_refusal(ip("10.20.1.1")) is None


def test_settings_reject_bad_patterns() -> None:
    with pytest.raises(ValueError, match="wildcard"):
        Settings(http_allow_hosts=["a.*.example"])
    with pytest.raises(ValueError, match="not a CIDR"):
        Settings(http_allow_cidrs=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="only http and https"):
        Settings(http_allow_schemes=["gopher"])
