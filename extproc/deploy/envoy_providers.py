"""Hosted providers in the Envoy config: one route, one cluster and one key per provider, and the
fallback hop that sends a failed provider attempt back to the self-hosted fleet.

Per provider ``NAME`` (docs/providers.md):

- a route matching ``x-llm-provider: NAME`` (set only by llm-extproc: client-sent ``x-llm-*``
  headers are stripped before any filter) that removes the client's ``authorization`` and
  ``api-key`` headers, rewrites the host, and retries once on connect failure, reset, 429 or 5xx;
- an aggregate cluster ``provider-NAME`` of two: ``provider-NAME-direct``, the provider itself
  (TLS with SNI, the system CA bundle or a configured CA, HTTP/2 where the provider speaks it,
  its own timeouts, circuit breakers and outlier ejection), and ``provider-fallback``, the
  internal listener below. The retry's ``previous_priorities`` moves it to the second: the
  fallback hop;
- the key is added by Envoy's credential injector, configured as an *upstream* filter of that
  provider's cluster only (Envoy runs the aggregate's upstream chain on every attempt). Why not header mutation on the route: header mutation would need the key inline
  in the config (or in ext_proc), and a route-level filter sees every cluster's traffic. The
  injector reads the key through SDS from a file (re-read when a mounted Kubernetes Secret
  changes) or from an environment variable, so neither llm-extproc nor the rendered config ever
  holds it, and it is attached only to connections of that provider's cluster;
- an upstream observer (ext_proc in observability mode) on the cluster reports every attempt's
  status and ``retry-after`` to llm-extproc, which keeps the provider out of decisions until then.

The fallback hop (``provider-fallback``, an Envoy internal listener, unreachable from outside)
first drops any credential header (the provider key the cluster added travels with the retry),
then asks llm-extproc again: it recognises the hop by ``x-llm-provider``, routes the request the
client made (model and path from ``x-llm-requested-model`` / ``x-llm-original-path``) to the
self-hosted fleet and rewrites body and path back. Streams are never retried after the first
byte: Envoy retries only before it has forwarded response headers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extproc.headers import (
    FALLBACK_MODEL_HEADER,
    FALLBACK_OF_HEADER,
    MODEL_HEADER,
    PROVIDER_ATTEMPT_HEADER,
    PROVIDER_HEADER,
    TENANT_HEADER,
)
from extproc.providers.upstream import CREDENTIAL_HEADERS, ProviderUpstream

FALLBACK_LISTENER = "provider-fallback"
FALLBACK_CLUSTER = "provider-fallback"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RETRIABLE_STATUSES = [429, 500, 502, 503, 504]


def typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def credential_injector(upstream: ProviderUpstream, credential: dict[str, Any]) -> dict[str, Any]:
    """Envoy's credential_injector for one provider's cluster: ``credential`` is where the key
    comes from (a file or env var locally, SDS in Istio); the injector adds it on the way out."""
    return {
        "name": "envoy.filters.http.credential_injector",
        "typed_config": typed(
            "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            overwrite=True,
            allow_request_without_credential=False,
            credential={
                "name": "envoy.http.injected_credentials.generic",
                "typed_config": typed(
                    "envoy.extensions.http.injected_credentials.generic.v3.Generic",
                    credential=credential,
                    header=upstream.credential_header,
                    **(
                        {"header_value_prefix": upstream.credential_prefix}
                        if upstream.credential_prefix
                        else {}
                    ),
                ),
            },
        ),
    }


def _header_mutation(name: str, mutations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": typed(
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": mutations},
        ),
    }


def sds_resource(upstream: ProviderUpstream) -> dict[str, Any]:
    """The SDS file for a key read from a file: Envoy watches the file and re-reads it."""
    return {
        "resources": [
            typed(
                "envoy.extensions.transport_sockets.tls.v3.Secret",
                name=upstream.secret_name,
                generic_secret={"secret": {"filename": upstream.key_file}},
            )
        ]
    }


def _credential_source(upstream: ProviderUpstream, sds_dir: Path | None) -> dict[str, Any]:
    if upstream.key_env:
        return {"name": upstream.secret_name}  # a static secret (bootstrap), from the environment
    if sds_dir is None:
        raise ValueError(f"provider {upstream.name!r} reads its key from a file: give sds_dir")
    return {
        "name": upstream.secret_name,
        "sds_config": {
            "path_config_source": {
                "path": str(sds_dir / f"sds-{upstream.name}.yaml"),
                # A Kubernetes Secret update swaps a symlink in the key's directory.
                "watched_directory": {"path": str(Path(upstream.key_file).parent)},
            }
        },
    }


def _thresholds(upstream: ProviderUpstream) -> dict[str, Any]:
    return {
        "priority": "DEFAULT",
        "max_connections": upstream.max_connections,
        "max_pending_requests": upstream.max_pending_requests,
        "max_requests": upstream.max_requests,
        "max_retries": upstream.max_requests,  # every request may need its fallback hop
    }


def _upstream_filters(
    upstream: ProviderUpstream, extproc_cluster: str, sds_dir: Path | None
) -> list[dict[str, Any]]:
    """The aggregate cluster's upstream filters: Envoy runs the route cluster's chain (the
    aggregate's, not the chosen sub-cluster's) on every attempt, the fallback hop's included."""
    observer = {
        "name": "provider-attempt-observer",
        "typed_config": typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": extproc_cluster}, "timeout": "1s"},
            failure_mode_allow=True,
            observability_mode=True,
            deferred_close_timeout="1s",
            processing_mode={
                "request_header_mode": "SEND",
                "request_body_mode": "NONE",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        ),
    }
    injector = credential_injector(upstream, _credential_source(upstream, sds_dir))
    return [
        _header_mutation(
            "mark-provider-attempt", [{"append": {"header": {"key": PROVIDER_ATTEMPT_HEADER, "value": "1"}}}]
        ),
        observer,
        _header_mutation("unmark-provider-attempt", [{"remove": PROVIDER_ATTEMPT_HEADER}]),
        injector,
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": typed("envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"),
        },
    ]


