"""DNS discovery: A/AAAA or SRV records, re-resolved on an interval.

Uses dnspython's async resolver (never the blocking stub resolver), or the loop's
``getaddrinfo`` (``resolver: system``, for /etc/hosts names and A/AAAA only; it runs in the
loop's thread pool, so it does not block the loop either). A failed resolution keeps the last
known set: a DNS blip must not empty the fleet. An authoritative "no such name" / "no records"
answer is a real empty set and is reported as one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from extproc.collectors.discovery import EndpointTemplate, OnChange, format_address
from extproc.fleet.state import Endpoint

log = logging.getLogger(__name__)

RecordType = Literal["A", "AAAA", "SRV"]


class DNSDiscovery:
    """Resolves ``name`` every ``interval_s`` and reports the endpoints when they change."""

    name = "dns"

    def __init__(
        self,
        hostname: str,
        *,
        record: RecordType = "A",
        port: int = 8000,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        template: EndpointTemplate | None = None,
        nameservers: Sequence[str] = (),
        nameserver_port: int = 53,
        resolver: Literal["dnspython", "system"] = "dnspython",
    ) -> None:
        if record not in ("A", "AAAA", "SRV"):
            raise ValueError(f"unsupported DNS record type {record!r}")
        if resolver == "system" and record == "SRV":
            raise ValueError("the system resolver cannot look up SRV records; use dnspython")
        self.hostname = hostname
        self.record: RecordType = record
        self.port = port
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.template = template or EndpointTemplate()
        self.use_system = resolver == "system"
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = nameserver_port
        self.resolutions = 0
        self.failures = 0
        self.last_error = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DNSDiscovery:
        if "name" not in config:
            raise ValueError("dns discovery needs a 'name' to resolve")
        return cls(
            str(config["name"]),
            record=str(config.get("record", "A")).upper(),  # type: ignore[arg-type]
            port=int(config.get("port", 8000)),
            interval_s=float(config.get("interval_s", 5.0)),
            timeout_s=float(config.get("timeout_s", 2.0)),
            template=EndpointTemplate.from_dict(config),
            nameservers=tuple(str(n) for n in config.get("nameservers", ())),
            nameserver_port=int(config.get("nameserver_port", 53)),
            resolver=str(config.get("resolver", "dnspython")),  # type: ignore[arg-type]
        )

    async def run(self, on_change: OnChange) -> None:
        last: tuple[Endpoint, ...] | None = None
        while True:
            try:
                addresses = await self.resolve()
            except (dns.exception.DNSException, OSError) as exc:
                # Keep the last set; try again next interval.
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("DNS discovery of %s failed: %s", self.hostname, self.last_error)
            else:
                self.resolutions += 1
                endpoints = tuple(self.template.endpoint(a) for a in addresses)
                if endpoints != last:
                    last = endpoints
                    on_change(endpoints)
            await asyncio.sleep(self.interval_s)

    async def resolve(self) -> list[str]:
        """Sorted, de-duplicated ``host:port`` list (sorted so reordering is not a change)."""
        if self.use_system:
            return sorted(set(await self._system_lookup(self.hostname, self.port)))
        if self.record == "SRV":
            return sorted(set(await self._srv()))
        return sorted(
            format_address(ip, self.port) for ip in set(await self._lookup(self.hostname, self.record))
        )

    async def _lookup(self, hostname: str, record: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(hostname, record, lifetime=self.timeout_s, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []  # an authoritative "nothing here" is a real, empty answer
        return [rdata.to_text() for rdata in answer]

    async def _srv(self) -> list[str]:
        try:
            answer = await self._resolver.resolve(self.hostname, "SRV", lifetime=self.timeout_s, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        # Servers usually put the targets' A records in the additional section; use them and
        # only look up what is missing.
        glue: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name.to_text(), []).extend(r.to_text() for r in rrset)
        addresses: list[str] = []
        lookups: list[tuple[str, int]] = []
        for rdata in answer:
            target = rdata.target.to_text()
            port = int(rdata.port)
            if target in glue:
                addresses.extend(format_address(ip, port) for ip in glue[target])
            else:
                lookups.append((target, port))
        results = await asyncio.gather(*(self._lookup(target, "A") for target, _ in lookups))
        for (_, port), ips in zip(lookups, results, strict=True):
            addresses.extend(format_address(ip, port) for ip in ips)
        return addresses

    @staticmethod
    async def _system_lookup(hostname: str, port: int) -> Iterable[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        return (format_address(str(info[4][0]), port) for info in infos)
