"""Where a webhook may send: its host resolved and checked, the checked address used.

API.md "Webhooks": URLs whose host resolves to a loopback, private, link-local or metadata
address are refused unless INVENTORY_WEBHOOK_ALLOW_PRIVATE=1. The check runs when a webhook
is registered (422) and again before every attempt, and the attempt connects to the very
address that was checked (the Host header and TLS SNI keep the name), so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot reach inside.
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The URL's host does not resolve, or resolves to an address webhooks may not reach."""


def is_public(address: Address) -> bool:
    """True for a globally routed unicast address.

    is_global is False for loopback, RFC 1918 and unique-local, link-local (169.254/16,
    where cloud metadata services answer, and fe80::/10), shared (100.64/10, Alibaba's
    metadata), unspecified, reserved and documentation ranges. An IPv4-mapped IPv6 address
    (::ffff:127.0.0.1) is judged as the IPv4 address it carries.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    """A request target with its host pinned to a checked address."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, str]


async def _addresses(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError):
        raise AddressRefused(f"{host} does not resolve") from None
    found: list[Address] = []
    for info in infos:
        # A link-local IPv6 answer carries its zone ("fe80::1%eth0").
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise AddressRefused(f"{host} does not resolve")
    return found


async def resolve(url: str, *, allow_private: bool) -> list[Target]:
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
    addresses = await _addresses(host, port)
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise AddressRefused(
                f"{host} resolves to {refused[0]}, a loopback, private, link-local or "
                "metadata address"
            )
    headers = {"Host": parsed.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return [Target(parsed.copy_with(host=str(a)), headers, extensions) for a in addresses]
