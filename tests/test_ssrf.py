"""Where webhooks may send (app/ssrf.py): addresses, what a refusal tells, how names resolve."""

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from httpx import AsyncClient

from app.webhooks import ssrf
from tests.conftest import ClientFactory
from tests.helpers import assert_problem

# IPv6 addresses that lead to an IPv4 address inside: 169.254.169.254 is the metadata
# service of most clouds, 10.0.0.1 a private network, 127.0.0.1 this host.
EMBEDDING_PRIVATE = [
    "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052) of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 (RFC 8215)
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "::a00:1",  # IPv4-compatible 10.0.0.1
    "2001:0:a9fe:a9fe::",  # Teredo, server 169.254.169.254
    "2001:0:808:808::f5ff:fffe",  # Teredo, client (inverted) 10.0.0.1
]
# The same mechanisms leading to a public address, and plain global unicast.
EMBEDDING_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_an_ipv6_address_carrying_a_private_ipv4_is_not_public(address: str) -> None:
    assert not ssrf.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC)
def test_an_ipv6_address_leading_to_a_public_address_is_public(address: str) -> None:
    assert ssrf.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["::", "::1", "ff02::1", "fe80::1", "fc00::1", "100::1", "4000::1", "2001:db8::1"]
)
def test_ipv6_outside_global_unicast_is_not_public(address: str) -> None:
    assert not ssrf.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
async def test_webhooks_to_ipv6_transition_addresses_of_private_ones_are_refused(
    client: AsyncClient, address: str
) -> None:
    response = await client.post("/webhooks", json={"url": f"http://[{address}]/", "events": ["*"]})

    problem = assert_problem(response, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["url"]


async def test_webhooks_to_nat64_of_a_public_address_are_accepted(client: AsyncClient) -> None:
    response = await client.post(
        "/webhooks", json={"url": "http://[64:ff9b::808:808]/hook", "events": ["*"]}
    )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://localhost:8080/hook", "127.0.0.1"),
        ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),
        ("http://[::ffff:10.1.2.3]/", "10.1.2.3"),
    ],
)
async def test_a_refused_url_is_answered_without_the_addresses_it_resolves_to(
    make_client: ClientFactory, url: str, address: str
) -> None:
    async with make_client() as client:
        response = await client.post("/webhooks", json={"url": url, "events": ["*"]})

    problem = assert_problem(response, 422, "validation_failed")
    assert address not in response.text
    assert "loopback, private, link-local or metadata" in problem["errors"][0]["message"]


# --- Looking hosts up (issue 19, finding 5) ---------------------------------------------------


@contextmanager
def _silent_nameserver() -> Iterator[tuple[str, list[bytes]]]:
    """A DNS server on 127.0.0.1 that takes every query and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    received: list[bytes] = []
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", received
    finally:
        with suppress(BlockingIOError):
            while True:
                received.append(sock.recv(512))
        sock.close()


async def test_slow_lookups_end_in_time_a_few_at_a_time_and_hold_no_thread() -> None:
    # Webhook hosts were looked up with the loop's getaddrinfo: no timeout, and in the loop's
    # few worker threads, which psycopg's connections by host name need too.
    loop = asyncio.get_running_loop()
    with _silent_nameserver() as (nameserver, received):
        resolver = ssrf.Resolver(timeout=0.5, max_lookups=2, nameservers=[nameserver])
        try:
            started = time.monotonic()
            lookups = [
                ssrf.resolve(f"http://slow-{i:02}.test/", allow_private=False, resolver=resolver)
                for i in range(12)
            ]
            results = await asyncio.gather(
                *lookups,
                # Meanwhile the loop's thread pool is free: a lookup there answers at once.
                asyncio.wait_for(loop.getaddrinfo("localhost", 80), 0.3),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
        finally:
            await resolver.close()
        await asyncio.sleep(0.05)

    *refused, threaded = results
    assert not isinstance(threaded, BaseException), threaded
    for error in refused:
        assert isinstance(error, ssrf.AddressRefused)
        assert "did not resolve within 0.5 s" in str(error)
    assert elapsed < 3
    # At most two lookups at once: the ten others gave up waiting for a slot.
    asked = {i for i in range(12) if any(f"slow-{i:02}".encode() in q for q in received)}
    assert 1 <= len(asked) <= 2, asked


async def test_a_lookup_whose_slot_frees_near_its_deadline_asks_nobody() -> None:
    # Those that waited for a slot while the ones before timed out got it with no time left
    # and still sent their query (a flaky count of queries in the test above, under load).
    with _silent_nameserver() as (nameserver, received):
        resolver = ssrf.Resolver(timeout=0.5, max_lookups=1, nameservers=[nameserver])
        try:

            async def hold_the_slot() -> None:
                async with resolver._slots:
                    await asyncio.sleep(0.45)

            holder = asyncio.create_task(hold_the_slot())
            await asyncio.sleep(0)  # the holder takes the slot first
            with pytest.raises(ssrf.AddressRefused, match=r"did not resolve within 0\.5 s"):
                await ssrf.resolve("http://late-01.test/", allow_private=False, resolver=resolver)
            await holder
        finally:
            await resolver.close()
        await asyncio.sleep(0.05)

    assert not any(b"late-01" in q for q in received)


async def test_hosts_resolve_as_the_system_resolves_them() -> None:
    resolver = ssrf.Resolver()
    try:
        local = await resolver.addresses("localhost", 443)  # the hosts file
        with pytest.raises(ssrf.AddressRefused, match="does not resolve"):
            await resolver.addresses("no-such-host.invalid", 443)
    finally:
        await resolver.close()

    assert ipaddress.ip_address("127.0.0.1") in local
