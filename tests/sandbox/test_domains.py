"""Allow/deny matching for the egress proxy, as a table."""

from __future__ import annotations

import pytest

from runner.sandbox.proxy import check_destination, domain_allowed, ip_literal, parse_request, public_address

ALLOW = (
    "api.anthropic.com",
    "*.github.com",
    "registry.npmjs.org:443",
    "127.0.0.1:8123",
    "localhost:9000",
    "[::1]:8124",
    "10.1.2.3",
    "*.internal.example:443",
)
DENY = ("evil.github.com", "*.bad.github.com", "api.anthropic.com:8443")

CASES = [
    # host, port, allowed, why
    ("api.anthropic.com", 443, True, "exact name, any port"),
    ("API.Anthropic.COM.", 443, True, "case and trailing dot ignored"),
    ("api.anthropic.com", 8443, False, "deny with port wins"),
    ("anthropic.com", 443, False, "parent of an exact entry"),
    ("x.api.anthropic.com", 443, False, "subdomain of an exact entry"),
    ("uploads.github.com", 443, True, "wildcard subdomain"),
    ("a.b.github.com", 443, True, "wildcard, deeper subdomain"),
    ("github.com", 443, False, "*.github.com does not match github.com"),
    ("evil.github.com", 443, False, "deny wins over wildcard allow"),
    ("x.bad.github.com", 443, False, "wildcard deny"),
    ("notgithub.com", 443, False, "suffix without dot"),
    ("registry.npmjs.org", 443, True, "listed port"),
    ("registry.npmjs.org", 80, False, "other port"),
    ("127.0.0.1", 8123, True, "IP literal listed with its port"),
    ("127.0.0.1", 8124, False, "IP literal, other port"),
    ("127.0.0.2", 8123, False, "other IP"),
    ("10.1.2.3", 443, False, "IP literal listed without port"),
    ("localhost", 9000, True, "localhost listed with port"),
    ("localhost", 5432, False, "PostgreSQL"),
    ("localhost", 6379, False, "Redis"),
    ("::1", 8124, True, "IPv6 literal with port"),
    ("::1", 80, False, "IPv6 literal, other port"),
    ("svc.internal.example", 443, True, "wildcard with port"),
    ("svc.internal.example", 80, False, "wildcard, other port"),
    ("example.invalid", 80, False, "not listed at all"),
    ("", 80, False, "empty host"),
    ("api.anthropic.com", 0, False, "bad port"),
]


@pytest.mark.parametrize(("host", "port", "allowed", "why"), CASES)
def test_domain_allowed(host: str, port: int, allowed: bool, why: str) -> None:
    """The table: deny wins, wildcards match subdomains only, IPs need host:port."""
    assert domain_allowed(host, port, ALLOW, DENY) is allowed, why


# Every numeric form a resolver reads as 1.2.3.4 (inet_aton for IPv4, inet_pton for IPv6) is
# the same address: a deny of 1.2.3.4 catches them all, even with "*" or the form itself allowed.
NUMERIC_FORMS = ["1.2.3.4", "16909060", "0x01020304", "01.02.03.04", "1.2.772", "1.131844", "0x1.0x2.0x3.0x4",
                 "001.002.003.004", "1.2.3.4.", "::ffff:1.2.3.4", "::ffff:102:304", "0:0:0:0:0:ffff:0102:0304",
                 "[::FFFF:1.2.3.4]"]


@pytest.mark.parametrize("form", NUMERIC_FORMS)
def test_every_numeric_form_meets_the_deny_list(form: str) -> None:
    allow = ("*", f"{form}:443", "1.2.3.4:443")
    assert not domain_allowed(form, 443, allow, ["1.2.3.4"]), form
    assert not domain_allowed("1.2.3.4", 443, ["1.2.3.4:443"], [form]), f"deny written as {form}"


@pytest.mark.parametrize("form", NUMERIC_FORMS)
def test_every_numeric_form_matches_its_allow_entry(form: str) -> None:
    assert domain_allowed(form, 443, ["1.2.3.4:443"], []), form
    assert not domain_allowed(form, 443, ["*"], []), "an IP literal still needs its explicit entry"


@pytest.mark.parametrize(("host", "address"), [
    ("1.2.259", "1.2.1.3"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0", "0.0.0.0"),
    ("[fe80::1%eth0]", "fe80::1"), ("::ffff:127.0.0.1", "127.0.0.1"),
    ("deadbeef", None), ("cafe.example", None), ("08.1.1.1", None), ("1.2.3.4.5", None), ("4294967296", None),
    ("1.2.3.4 x", None), ("example.invalid", None),
])
def test_ip_literal_reads_what_a_resolver_reads(host: str, address: str | None) -> None:
    ip = ip_literal(host)
    assert (str(ip) if ip is not None else None) == address


def test_explicit_entries_may_reach_private_addresses() -> None:
    """Only entries with a port (and no wildcard) count as explicit."""
    assert check_destination("localhost", 9000, ALLOW, DENY).explicit
    assert not check_destination("api.anthropic.com", 443, ALLOW, DENY).explicit
    assert not check_destination("svc.internal.example", 443, ALLOW, DENY).explicit


def test_star_allows_names_but_not_ip_literals() -> None:
    """'*' matches any name, never an unlisted IP literal."""
    assert domain_allowed("anything.example", 443, ["*"], [])
    assert not domain_allowed("192.0.2.1", 443, ["*"], [])


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.0.0.1", False), ("192.168.1.1", False), ("172.16.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
    ("8.8.8.8", True), ("2606:4700::1111", True), ("2130706433", False), ("0x7f.1", False),
])
def test_public_address(address: str, public: bool) -> None:
    """Names resolving to these are refused unless listed explicitly."""
    assert public_address(address) is public


@pytest.mark.parametrize(("head", "method", "host", "port"), [
    (b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", "CONNECT", "api.anthropic.com", 443),
    (b"CONNECT [::1]:8124 HTTP/1.1\r\n\r\n", "CONNECT", "::1", 8124),
    (b"GET http://example.invalid/a?b=1 HTTP/1.1\r\nHost: example.invalid\r\n\r\n", "GET",
     "example.invalid", 80),
    (b"POST http://127.0.0.1:8123/x HTTP/1.1\r\n\r\n", "POST", "127.0.0.1", 8123),
])
def test_parse_request(head: bytes, method: str, host: str, port: int) -> None:
    """Proxy request heads: CONNECT authority or absolute http URL."""
    request = parse_request(head)
    assert (request.method, request.host, request.port) == (method, host, port)


def test_forwarded_head_is_origin_form_without_proxy_headers() -> None:
    """Plain HTTP is forwarded with a path-only request line and no Proxy-* headers."""
    request = parse_request(b"GET http://h.invalid:81/p?q HTTP/1.1\r\nHost: h.invalid\r\n"
                            b"Proxy-Authorization: secret\r\n\r\n")
    assert request.head == b"GET /p?q HTTP/1.1\r\nHost: h.invalid\r\n\r\n"


@pytest.mark.parametrize("head", [b"GET /relative HTTP/1.1\r\n\r\n", b"GET https://x/ HTTP/1.1\r\n\r\n",
                                  b"nonsense\r\n\r\n"])
def test_parse_request_rejects_non_proxy_requests(head: bytes) -> None:
    """Origin-form requests and garbage are refused."""
    with pytest.raises(ValueError):
        parse_request(head)
