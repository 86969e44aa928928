"""DNS discovery against a tiny authoritative DNS server on 127.0.0.1 (UDP, started per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from extproc.collectors.discovery import EndpointTemplate, build_discovery, format_address
from extproc.collectors.dns import DNSDiscovery
from extproc.fleet.state import Endpoint


class TinyDNS(asyncio.DatagramProtocol):
    """Answers from ``zone[(name, type)] -> [rdata text]``; SRV answers carry A glue."""

    def __init__(self) -> None:
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.queries = 0
        self.fail = False  # answer SERVFAIL to everything
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is not registered as a DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if self.fail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.zone:
            response.answer.append(dns.rrset.from_text(name, 5, "IN", rdtype, *self.zone[(name, rdtype)]))
            if rdtype == "SRV":
                for rdata in self.zone[(name, rdtype)]:
                    target = rdata.split()[-1]
                    if (target, "A") in self.zone and target.startswith("glue"):
                        response.additional.append(
                            dns.rrset.from_text(target, 5, "IN", "A", *self.zone[(target, "A")])
                        )
        elif not any(key[0] == name for key in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def tiny_dns() -> AsyncIterator[tuple[TinyDNS, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(TinyDNS, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    yield protocol, port
    transport.close()


async def next_change(queue: asyncio.Queue[tuple[Endpoint, ...]]) -> tuple[Endpoint, ...]:
    return await asyncio.wait_for(queue.get(), 10)


async def test_a_records_reresolved(tiny_dns: tuple[TinyDNS, int]) -> None:
    server, port = tiny_dns
    server.zone[("vllm.test.", "A")] = ["10.0.0.2", "10.0.0.1"]
    source = build_discovery(
        {
            "type": "dns",
            "name": "vllm.test.",
            "port": 8000,
            "interval_s": 0.02,
            "nameservers": ["127.0.0.1"],
            "nameserver_port": port,
            "models": ["llama"],
            "pool": "a100",
        }
    )
    assert isinstance(source, DNSDiscovery)
    changes: asyncio.Queue[tuple[Endpoint, ...]] = asyncio.Queue()
    task = asyncio.create_task(source.run(changes.put_nowait))
    try:
        first = await next_change(changes)
        assert [e.address for e in first] == ["10.0.0.1:8000", "10.0.0.2:8000"]
        assert first[0] == Endpoint("10.0.0.1:8000", pool="a100", models=("llama",))
        server.zone[("vllm.test.", "A")] = ["10.0.0.3", "10.0.0.1"]
        second = await next_change(changes)
        assert [e.address for e in second] == ["10.0.0.1:8000", "10.0.0.3:8000"]
        # A server failure keeps the last set (no change reported), and counts.
        server.fail = True
        failures = source.failures
        while source.failures < failures + 2:
            await asyncio.sleep(0.01)
        assert changes.empty()
        server.fail = False
        # An authoritative NXDOMAIN is a real empty set.
        del server.zone[("vllm.test.", "A")]
        assert await next_change(changes) == ()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_srv_records_with_and_without_glue(tiny_dns: tuple[TinyDNS, int]) -> None:
    server, port = tiny_dns
    server.zone[("_http._tcp.vllm.test.", "SRV")] = ["10 50 8001 glue1.test.", "10 50 8002 plain.test."]
    server.zone[("glue1.test.", "A")] = ["10.1.0.1"]
    server.zone[("plain.test.", "A")] = ["10.1.0.2", "10.1.0.3"]
    source = DNSDiscovery(
        "_http._tcp.vllm.test.",
        record="SRV",
        interval_s=0.02,
        nameservers=["127.0.0.1"],
        nameserver_port=port,
        template=EndpointTemplate(models=("m",)),
    )
    assert await source.resolve() == ["10.1.0.1:8001", "10.1.0.2:8002", "10.1.0.3:8002"]
    changes: asyncio.Queue[tuple[Endpoint, ...]] = asyncio.Queue()
    task = asyncio.create_task(source.run(changes.put_nowait))
    try:
        assert len(await next_change(changes)) == 3
        server.zone[("_http._tcp.vllm.test.", "SRV")] = ["10 50 9000 glue1.test."]
        assert [e.address for e in await next_change(changes)] == ["10.1.0.1:9000"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_system_resolver_localhost() -> None:
    source = build_discovery({"type": "dns", "name": "localhost", "port": 8123, "resolver": "system"})
    assert isinstance(source, DNSDiscovery)
    addresses = await source.resolve()
    assert "127.0.0.1:8123" in addresses or "[::1]:8123" in addresses


def test_config_errors_and_formatting() -> None:
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_discovery({"type": "dns"})
    with pytest.raises(ValueError, match="unsupported"):
        DNSDiscovery("x", record="MX")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SRV"):
        DNSDiscovery("x", record="SRV", resolver="system")
    assert format_address("::1", 80) == "[::1]:80"
    assert format_address("10.0.0.1", 80) == "10.0.0.1:80"
    assert format_address("host.example", 80) == "host.example:80"