def _cluster(upstream: ProviderUpstream, address: str | None) -> dict[str, Any]:
    host, port = upstream.host, upstream.port
    socket_host, socket_port = host, port
    if address:  # tests and the local stack: the provider double on loopback, same name and SNI
        socket_host, _, port_text = address.rpartition(":")
        socket_port = int(port_text)
    protocol: dict[str, Any] = (
        {"http2_protocol_options": {}} if upstream.http2 else {"http_protocol_options": {}}
    )
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            sni=host,
            common_tls_context={
                "validation_context": {
                    "trusted_ca": {"filename": upstream.ca_file or SYSTEM_CA_BUNDLE},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
                }
            },
        ),
    }
    return {
        "name": upstream.direct_cluster,
        "connect_timeout": f"{upstream.connect_timeout_s}s",
        # A hosted API's name resolves to changing addresses: re-resolved (DNS refresh rate).
        "type": "STATIC" if address else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "circuit_breakers": {"thresholds": [_thresholds(upstream)]},
        # Consecutive provider failures also eject it: with no healthy host here the aggregate
        # sends every request straight to the fallback hop.
        "outlier_detection": {"consecutive_5xx": 5, "base_ejection_time": "10s", "max_ejection_percent": 100},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", explicit_http_config=protocol
            )
        },
        "transport_socket": tls,
        "load_assignment": {
            "cluster_name": upstream.direct_cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": socket_host, "port_value": socket_port}
                                },
                                "hostname": host,
                            }
                        }
                    ]
                }
            ],
        },
    }


def _with_fallback(upstream: ProviderUpstream, extproc_cluster: str, sds_dir: Path | None) -> dict[str, Any]:
    """The route's cluster: the provider first, the fallback hop second. A retry with
    ``previous_priorities`` moves to the next cluster of an aggregate."""
    return {
        "name": upstream.cluster,
        "connect_timeout": f"{upstream.connect_timeout_s}s",
        "lb_policy": "CLUSTER_PROVIDED",
        # Retries are counted here, on the route's cluster: Envoy's default of 3 concurrent
        # retries would let a provider's 429 through to clients while a burst falls back.
        "circuit_breakers": {"thresholds": [_thresholds(upstream)]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http_protocol_options": {}},
                http_filters=_upstream_filters(upstream, extproc_cluster, sds_dir),
            )
        },
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": typed(
                "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                clusters=[upstream.direct_cluster, FALLBACK_CLUSTER],
            ),
        },
    }


