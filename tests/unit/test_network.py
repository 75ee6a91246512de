"""``restrictByIP`` rules and the client address behind proxies."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.network import (
    AddressRules,
    IPNetwork,
    client_address,
    parse_address,
    rate_limit_key,
)


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# ------------------------------------------------------------------------------- parse


def test_parse_sorts_entries_into_networks_and_host_names() -> None:
    rules = AddressRules.parse(
        ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", "backup.example.org"]
    )
    assert rules.networks == nets("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128")
    assert rules.hostnames == ("backup.example.org",)
    assert not rules.is_empty


def test_parse_single_addresses_are_host_networks() -> None:
    rules = AddressRules.parse(["192.168.1.7", "2001:db8::7"])
    assert [n.prefixlen for n in rules.networks] == [32, 128]


def test_parse_accepts_cidr_with_host_bits_set() -> None:
    assert AddressRules.parse(["10.1.2.3/8"]).networks == nets("10.0.0.0/8")
    assert AddressRules.parse(["2001:db8::1/32"]).networks == nets("2001:db8::/32")


def test_parse_normalises_host_names() -> None:
    rules = AddressRules.parse(["Backup.Example.ORG.", "  nas.local  "])
    assert rules.hostnames == ("backup.example.org", "nas.local")
    assert rules.networks == ()


def test_parse_skips_blank_entries_and_strips_spaces() -> None:
    rules = AddressRules.parse(["", "   ", " 10.0.0.0/8 "])
    assert rules.networks == nets("10.0.0.0/8")
    assert rules.hostnames == ()


def test_parse_of_nothing_is_empty() -> None:
    assert AddressRules.parse([]).is_empty
    assert AddressRules.parse(["", " "]).is_empty


def test_parse_ipv4_mapped_rules_become_ipv4() -> None:
    # Clients in the ::ffff:a.b.c.d form are compared as IPv4, so such rules must be too.
    rules = AddressRules.parse(["::ffff:10.1.2.3", "::ffff:192.168.0.0/112"])
    assert rules.networks == nets("10.1.2.3/32", "192.168.0.0/16")


# ------------------------------------------------------------------------------ allows


@pytest.mark.parametrize(
    ("entries", "client", "allowed"),
    [
        (["10.0.0.0/8"], "10.0.0.1", True),
        (["10.0.0.0/8"], "10.255.255.255", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "9.255.255.255", False),
        (["192.168.1.7"], "192.168.1.7", True),
        (["192.168.1.7"], "192.168.1.8", False),
        (["192.168.1.0/24", "172.16.0.0/12"], "172.31.0.9", True),
        (["192.168.1.0/24", "172.16.0.0/12"], "172.32.0.9", False),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["2001:db8::7"], "2001:db8::7", True),
        (["2001:db8::7"], "2001:0db8:0000::0007", True),  # another spelling, same address
        (["2001:db8::7"], "2001:db8::8", False),
        (["::1"], "::1", True),
        (["127.0.0.1"], "::1", False),
        # An IPv4 client seen through a dual-stack socket.
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
        (["10.0.0.0/8"], "::ffff:11.1.2.3", False),
        (["192.168.1.7"], "::ffff:192.168.1.7", True),
        # ... and rules written in that form.
        (["::ffff:10.1.2.3"], "10.1.2.3", True),
        (["::ffff:10.1.2.3"], "::ffff:10.1.2.3", True),
        (["::ffff:10.1.2.3"], "10.1.2.4", False),
        (["::ffff:10.0.0.0/104"], "10.200.0.1", True),
        (["::ffff:10.0.0.0/104"], "11.0.0.1", False),
        # IPv4 rules do not match unrelated IPv6 addresses and the other way round.
        (["10.0.0.0/8"], "2001:db8::1", False),
        (["2001:db8::/32"], "10.0.0.1", False),
        # Zone ids and surrounding spaces of the client are ignored.
        (["fe80::/10"], "fe80::1%eth0", True),
        (["10.0.0.0/8"], " 10.0.0.1 ", True),
    ],
)
def test_allows_networks(entries: list[str], client: str, allowed: bool) -> None:
    assert AddressRules.parse(entries).allows(client) is allowed


@pytest.mark.parametrize(
    "client",
    ["", " ", "garbage", "10.0.0.1:8080", "999.0.0.1", "10.0.0", "10.0.0.0/8", "[::1]", "::g"],
)
def test_allows_denies_garbage_client_addresses(client: str) -> None:
    # Even when the rules would allow every real address.
    rules = AddressRules.parse(["0.0.0.0/0", "::/0", "backup.example.org"])
    assert not rules.allows(client, {"backup.example.org": [client]})


@pytest.mark.parametrize("client", ["10.0.0.1", "2001:db8::1", "", "garbage"])
def test_empty_rules_allow_everything(client: str) -> None:
    assert AddressRules.parse([]).allows(client)
    assert AddressRules.parse([""]).allows(client, {})


def test_host_names_match_the_addresses_they_resolved_to() -> None:
    rules = AddressRules.parse(["backup.example.org"])
    resolved = {"backup.example.org": ["203.0.113.5", "2001:db8::5"]}
    assert rules.allows("203.0.113.5", resolved)
    assert rules.allows("2001:db8::5", resolved)
    assert rules.allows("::ffff:203.0.113.5", resolved)
    assert not rules.allows("203.0.113.6", resolved)


def test_host_names_are_looked_up_by_their_normalised_name() -> None:
    rules = AddressRules.parse(["Backup.Example.Org."])
    assert rules.allows("203.0.113.5", {"backup.example.org": ["203.0.113.5"]})


def test_host_names_not_resolved_deny() -> None:
    rules = AddressRules.parse(["backup.example.org"])
    assert not rules.allows("203.0.113.5")
    assert not rules.allows("203.0.113.5", None)
    assert not rules.allows("203.0.113.5", {})
    assert not rules.allows("203.0.113.5", {"backup.example.org": []})
    # Another host's addresses do not count.
    assert not rules.allows("203.0.113.5", {"other.example.org": ["203.0.113.5"]})


def test_resolved_addresses_in_mapped_form_or_garbage() -> None:
    rules = AddressRules.parse(["nas.local"])
    assert rules.allows("10.0.0.5", {"nas.local": ["::ffff:10.0.0.5"]})
    assert not rules.allows("10.0.0.5", {"nas.local": ["garbage", "10.0.0.6"]})
    assert rules.allows("10.0.0.5", {"nas.local": ["garbage", "10.0.0.5"]})


def test_resolved_address_is_an_exact_match_not_a_network() -> None:
    rules = AddressRules.parse(["nas.local"])
    assert not rules.allows("10.0.0.5", {"nas.local": ["10.0.0.0/24"]})


def test_networks_and_host_names_combine() -> None:
    rules = AddressRules.parse(["10.0.0.0/8", "nas.local"])
    resolved = {"nas.local": ["192.168.1.2"]}
    assert rules.allows("10.9.9.9", resolved)
    assert rules.allows("192.168.1.2", resolved)
    assert not rules.allows("192.168.1.3", resolved)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32), st.ip_addresses(v=4))
def test_allows_ipv4_matches_network_membership(
    network_address: ipaddress.IPv4Address, prefix: int, client: ipaddress.IPv4Address
) -> None:
    network = ipaddress.IPv4Network((network_address, prefix), strict=False)
    rules = AddressRules.parse([str(network)])
    inside = client in network
    assert rules.allows(str(client)) is inside
    assert rules.allows(f"::ffff:{client}") is inside


@given(st.ip_addresses(v=6), st.integers(min_value=0, max_value=128), st.ip_addresses(v=6))
def test_allows_ipv6_matches_network_membership(
    network_address: ipaddress.IPv6Address, prefix: int, client: ipaddress.IPv6Address
) -> None:
    network = ipaddress.IPv6Network((network_address, prefix), strict=False)
    if network.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")) or client.ipv4_mapped:
        return  # the mapped range is IPv4 in disguise; covered above
    assert AddressRules.parse([str(network)]).allows(str(client)) is (client in network)


# ------------------------------------------------------------------------ parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        (" 10.0.0.1 ", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_parse_address(text: str, expected: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", ["", "x", "10.0.0.1:80", "10.0.0.256", "1.2.3", "[::1]"])
def test_parse_address_garbage_is_none(text: str) -> None:
    assert parse_address(text) is None


# ----------------------------------------------------------------------- client_address

PROXIES = nets("10.0.0.0/8", "fd00::/8")


def test_no_header_means_the_peer() -> None:
    assert client_address("203.0.113.9", None, PROXIES) == "203.0.113.9"
    assert client_address("10.0.0.1", None, PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "", PROXIES) == "10.0.0.1"


def test_untrusted_peer_cannot_spoof_its_address() -> None:
    assert client_address("203.0.113.9", "10.1.1.1", PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", "198.51.100.1, 10.1.1.1", PROXIES) == "203.0.113.9"


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.0.0.1", "198.51.100.1", ()) == "10.0.0.1"


def test_trusted_peer_gives_the_forwarded_client() -> None:
    assert client_address("10.0.0.1", "198.51.100.7", PROXIES) == "198.51.100.7"


def test_trusted_peer_takes_the_right_most_untrusted_hop() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1" itself; our proxy appended the real address.
    assert client_address("10.0.0.1", "1.1.1.1, 198.51.100.7", PROXIES) == "198.51.100.7"


def test_chain_of_trusted_proxies_is_skipped() -> None:
    header = "1.1.1.1, 198.51.100.7, 10.2.0.1, 10.3.0.1"
    assert client_address("10.0.0.1", header, PROXIES) == "198.51.100.7"


def test_trusted_ipv6_and_mapped_proxies() -> None:
    assert client_address("fd00::1", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_address("::ffff:10.0.0.1", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_address("10.0.0.1", "fd00::5, 2001:db8::7, fd00::9", PROXIES) == "2001:db8::7"


def test_only_trusted_hops_gives_the_left_most() -> None:
    assert client_address("10.0.0.1", "10.5.0.1, 10.6.0.1", PROXIES) == "10.5.0.1"


def test_header_spacing_and_empty_elements() -> None:
    assert client_address("10.0.0.1", " 198.51.100.7 ,, 10.2.0.1 ,", PROXIES) == "198.51.100.7"
    assert client_address("10.0.0.1", " , ,", PROXIES) == "10.0.0.1"


def test_garbage_hop_stops_the_walk_at_the_peer() -> None:
    assert client_address("10.0.0.1", "garbage", PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "198.51.100.7, garbage", PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "198.51.100.7, unknown, 10.2.0.1", PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "198.51.100.7:443", PROXIES) == "10.0.0.1"


def test_garbage_left_of_the_client_is_never_reached() -> None:
    assert client_address("10.0.0.1", "garbage, 198.51.100.7", PROXIES) == "198.51.100.7"


def test_garbage_peer_is_never_trusted() -> None:
    assert client_address("unix:socket", "198.51.100.7", PROXIES) == "unix:socket"


hops = st.lists(
    st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["garbage", "", " ", "unknown", "10.0.0.1:80"]),
    ),
    max_size=6,
)


@given(st.ip_addresses(v=4).filter(lambda a: a not in PROXIES[0]), hops)
def test_untrusted_peer_always_wins(peer: ipaddress.IPv4Address, header: list[str]) -> None:
    assert client_address(str(peer), ", ".join(header), PROXIES) == str(peer)


@given(st.sampled_from(["10.0.0.1", "fd00::1"]), hops)
def test_result_is_the_peer_or_a_hop_and_untrusted_when_possible(
    peer: str, header: list[str]
) -> None:
    result = client_address(peer, ", ".join(header), PROXIES)
    stripped = [h.strip() for h in header]
    assert result == peer or result in stripped
    if result != peer:
        address = parse_address(result)
        assert address is not None
        # Every hop to the right of the result is a valid, trusted proxy address.
        right = stripped[len(stripped) - 1 - stripped[::-1].index(result) + 1 :]
        for hop in (h for h in right if h):
            hop_address = parse_address(hop)
            assert hop_address is not None
            assert any(hop_address in net for net in PROXIES)


# ------------------------------------------------------------------------ rate-limit keys


def test_rate_limit_key_of_an_ipv4_address_is_the_address() -> None:
    assert rate_limit_key("192.0.2.7") == "192.0.2.7"
    assert rate_limit_key(" 192.0.2.7 ") == "192.0.2.7"
    assert rate_limit_key("192.0.2.8") != rate_limit_key("192.0.2.7")


def test_rate_limit_key_of_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    assert rate_limit_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_rate_limit_key_of_an_ipv6_address_is_its_64_by_default() -> None:
    assert rate_limit_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert rate_limit_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert rate_limit_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"


def test_rate_limit_key_prefix_is_configurable() -> None:
    assert rate_limit_key("2001:db8:1:2:3:4:5:6", 48) == "2001:db8:1::/48"
    assert rate_limit_key("2001:db8:1:2:3:4:5:6", 56) == "2001:db8:1::/56"
    assert rate_limit_key("2001:db8:1:2:3:4:5:6", 128) == "2001:db8:1:2:3:4:5:6/128"
    # IPv4 is never widened.
    assert rate_limit_key("192.0.2.7", 32) == "192.0.2.7"


@pytest.mark.parametrize(
    "spelling", ["fe80::1%eth0", "fe80::1%2", "FE80:0:0:0:0:0:0:1", "fe80::0001%lo", " fe80::1 "]
)
def test_rate_limit_key_ignores_zone_ids_and_spelling(spelling: str) -> None:
    assert rate_limit_key(spelling, 128) == rate_limit_key("fe80::1", 128) == "fe80::1/128"


@pytest.mark.parametrize("text", ["", "unknown", "unix:/run/socket"])
def test_rate_limit_key_of_text_that_is_no_address_is_the_text(text: str) -> None:
    assert rate_limit_key(text) == text


@given(st.ip_addresses(v=6), st.integers(min_value=32, max_value=128))
def test_rate_limit_key_is_the_network_holding_the_address(
    address: ipaddress.IPv6Address, prefix: int
) -> None:
    key = rate_limit_key(str(address), prefix)
    if address.ipv4_mapped is not None:
        assert key == str(address.ipv4_mapped)
        return
    network = ipaddress.IPv6Network(key)
    assert network.prefixlen == prefix
    assert address in network
