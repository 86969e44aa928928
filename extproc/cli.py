"""The `llm-extproc` command line. Subcommands import what they need lazily."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _collector_factory(args: argparse.Namespace) -> Callable[[Any], Any]:
    """The collector for `serve`: a static fleet file, a collector config file, or flags."""
    from extproc.collectors.collector import Collector, collector_from_fleet_file, scrape_timing

    if args.fleet:
        return lambda fleet: collector_from_fleet_file(
            Path(args.fleet),
            fleet,
            interval_s=args.scrape_interval,
            health_interval_s=args.health_interval,
            stale_after_s=args.stale_after,
        )
    if args.collector_config:
        import yaml

        raw = yaml.safe_load(Path(args.collector_config).read_text())
        return lambda fleet: Collector.from_config(raw, fleet)
    template = {"pool": args.pool, "models": args.model or [], "gpu_class": args.gpu_class}
    if args.discovery == "k8s":
        discovery = {"type": "k8s", "namespace": args.k8s_namespace, "services": args.k8s_service, **template}
        if args.k8s_port_name:
            discovery["port_name"] = args.k8s_port_name
    elif args.discovery == "dns":
        discovery = {"type": "dns", "name": args.dns_name, "record": args.dns_record, "port": args.dns_port}
        discovery.update(template)
    else:
        raise SystemExit("serve: give --fleet FILE, --collector-config FILE or --discovery k8s|dns")
    raw = {
        "discovery": discovery,
        "scrape": scrape_timing(args.scrape_interval, args.health_interval, args.stale_after),
    }
    return lambda fleet: Collector.from_config(raw, fleet)


def _serve(args: argparse.Namespace) -> int:
    from extproc.app import App
    from extproc.config import ServerConfig

    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        endpoints_per_request=args.endpoints_per_request,
        shutdown_grace_s=args.grace,
        zone=args.zone,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        inject_stream_usage=args.inject_stream_usage,
        decision_log=args.decision_log,
        decision_log_sample_rate=args.decision_log_sample_rate,
        decision_log_include_prompt=args.decision_log_include_prompt,
        otlp_endpoint=args.otlp_endpoint,
        expect_observer=not args.no_observer,
        cache_backend=args.cache,
        cache_max_bytes=args.cache_max_bytes,
        limits_backend=args.limits,
        redis_url=args.redis_url,
        limits_fail_open=not args.limits_fail_closed,
        # The Wasm data path: the filter decides, this server is its brain (docs/wasm.md).
        brain_port=args.brain_port if args.data_path == "wasm" else 0,
        complexity_header=args.data_path != "wasm",
    )
    if "redis" in (args.cache, args.limits) and not args.redis_url:
        print("llm-extproc serve: --cache redis / --limits redis need --redis-url", file=sys.stderr)
        return 2

    factory = _collector_factory(args)
    if args.workers > 1 and args.data_path == "wasm":
        print("llm-extproc serve: --data-path wasm runs one brain process (--workers 1)", file=sys.stderr)
        return 2
    if args.workers > 1:
        from extproc.workers import serve_workers

        config.workers = args.workers
        return serve_workers(config, factory, args.policy, args.policy_reload_interval)
    policy = None
    if args.policy:
        from extproc.policy.compile import PolicyError
        from extproc.policy.reload import PolicyReloader

        try:
            policy = PolicyReloader(args.policy, interval_s=args.policy_reload_interval)
        except PolicyError as error:
            print(f"llm-extproc serve: invalid policy:\n{error}", file=sys.stderr)
            return 2

    async def main() -> None:
        app = App(config, factory, policy=policy)
        await app.run_until_signalled()

    try:
        import uvloop

        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _default_stack_policy() -> str:
    from extproc.deploy import LOCAL_STACK_POLICY

    return str(LOCAL_STACK_POLICY)


def _up(args: argparse.Namespace) -> int:
    from extproc.devstack.stack import StackConfig, run_forever

    return run_forever(
        StackConfig(
            listen_port=args.port,
            admin_port=args.admin_port,
            extproc_port=args.extproc_port,
            metrics_port=args.metrics_port,
            sim_endpoints=args.endpoints,
            sim_fleet_file=args.fleet,
            time_scale=args.time_scale,
            policy=args.policy or _default_stack_policy(),
            data_path=args.data_path,
            brain_port=args.brain_port,
        )
    )


def _passthrough(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")

    def run(argv: list[str]) -> int:
        import importlib

        main: Callable[[list[str]], int] = getattr(importlib.import_module(module), function or "main")
        return main(argv)

    return run


# Subcommands whose module parses its own arguments: name -> (module[:function], help).
PASSTHROUGH = {
    "sim": ("extproc.devstack.sim", "run the simulated vLLM fleet"),
    "provider-sim": (
        "extproc.devstack.provider_sim",
        "run the simulated hosted provider (TLS, API key, 429s)",
    ),
    "loadgen": ("extproc.devstack.loadgen", "replay an arrival trace against an OpenAI-compatible URL"),
    "complexity": ("extproc.complexity.cli", "score prompts (JSON lines on stdin), --eval or --explain"),
    "complexity-train": ("extproc.complexity.train", "fit both complexity heads and write the model"),
    "validate": ("extproc.policy.cmd:validate_main", "validate policy files"),
    "explain": ("extproc.policy.cmd:explain_main", "show how a policy routes a request"),
    "schema": ("extproc.policy.cmd:schema_main", "print the policy JSON Schema"),
    "render": ("extproc.cli:render_main", "print Istio/Kubernetes manifests (render istio|istio-wasm ...)"),
    "bench": ("extproc.bench.main", "run a benchmark (overhead, routing, pick, scale, classifier)"),
}


def render_main(argv: list[str]) -> int:
    """`render istio|istio-wasm [--policy FILE]`: the policy's provider pools become
    ServiceEntries, DestinationRules, routes and credential filters (extproc.deploy.istio_providers)."""
    from extproc.deploy import istio
    from extproc.policy.compile import PolicyError, load_policy

    policy = next((argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--policy"), None)
    policy = policy or next((w.split("=", 1)[1] for w in argv if w.startswith("--policy=")), None)
    providers = []
    if policy:
        try:
            providers = load_policy(policy).provider_upstreams()
        except PolicyError as error:
            print(error, file=sys.stderr)
            return 1
    if argv[:1] == ["istio-wasm"]:  # the Wasm data path (docs/wasm.md)
        from extproc.deploy.istio_wasm import parts

        settings, args = istio.parse_settings(argv)
        return istio.write_parts(parts(settings, providers), args.out)
    return istio.main(argv, providers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-extproc", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9002)
    source = serve.add_argument_group("fleet discovery (one of)")
    source.add_argument("--fleet", help="static fleet file (JSON/YAML with an 'endpoints' list)")
    source.add_argument("--collector-config", help="YAML with 'discovery' and 'scrape' sections")
    source.add_argument("--discovery", choices=["k8s", "dns"])
    source.add_argument("--k8s-namespace", default="default")
    source.add_argument("--k8s-service", action="append", default=[], help="model Service name (repeatable)")
    source.add_argument("--k8s-port-name", help="EndpointSlice port name of the model server")
    source.add_argument("--dns-name", help="name to resolve (A/AAAA/SRV)")
    source.add_argument("--dns-record", default="A", choices=["A", "AAAA", "SRV"])
    source.add_argument("--dns-port", type=int, default=8000)
    source.add_argument("--pool", default="default", help="pool name for discovered endpoints")
    source.add_argument("--model", action="append", help="model served by discovered endpoints (repeatable)")
    source.add_argument("--gpu-class", default="unknown")
    serve.add_argument("--policy", help="policy file or directory (watched and hot-reloaded)")
    serve.add_argument("--policy-reload-interval", type=float, default=1.0, help="seconds between checks")
    serve.add_argument("--metrics-port", type=int, default=9464, help="/metrics and /healthz; 0 disables")
    serve.add_argument("--metrics-host", default="127.0.0.1")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on one port (SO_REUSEPORT) sharing one scraped fleet view",
    )
    serve.add_argument(
        "--data-path",
        choices=["extproc", "wasm"],
        default="extproc",
        help="who decides per request: this server over ext_proc, or Envoy's Wasm filter with this "
        "server as its brain (HTTP on --brain-port)",
    )
    serve.add_argument(
        "--brain-port", type=int, default=9003, help="the Wasm filter's brain (--data-path wasm)"
    )
    serve.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    serve.add_argument("--endpoints-per-request", type=int, default=3)
    serve.add_argument(
        "--scrape-interval", type=float, default=0.1, help="seconds between an endpoint's /metrics scrapes"
    )
    serve.add_argument(
        "--health-interval",
        type=float,
        default=1.0,
        help="seconds between an endpoint's /health checks (a failed one stops its traffic)",
    )
    serve.add_argument(
        "--stale-after",
        type=float,
        default=1.0,
        help="seconds after which an endpoint's scraped metrics are stale (it becomes a fallback)",
    )
    serve.add_argument("--zone", default=os.environ.get("LLM_EXTPROC_ZONE", ""), help="this replica's zone")
    serve.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish in-flight streams on SIGTERM"
    )
    telemetry = serve.add_argument_group("observability")
    telemetry.add_argument(
        "--decision-log", default="", help="JSON lines decision log: '-' for stdout or a file (rotated)"
    )
    telemetry.add_argument(
        "--decision-log-sample-rate",
        type=float,
        default=0.01,
        help="share of requests logged (errors and sheds are always logged)",
    )
    telemetry.add_argument(
        "--decision-log-include-prompt", action="store_true", help="also log prompt text (off by default)"
    )
    telemetry.add_argument(
        "--no-observer",
        action="store_true",
        help="Envoy has no observability-mode filter: write decision lines without tokens at once",
    )
    telemetry.add_argument("--otlp-endpoint", default="", help="OTLP/gRPC endpoint for routing spans")
    telemetry.add_argument(
        "--inject-stream-usage",
        action="store_true",
        help="add stream_options.include_usage to streaming requests (clients see one extra chunk)",
    )
    capacity = serve.add_argument_group("capacity protection (docs/capacity.md)")
    capacity.add_argument("--cache", choices=["memory", "redis", "off"], default="memory")
    capacity.add_argument("--cache-max-bytes", type=int, default=256 * 1024 * 1024)
    capacity.add_argument("--limits", choices=["memory", "redis"], default="memory")
    capacity.add_argument("--redis-url", default="", help="e.g. redis://redis:6379/0")
    capacity.add_argument(
        "--limits-fail-closed", action="store_true", help="refuse requests when Redis is unreachable"
    )
    serve.set_defaults(func=_serve)

    up = sub.add_parser("up", help="run the local stack: Envoy + ext_proc + simulated fleet")
    up.add_argument("--port", type=int, default=10000, help="OpenAI endpoint port")
    up.add_argument("--admin-port", type=int, default=9901)
    up.add_argument("--extproc-port", type=int, default=9002)
    up.add_argument("--metrics-port", type=int, default=9464)
    up.add_argument("--endpoints", type=int, default=4, help="simulated endpoints")
    up.add_argument("--fleet", help="simulated fleet spec file (YAML/JSON)")
    up.add_argument("--time-scale", type=float, default=1.0)
    up.add_argument("--policy", help="policy file or directory")
    up.add_argument(
        "--data-path",
        choices=["extproc", "wasm"],
        default="wasm",
        help="decide in Envoy's Wasm filter with llm-extproc as its brain (the default: the faster"
        " path, in parity with ext_proc), or in llm-extproc over ext_proc (docs/wasm.md)",
    )
    up.add_argument("--brain-port", type=int, default=9003, help="the Wasm filter's brain (--data-path wasm)")
    up.set_defaults(func=_up)

    for name, (_module, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Pass-through subcommands own their flags: hand them everything after the name.
    for i, word in enumerate(argv):
        if word in PASSTHROUGH:
            return _passthrough(PASSTHROUGH[word][0])(argv[i + 1 :])
        if not word.startswith("-"):
            break
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