def _fallback_cluster() -> dict[str, Any]:
    return {
        "name": FALLBACK_CLUSTER,
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": FALLBACK_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": FALLBACK_LISTENER}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _route(upstream: ProviderUpstream) -> dict[str, Any]:
    return {
        "match": {
            "prefix": "/",
            "headers": [{"name": PROVIDER_HEADER, "string_match": {"exact": upstream.name}}],
        },
        # The client's credential never reaches a provider; the tenant's name neither.
        "request_headers_to_remove": [*CREDENTIAL_HEADERS, TENANT_HEADER],
        "route": {
            "cluster": upstream.cluster,
            "host_rewrite_literal": upstream.host,
            "timeout": f"{upstream.timeout_s}s",
            "retry_policy": {
                "retry_on": "connect-failure,reset,retriable-status-codes",
                "retriable_status_codes": RETRIABLE_STATUSES,
                "num_retries": 1,
                "retry_priority": {
                    "name": "envoy.retry_priorities.previous_priorities",
                    "typed_config": typed(
                        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                        update_frequency=1,
                    ),
                },
            },
        },
    }


def _fallback_listener(
    main: dict[str, Any], fleet_route: dict[str, Any], routing: dict[str, Any] | None
) -> dict[str, Any]:
    hcm = copy.deepcopy(main["filter_chains"][0]["filters"][0])
    config = hcm["typed_config"]
    config["stat_prefix"] = "provider_fallback"
    if routing is None:
        routing = next(f for f in config["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    router = next(f for f in config["http_filters"] if f["name"] == "envoy.filters.http.router")
    config["http_filters"] = [
        # The provider key rode along with the retry: it goes no further.
        _header_mutation("strip-provider-credentials", [{"remove": h} for h in CREDENTIAL_HEADERS]),
        routing,
        router,
    ]
    route = copy.deepcopy(fleet_route)
    route.setdefault("response_headers_to_add", []).extend(
        {
            "header": {"key": name, "value": f"%REQ({source})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
        for name, source in ((FALLBACK_OF_HEADER, FALLBACK_OF_HEADER), (FALLBACK_MODEL_HEADER, MODEL_HEADER))
    )
    config["route_config"] = {
        "name": FALLBACK_LISTENER,
        "virtual_hosts": [{"name": FALLBACK_LISTENER, "domains": ["*"], "routes": [route]}],
    }
    return {"name": FALLBACK_LISTENER, "internal_listener": {}, "filter_chains": [{"filters": [hcm]}]}


def add_providers(
    config: dict[str, Any],
    upstreams: Sequence[ProviderUpstream],
    *,
    sds_dir: Path | None = None,
    addresses: Mapping[str, str] | None = None,
    extproc_cluster: str = "extproc",
    fallback_routing: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Add the providers to a parsed Envoy config (extproc/deploy/envoy/local.yaml rendered).

    ``addresses``: provider name -> "ip:port" to connect to instead of resolving its host (the
    local stack's double). ``fallback_routing``: the HTTP filter that decides the fallback hop
    (default: the main listener's ext_proc filter). Returns the SDS files to write into
    ``sds_dir`` (name -> YAML text).
    """
    if not upstreams:
        return {}
    main = config["static_resources"]["listeners"][0]
    hcm = main["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    fleet_route = routes[-1]
    routes[:0] = [_route(u) for u in upstreams]
    config["static_resources"]["listeners"].append(_fallback_listener(main, fleet_route, fallback_routing))
    clusters = config["static_resources"]["clusters"]
    for upstream in upstreams:
        clusters.append(_with_fallback(upstream, extproc_cluster, sds_dir))
        clusters.append(_cluster(upstream, (addresses or {}).get(upstream.name)))
    clusters.append(_fallback_cluster())
    secrets = [
        {"name": u.secret_name, "generic_secret": {"secret": {"environment_variable": u.key_env}}}
        for u in upstreams
        if u.key_env
    ]
    if secrets:
        config["static_resources"].setdefault("secrets", []).extend(secrets)
    config.setdefault("bootstrap_extensions", []).append(
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": typed("envoy.extensions.bootstrap.internal_listener.v3.InternalListener"),
        }
    )
    # SDS from files needs a node identity.
    config.setdefault("node", {"id": "llm-extproc", "cluster": "llm-extproc"})
    return {f"sds-{u.name}.yaml": json.dumps(sds_resource(u), indent=1) for u in upstreams if u.key_file}
