"""Kubernetes discovery: list + watch ``discovery.k8s.io/v1`` EndpointSlices.

The official client is synchronous, so list/watch runs in one daemon thread per source and
hands raw JSON objects to the event loop with ``call_soon_threadsafe``; all state lives on
the loop side (:class:`EndpointSliceState`), so the loop never blocks and never shares
mutable state with the thread. Slices are merged by their ``kubernetes.io/service-name``
label. An endpoint takes traffic only when ``conditions.ready`` is true (nil counts as true,
as the API documents); a terminating endpoint that is still serving is reported with
``discovered_ready=False`` so it keeps its row (in-flight requests drain, metrics keep
flowing) but gets no new traffic. A watch that expires (410 Gone) or fails is followed by a
fresh list, which replaces the state wholesale.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from extproc.collectors.discovery import EndpointTemplate, OnChange, format_address
from extproc.fleet.state import Endpoint

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
JsonObject = dict[str, Any]


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


class EndpointSliceApi(Protocol):
    """What the source needs from the API server (the real one wraps the official client)."""

    def list(self, namespace: str, label_selector: str) -> tuple[list[JsonObject], str]:
        """All matching slices as raw JSON, and the list's resourceVersion."""
        ...

    def watch(
        self, namespace: str, label_selector: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, JsonObject]]:
        """(event type, raw object) pairs; raises :class:`Gone` when the version expired."""
        ...

    def stop(self) -> None: ...


class KubernetesApi:
    """:class:`EndpointSliceApi` over ``kubernetes.client.DiscoveryV1Api`` and ``watch.Watch``.

    ``discovery_api`` may be any object with the client's ``list_namespaced_endpoint_slice``
    (tests pass one that replays recorded JSON through the real ``Watch.stream``).
    """

    def __init__(self, discovery_api: Any | None = None) -> None:
        self._api = discovery_api
        self._watch: Any | None = None

    def _client(self) -> Any:
        if self._api is None:
            # Imported and configured here, in the worker thread: config loading reads files.
            # The client is untyped; Any keeps mypy --strict honest about that.
            config: Any = importlib.import_module("kubernetes.config")
            client: Any = importlib.import_module("kubernetes.client")
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.DiscoveryV1Api()
        return self._api

    def list(self, namespace: str, label_selector: str) -> tuple[list[JsonObject], str]:
        response = self._client().list_namespaced_endpoint_slice(
            namespace, label_selector=label_selector, _preload_content=False
        )
        try:
            raw = response.data if hasattr(response, "data") else response.read()
            body = json.loads(raw)
        finally:
            close = getattr(response, "release_conn", None)
            if close is not None:
                close()
        return list(body.get("items") or []), str(body.get("metadata", {}).get("resourceVersion", ""))

    def watch(
        self, namespace: str, label_selector: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, JsonObject]]:
        watch: Any = importlib.import_module("kubernetes.watch")
        exceptions: Any = importlib.import_module("kubernetes.client.exceptions")
        api_exception: type[Exception] = exceptions.ApiException

        self._watch = watch.Watch(return_type="V1EndpointSlice")
        try:
            for event in self._watch.stream(
                self._client().list_namespaced_endpoint_slice,
                namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                # Setting a timeout also turns off the client's silent 410 retry, so an
                # expired version surfaces here and we relist.
                timeout_seconds=timeout_s,
            ):
                yield str(event["type"]), event["raw_object"]
        except api_exception as exc:
            if getattr(exc, "status", None) == 410:
                raise Gone(str(getattr(exc, "reason", exc))) from exc
            raise

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()


class EndpointSliceState:
    """Slices by name, merged into the endpoint tuple. Pure: no I/O, easy to test."""

    def __init__(
        self,
        services: Mapping[str, EndpointTemplate],
        *,
        port_name: str | None = None,
        port: int | None = None,
    ) -> None:
        self.services = dict(services)
        self.port_name = port_name
        self.port = port
        self.slices: dict[str, JsonObject] = {}

    def reset(self, items: Sequence[JsonObject]) -> None:
        self.slices = {}
        for item in items:
            self.apply("ADDED", item)

    def apply(self, event_type: str, obj: JsonObject) -> None:
        metadata = obj.get("metadata") or {}
        key = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
        if event_type == "DELETED":
            self.slices.pop(key, None)
        elif event_type in ("ADDED", "MODIFIED"):
            if (metadata.get("labels") or {}).get(SERVICE_LABEL) in self.services:
                self.slices[key] = obj
            else:
                self.slices.pop(key, None)  # relabelled away from our services
        # BOOKMARK carries only a resourceVersion; nothing to apply.

    def _slice_port(self, obj: JsonObject) -> int | None:
        ports = obj.get("ports") or []
        if self.port_name is not None:
            for entry in ports:
                if entry.get("name") == self.port_name and entry.get("port") is not None:
                    return int(entry["port"])
            return None
        if self.port is not None:
            return self.port
        for entry in ports:
            if entry.get("port") is not None:
                return int(entry["port"])
        return None

    def endpoints(self) -> tuple[Endpoint, ...]:
        found: dict[str, Endpoint] = {}
        for key in sorted(self.slices):  # stable order across events and relists
            obj = self.slices[key]
            template = self.services[obj["metadata"]["labels"][SERVICE_LABEL]]
            port = self._slice_port(obj)
            if port is None:
                continue
            for entry in obj.get("endpoints") or []:
                conditions = entry.get("conditions") or {}
                ready = conditions.get("ready")
                if conditions.get("terminating"):
                    if conditions.get("serving") is False:
                        continue
                    routable = False  # draining: keep the row, no new traffic
                elif ready is None or ready is True:
                    routable = True
                else:
                    continue
                for ip in entry.get("addresses") or []:
                    address = format_address(str(ip), port)
                    previous = found.get(address)
                    if previous is not None and (previous.discovered_ready or not routable):
                        continue  # the same address in two slices: a ready copy wins
                    found[address] = template.endpoint(
                        address,
                        zone=entry.get("zone") or None,
                        node=str(entry.get("nodeName") or ""),
                        ready=routable,
                    )
        return tuple(found.values())


