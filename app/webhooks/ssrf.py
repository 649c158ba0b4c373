"""Where a webhook may send: its host resolved and checked, the checked address used.

docs/api.md "Webhooks": URLs whose host resolves to a loopback, private, link-local or metadata
address are refused unless INVENTORY_WEBHOOK_ALLOW_PRIVATE=1. The check runs when a webhook
is registered (422) and again before every attempt, and the attempt connects to the very
address that was checked (the Host header and TLS SNI keep the name), so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot reach inside.
"""

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiodns
import anyio
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The URL's host does not resolve, or resolves to an address webhooks may not reach."""


# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address it reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# NAT64 for local use (RFC 8215): where the IPv4 address sits depends on the prefix length
# each network chose, and it is not globally routed: never a webhook's address.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# IPv4-compatible addresses (deprecated, RFC 4291): the last 32 bits; :: and ::1 are here too.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Global unicast: every IPv6 address a webhook may reach directly lies in it.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address leads to through a transition mechanism, or None
    when it carries none: IPv4-mapped, NAT64, IPv4-compatible, 6to4, Teredo (server and
    client)."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return None


def _public_ipv4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not address.is_multicast


def is_public(address: Address) -> bool:
    """True for a globally routed unicast address, judged by where it really leads.

    is_global is False for loopback, RFC 1918 and unique-local, link-local (169.254/16,
    where cloud metadata services answer, and fe80::/10), shared (100.64/10, Alibaba's
    metadata), unspecified, reserved and documentation ranges. An IPv6 address that
    carries an IPv4 address (::ffff:127.0.0.1, NAT64 64:ff9b::a9fe:a9fe, 6to4, Teredo,
    IPv4-compatible) is judged by the IPv4 address it carries: on a NAT64 network
    64:ff9b::a9fe:a9fe reaches 169.254.169.254, whatever is_global says of it. Any other
    IPv6 address must be global unicast (2000::/3).
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _public_ipv4(address)
    if address in _NAT64_LOCAL:
        return False
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return all(_public_ipv4(inner) for inner in embedded)
    return address in _GLOBAL_UNICAST and address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    """A request target with its host pinned to a checked address."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, str]


# A lookup's limit, waiting for a slot included; past it the host counts as not resolving.
LOOKUP_TIMEOUT = 5.0
# Lookups in flight at once per Resolver; more wait their turn (within the same limit).
MAX_LOOKUPS = 8


class Resolver:
    """Host names to addresses, in the event loop itself: c-ares, through aiodns.

    Not the loop's getaddrinfo: that runs in the loop's default thread pool (a handful of
    threads), which psycopg's connection attempts by host name share, and a lookup there
    cannot be abandoned; four slow ones stalled them all. Here a lookup holds no thread,
    gives up after `timeout`, and at most `max_lookups` run at once. Names are looked up
    as the system does (c-ares' getaddrinfo: the hosts file, then DNS).
    Make one inside the running event loop; close() it when done.
    """

    def __init__(
        self,
        *,
        timeout: float = LOOKUP_TIMEOUT,
        max_lookups: int = MAX_LOOKUPS,
        nameservers: Sequence[str] | None = None,
    ) -> None:
        self._timeout = timeout
        self._slots = anyio.Semaphore(max_lookups)
        self._dns = aiodns.DNSResolver(nameservers=nameservers, timeout=timeout, tries=1)

    async def addresses(self, host: str, port: int) -> list[Address]:
        """The host's addresses, without duplicates, in the resolver's order.

        Raises AddressRefused when it does not resolve, or not within the timeout.
        """
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        late = AddressRefused(f"the host did not resolve within {self._timeout:g} s")
        with anyio.move_on_after(self._timeout) as waiting:
            async with self._slots:
                # A slot freed near the deadline (the lookups before timed out): too late to
                # be answered in time, so nobody asks the nameserver a question whose answer
                # no one would wait for.
                if waiting.deadline - anyio.current_time() < self._timeout / 4:
                    raise late
                try:
                    result = await self._dns.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
                except aiodns.error.DNSError as exc:
                    # c-ares keeps the same deadline, and on a busy loop its timeout can land
                    # before ours: the same answer either way.
                    if exc.args and exc.args[0] == aiodns.error.ARES_ETIMEOUT:
                        raise late from None
                    raise AddressRefused("the host does not resolve") from None
                except UnicodeError:
                    raise AddressRefused("the host does not resolve") from None
        if waiting.cancelled_caught:
            raise late
        found: list[Address] = []
        for node in result.nodes:
            raw = node.addr[0]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            # A link-local IPv6 answer may carry its zone ("fe80::1%eth0").
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if address not in found:
                found.append(address)
        if not found:
            raise AddressRefused("the host does not resolve")
        return found

    async def close(self) -> None:
        await self._dns.close()


@asynccontextmanager
async def resolving() -> AsyncIterator[Resolver]:
    """A Resolver for the block, closed after it."""
    resolver = Resolver()
    try:
        yield resolver
    finally:
        await resolver.close()


async def resolve(url: str, *, allow_private: bool, resolver: Resolver) -> list[Target]:
    """Resolve the URL's host: one pinned target per address, in the resolver's order.

    Raises AddressRefused when the host does not resolve or, unless `allow_private`, when
    any of its addresses is not public (one private answer among public ones is enough:
    which one a client would use is not ours to guess).
    """
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").strip("[]")
    except (httpx.InvalidURL, UnicodeError):
        # A host IDNA cannot encode (httpx raises InvalidURL) names nothing that resolves.
        raise AddressRefused("the host is not a valid name") from None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolver.addresses(host, port)
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            # Which address, the client is not told: the refusal must not turn the API into
            # a resolver of names inside the network it runs in.
            raise AddressRefused(
                "the host resolves to a loopback, private, link-local or metadata address"
            )
    headers = {"Host": parsed.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return [Target(parsed.copy_with(host=str(a)), headers, extensions) for a in addresses]
