"""Run the ext_proc server with its collectors until SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from extproc.admission import Capacity
from extproc.capacity.cache import MemoryCache, RedisCache, ResponseStore
from extproc.capacity.limits import Limiter, MemoryLimiter, RedisLimiter
from extproc.complexity.scorer import ComplexityModel
from extproc.config import ServerConfig
from extproc.fleet.state import FleetSnapshot, FleetState, FloatArray, InFlight
from extproc.observability.decision_log import DecisionLog, DecisionLogConfig
from extproc.observability.metrics import Metrics
from extproc.observability.metrics_server import MetricsServer
from extproc.observability.telemetry import Telemetry
from extproc.observability.tracing import DecisionTracer, otlp_tracer
from extproc.observe import Observation
from extproc.policy.compile import CompiledPolicy
from extproc.policy.reload import PolicyReloader
from extproc.router import Router
from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.picking import EndpointPicker
from extproc.scheduler.scheduler import Scheduler
from extproc.scheduler.speed import SpeedEstimator
from extproc.server import ExternalProcessor, HealthGate, build_grpc_server

if TYPE_CHECKING:
    from extproc.wasm.brain import Brain

log = logging.getLogger(__name__)


class Collector(Protocol):
    """Anything that keeps a FleetState up to date off the request path."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


CollectorFactory = Callable[[FleetState], Collector]


def complexity_scorer() -> ComplexityModel | None:
    """The shipped complexity model (both heads), loaded once at start-up (not on the request path)."""
    from extproc import complexity

    if not complexity.MODEL_PATH.exists():
        log.warning("no complexity model at %s: complexity is 0 for every request", complexity.MODEL_PATH)
        return None
    return complexity.model()


def build_capacity(config: ServerConfig, metrics: Metrics) -> Capacity:
    """The response cache and the tenant limits store the configuration names."""
    cache: ResponseStore | None = None
    if config.cache_backend == "memory":
        cache = MemoryCache(config.cache_max_bytes)
    elif config.cache_backend == "redis":
        cache = RedisCache(config.redis_url)
    elif config.cache_backend != "off":
        raise ValueError(f"cache backend must be memory, redis or off, not {config.cache_backend!r}")
    limiter: Limiter
    if config.limits_backend == "memory":
        limiter = MemoryLimiter()
    elif config.limits_backend == "redis":
        limiter = RedisLimiter(config.redis_url, fail_open=config.limits_fail_open)
    else:
        raise ValueError(f"limits backend must be memory or redis, not {config.limits_backend!r}")
    return Capacity(cache, limiter, metrics)


