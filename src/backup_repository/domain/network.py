"""``restrictByIP`` matching, client address rules and the keys rate limits count under,
without I/O: host names are resolved by the caller, which passes the addresses they resolved
to."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True)
class AddressRules:
    """``restrictByIP`` entries sorted into networks (IPs are /32 or /128) and host names."""

    networks: tuple[IPNetwork, ...]
    hostnames: tuple[str, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressRules:
        networks: list[IPNetwork] = []
        hostnames: list[str] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(_as_ipv4_if_mapped(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                hostnames.append(entry.lower().rstrip("."))
        return cls(tuple(networks), tuple(hostnames))

    @property
    def is_empty(self) -> bool:
        return not self.networks and not self.hostnames

    def allows(self, client: str, resolved: Mapping[str, Iterable[str]] | None = None) -> bool:
        """True when ``client`` is in one of the networks, or is one of the addresses a host
        name resolved to (``resolved`` maps each host name to its addresses)."""
        if self.is_empty:
            return True
        address = parse_address(client)
        if address is None:
            return False
        if any(address in net for net in self.networks):
            return True
        for host in self.hostnames:
            for candidate in (resolved or {}).get(host, ()):
                other = parse_address(candidate)
                if other is not None and other == address:
                    return True
        return False


def _as_ipv4_if_mapped(network: IPNetwork) -> IPNetwork:
    # Clients are compared in IPv4 form when they arrive as ::ffff:a.b.c.d (parse_address),
    # so a rule written in that form must be IPv4 as well, or it could never match.
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= _IPV4_MAPPED.prefixlen
        and network.subnet_of(_IPV4_MAPPED)
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - _IPV4_MAPPED.prefixlen))
    return network


def parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, in which case the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    trusted_nets = tuple(trusted)

    def is_trusted(text: str) -> bool:
        address = parse_address(text)
        return address is not None and any(address in net for net in trusted_nets)

    if not forwarded_for or not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if parse_address(hop) is None:
            # Garbage in the header: stop at the last hop we could trust.
            return peer
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


# The usual IPv6 subnet of one host or one customer: providers hand out a /64 or more, and
# its holder picks the low 64 bits freely (privacy addresses rotate them on their own).
DEFAULT_IPV6_KEY_PREFIX = 64


def rate_limit_key(client: str, ipv6_prefix: int = DEFAULT_IPV6_KEY_PREFIX) -> str:
    """The key a client's requests are counted under: an IPv4 address as itself, an IPv6
    address as its ``/ipv6_prefix`` network, so that a host rotating addresses inside its
    own subnet still has one bucket. A zone id (``fe80::1%eth0``) and the spelling do not
    matter; an IPv4-mapped address is its IPv4 address. Text that is not an address is
    its own key."""
    address = parse_address(client)
    if address is None:
        return client
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