class EndpointSliceDiscovery:
    """Watches the EndpointSlices of one or more Services in a namespace."""

    name = "k8s"

    def __init__(
        self,
        namespace: str,
        services: Mapping[str, EndpointTemplate] | Sequence[str],
        *,
        port_name: str | None = None,
        port: int | None = None,
        template: EndpointTemplate | None = None,
        api: EndpointSliceApi | None = None,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        default = template or EndpointTemplate()
        resolved = dict(services) if isinstance(services, Mapping) else {name: default for name in services}
        if not resolved:
            raise ValueError("k8s discovery needs at least one service")
        self.namespace = namespace
        self.state = EndpointSliceState(resolved, port_name=port_name, port=port)
        self.api: EndpointSliceApi = api or KubernetesApi()
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        names = ",".join(sorted(resolved))
        self.label_selector = f"{SERVICE_LABEL} in ({names})"
        # Counters for the metrics module.
        self.lists = 0
        self.events = 0
        self.gone = 0
        self.errors = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EndpointSliceDiscovery:
        """``services``: names, or {name, pool, models, gpu_class, zone} (top-level keys are defaults)."""
        default = EndpointTemplate.from_dict(config)
        services: dict[str, EndpointTemplate] = {}
        for entry in config.get("services") or ([config["service"]] if "service" in config else []):
            if isinstance(entry, str):
                services[entry] = default
            else:
                merged = {k: v for k, v in config.items() if k in ("pool", "models", "gpu_class", "zone")}
                merged.update(entry)
                services[str(entry["name"])] = EndpointTemplate.from_dict(merged)
        return cls(
            str(config.get("namespace", "default")),
            services,
            port_name=config.get("port_name"),
            port=int(config["port"]) if "port" in config else None,
            watch_timeout_s=int(config.get("watch_timeout_s", 300)),
            retry_s=float(config.get("retry_s", 1.0)),
        )

    async def run(self, on_change: OnChange) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def post(message: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, message)
            except RuntimeError:
                stop.set()  # the loop is gone; nobody is listening any more

        thread = threading.Thread(
            target=self._worker, args=(post, stop), name="k8s-endpointslices", daemon=True
        )
        thread.start()
        last: tuple[Endpoint, ...] | None = None
        try:
            while True:
                message = await queue.get()
                # Apply everything already queued before recomputing: a relist or a burst of
                # events becomes one on_change.
                while True:
                    self._apply(message)
                    try:
                        message = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                endpoints = self.state.endpoints()
                if endpoints != last:
                    last = endpoints
                    on_change(endpoints)
        finally:
            stop.set()
            self.api.stop()

    def _apply(self, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "RESET":
            self.state.reset(payload)
        else:
            self.state.apply(kind, payload)

    def _worker(self, post: Any, stop: threading.Event) -> None:
        """List, then watch from the list's version; relist after 410 or any failure."""
        while not stop.is_set():
            try:
                items, version = self.api.list(self.namespace, self.label_selector)
                self.lists += 1
                post(("RESET", items))
                while not stop.is_set():
                    for event_type, obj in self.api.watch(
                        self.namespace, self.label_selector, version, self.watch_timeout_s
                    ):
                        if stop.is_set():
                            return
                        self.events += 1
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        post((event_type, obj))
                    # The server closed the watch (timeout): resume from the last version seen.
            except Gone:
                self.gone += 1
                log.info("EndpointSlice watch expired (410 Gone); relisting")
            except Exception:
                # Keep the last endpoint set (nothing is posted) and retry after a pause.
                self.errors += 1
                log.exception("EndpointSlice list/watch failed; retrying in %.1fs", self.retry_s)
                stop.wait(self.retry_s)