class App:
    def __init__(
        self,
        config: ServerConfig,
        collector_factory: CollectorFactory,
        picker: EndpointPicker | None = None,
        scheduler_config: SchedulerConfig | None = None,
        policy: PolicyReloader | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.config = config
        self.fleet = FleetState()
        # Several worker processes share one InFlight view (extproc.fleet.shared).
        self.inflight = inflight or InFlight()
        self.outliers = OutlierDetector(fleet_size=lambda: self.fleet.snapshot.size)
        # Endpoint speeds learned from scrapes and observed responses; survives policy reloads.
        self.speeds = SpeedEstimator()
        self.fleet.subscribe(self.speeds.on_publish)
        self.scheduler = Scheduler(scheduler_config, self.outliers, speeds=self.speeds)
        self._picker_is_scheduler = picker is None
        self.policy = policy
        self.router = Router(
            config,
            self.fleet,
            picker or self.scheduler,
            self.inflight,
            policy=policy.get if policy is not None else lambda: None,
            complexity=complexity_scorer(),
        )
        self.router.on_response = self.outliers.observe
        self.metrics = Metrics()
        self.router.metrics = self.metrics
        if policy is not None:
            self._apply_scheduler_config(policy.current)
            policy.on_change.append(self._apply_scheduler_config)
            self.metrics.policy_loaded(policy.current.version, ok=True)
            policy.on_change.append(lambda p: self.metrics.policy_loaded(p.version, ok=True))
            policy.on_error.append(lambda _error: self.metrics.policy_loaded("", ok=False))
        tracer: DecisionTracer | None = otlp_tracer(config.otlp_endpoint) if config.otlp_endpoint else None
        self.telemetry = Telemetry(
            DecisionLog(
                DecisionLogConfig(
                    path=config.decision_log,
                    sample_rate=config.decision_log_sample_rate,
                    include_prompt=config.decision_log_include_prompt,
                )
            ),
            tracer=tracer,
            metrics=self.metrics,
            on_ttft=self.outliers.observe_latency,
            on_observation=self._observed_speed,
            pool_of=self._pool_of,
            expect_observer=config.expect_observer,
        )
        self._expiry: asyncio.Task[None] | None = None
        self.capacity = build_capacity(config, self.metrics)
        self.processor = ExternalProcessor(config, self.router, self.telemetry, self.capacity)
        self.health = HealthGate(self.fleet)
        self.collector = collector_factory(self.fleet)
        self.server = build_grpc_server(config, self.processor, self.health)
        self.metrics.watch_fleet(
            lambda: self.fleet.snapshot,
            counters={
                "llm_extproc_endpoint_ejections": (
                    "Endpoints ejected by passive health.",
                    lambda: float(self.outliers.ejections_total),
                ),
                # Which stream told passive health each response's status: the observer's, when
                # Envoy skips the routing stream's response headers (one round trip less).
                "llm_extproc_response_status_from_observer": (
                    "Responses whose status reached passive health from the observer stream.",
                    lambda: float(self.processor.statuses_from_observer),
                ),
                "llm_extproc_response_status_from_routing_stream": (
                    "Responses whose status reached passive health from the routing stream.",
                    lambda: float(self.processor.statuses_from_routing),
                ),
                # Envoy's first try at our primary failed and a fallback of the list answered.
                "llm_extproc_served_by_fallback": (
                    "Responses served by a fallback endpoint after the primary's try failed.",
                    lambda: float(self.router.retried_away),
                ),
                # Responses API: answers whose endpoint was remembered, and follow-ups
                # (previous_response_id) sent to the endpoint that stored their response.
                "llm_extproc_response_homes_learned": (
                    "Responses API answers whose serving endpoint was remembered.",
                    lambda: float(self.router.response_homes.learned),
                ),
                "llm_extproc_response_homes_pinned": (
                    "Follow-ups routed to the endpoint that stored their previous response.",
                    lambda: float(self.router.response_homes.pinned),
                ),
                "llm_extproc_stream_errors": (
                    "ext_proc gRPC streams that failed.",
                    lambda: float(self.processor.stream_errors),
                ),
            },
        )
        self.metrics.watch_speeds(self._speed_table)
        self.metrics.inflight.set_function(lambda: float(self.inflight.total()))
        self.metrics_server = MetricsServer(self.metrics, self.status)
        self.brain: Brain | None = None
        if config.brain_port:
            from extproc.wasm.brain import Brain

            self.brain = Brain(self.processor)

    def status(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "synced": self.fleet.synced,
            "endpoints": self.fleet.snapshot.size,
            "ready_endpoints": int(self.fleet.snapshot.ready_mask().sum()),
            "policy_version": policy.current.version if policy else None,
            "policy_last_error": policy.last_error if policy else None,
            "policy_reloads_ok": policy.reloads_ok if policy else 0,
            "policy_reloads_failed": policy.reloads_failed if policy else 0,
            **({"wasm": self.brain.status()} if self.brain is not None else {}),
        }

    def _speed_table(self) -> tuple[FleetSnapshot, FloatArray, FloatArray]:
        snapshot = self.fleet.snapshot
        speeds = self.scheduler.endpoint_speeds(snapshot)
        return snapshot, speeds.prefill_s_per_token, speeds.decode_s_per_token

    def _observed_speed(self, observation: Observation) -> None:
        usage = observation.usage
        if not observation.endpoint or not observation.streamed or not 200 <= observation.status < 300:
            return
        self.speeds.observe_response(
            observation.endpoint,
            usage.prompt_tokens if usage is not None else None,
            observation.ttft_s,
            observation.time_per_output_token_s,
            usage.completion_tokens if usage is not None else None,
        )

    def _pool_of(self, address: str) -> str:
        snapshot = self.fleet.snapshot
        row = snapshot.index.get(address)
        return snapshot.endpoints[row].pool if row is not None else ""

    def _apply_scheduler_config(self, policy: CompiledPolicy) -> None:
        """The policy's scheduler (its `scheduler:` section and pools' GPU weights) replaces ours.

        A new Scheduler, swapped in with one reference: nothing is mutated under a pick in
        progress, and cached per-fleet state (speeds, prepared scores) cannot outlive the
        settings it was computed from. Affinity learned so far (prefix owners, sessions) starts
        over, so an unchanged configuration keeps the running scheduler.
        """
        if policy.scheduler == self.scheduler.config:
            return
        self.scheduler = Scheduler(policy.scheduler, self.outliers, speeds=self.speeds)
        if self._picker_is_scheduler:
            self.router.picker = self.scheduler

    async def start(self) -> None:
        self.health.start()
        if self.policy is not None:
            self.policy.start()
        await self.server.start()
        await self.collector.start()
        if self.config.metrics_port:
            await self.metrics_server.start(self.config.metrics_host, self.config.metrics_port)
        if self.brain is not None:
            await self.brain.start(self.config.host, self.config.brain_port)
        if self.telemetry.active:
            self._expiry = asyncio.create_task(self._expire_telemetry())
        log.info("ext_proc listening on %s", self.config.address)

    async def _expire_telemetry(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.telemetry.expire()

    async def stop(self) -> None:
        """Stop taking new streams, let in-flight ones finish within the grace period."""
        if self._expiry is not None:
            self._expiry.cancel()
        self.health.shutting_down()
        await self.server.stop(self.config.shutdown_grace_s)
        await self.collector.stop()
        await self.metrics_server.stop()
        if self.brain is not None:
            await self.brain.stop()
        if self.policy is not None:
            await self.policy.stop()
        await self.capacity.drain()
        self.telemetry.flush()
        self.telemetry.log.close()
        if self.telemetry.tracer is not None:
            self.telemetry.tracer.shutdown()

    async def run_until_signalled(self, ready: Callable[[], Awaitable[None]] | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if ready is not None:
            await ready()
        await stop.wait()
        log.info("shutting down (grace %.1fs)", self.config.shutdown_grace_s)
        await self.stop()
