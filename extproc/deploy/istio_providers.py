"""Hosted providers under Istio (`llm-extproc render istio --policy FILE`): per provider pool

- a ServiceEntry (MESH_EXTERNAL, DNS) whose port takes plain HTTP from the proxy, and a
  DestinationRule originating TLS on it (SNI, the system CA bundle or the pool's ca_file), with
  the pool's connection limits, HTTP/2 upgrade where the provider speaks it, and outlier ejection;
- a route in the model Service's VirtualService matching ``x-llm-provider: NAME`` (set only by
  llm-extproc) that removes the client's credential headers and rewrites the authority;
- an EnvoyFilter that adds Envoy's credential injector as an upstream filter of Istio's outbound
  cluster for the provider, reading the key through SDS from a file (a ConfigMap holds the SDS
  files; the Secret with the key is mounted into the proxy, see docs/providers.md).

What the local stack's Envoy adds and this does not: the fallback hop (an internal listener)
that turns a provider's 429/5xx into a self-hosted answer within the same request. Under Istio a
provider that fails is left out of decisions for its retry-after (llm-extproc's cool-down), so
the requests after it go to the fallback; the failing request itself is answered with the error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from extproc.deploy.envoy_providers import SYSTEM_CA_BUNDLE, credential_injector, sds_resource, typed
from extproc.headers import PROVIDER_HEADER, TENANT_HEADER
from extproc.providers.upstream import CREDENTIAL_HEADERS, ProviderUpstream

SDS_CONFIGMAP = "llm-provider-sds"
SDS_MOUNT = "/etc/llm-extproc/sds"


def outbound_cluster(upstream: ProviderUpstream) -> str:
    return f"outbound|{upstream.port}||{upstream.host}"


def provider_routes(upstreams: Sequence[ProviderUpstream]) -> list[dict[str, Any]]:
    """VirtualService http routes, to go before the model Service's own."""
    return [
        {
            "name": f"provider-{u.name}",
            "match": [{"headers": {PROVIDER_HEADER: {"exact": u.name}}}],
            "route": [{"destination": {"host": u.host, "port": {"number": u.port}}}],
            "headers": {"request": {"remove": [*CREDENTIAL_HEADERS, TENANT_HEADER]}},
            "rewrite": {"authority": u.host},
            "timeout": f"{u.timeout_s:g}s",
            "retries": {"attempts": 0},
        }
        for u in upstreams
    ]


def credential_filter(upstream: ProviderUpstream) -> dict[str, Any]:
    """The upstream HTTP filters merged into Istio's outbound cluster for the provider."""
    injector = credential_injector(
        upstream,
        {
            "name": upstream.secret_name,
            "sds_config": {
                "path_config_source": {
                    "path": f"{SDS_MOUNT}/sds-{upstream.name}.yaml",
                    "watched_directory": {"path": SDS_MOUNT},
                }
            },
        },
    )
    codec = {
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": typed("envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"),
    }
    protocol: dict[str, Any] = (
        {"http2_protocol_options": {}} if upstream.http2 else {"http_protocol_options": {}}
    )
    return {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config=protocol,
                http_filters=[injector, codec],
            )
        }
    }


def provider_objects(
    upstreams: Sequence[ProviderUpstream],
    namespace: str,
    filter_namespace: str,
    contexts: Sequence[tuple[str, dict[str, str]]],
) -> list[dict[str, Any]]:
    """``contexts``: (EnvoyFilter context, workload labels) of the proxies that call providers."""
    objects: list[dict[str, Any]] = []
    for u in upstreams:
        objects.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": f"llm-provider-{u.name}", "namespace": namespace},
                "spec": {
                    "hosts": [u.host],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    # The proxy speaks plain HTTP to this port and originates TLS itself.
                    "ports": [
                        {
                            "number": u.port,
                            "name": "http-tls-origination",
                            "protocol": "HTTP",
                            "targetPort": u.port,
                        }
                    ],
                },
            }
        )
        tls: dict[str, Any] = {
            "mode": "SIMPLE",
            "sni": u.host,
            "caCertificates": u.ca_file or SYSTEM_CA_BUNDLE,
        }
        objects.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": f"llm-provider-{u.name}", "namespace": namespace},
                "spec": {
                    "host": u.host,
                    "trafficPolicy": {
                        "connectionPool": {
                            "tcp": {
                                "maxConnections": u.max_connections,
                                "connectTimeout": f"{u.connect_timeout_s:g}s",
                            },
                            "http": {
                                "http1MaxPendingRequests": u.max_pending_requests,
                                "http2MaxRequests": u.max_requests,
                                "maxRetries": u.max_requests,
                                "h2UpgradePolicy": "UPGRADE" if u.http2 else "DO_NOT_UPGRADE",
                            },
                        },
                        "outlierDetection": {
                            "consecutive5xxErrors": 5,
                            "interval": "10s",
                            "baseEjectionTime": "10s",
                            "maxEjectionPercent": 100,
                        },
                        "portLevelSettings": [{"port": {"number": u.port}, "tls": tls}],
                    },
                },
            }
        )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": SDS_CONFIGMAP, "namespace": filter_namespace},
            "data": {
                f"sds-{u.name}.yaml": _yaml(sds_resource(u) if u.key_file else _env_sds(u)) for u in upstreams
            },
        }
    )
    for context, labels in contexts:
        objects.append(
            {
                "apiVersion": "networking.istio.io/v1alpha3",
                "kind": "EnvoyFilter",
                "metadata": {
                    "name": f"llm-provider-keys-{context.lower().replace('_', '-')}",
                    "namespace": filter_namespace,
                },
                "spec": {
                    "workloadSelector": {"labels": dict(labels)},
                    "configPatches": [
                        {
                            "applyTo": "CLUSTER",
                            "match": {
                                "context": context,
                                "cluster": {"service": u.host, "portNumber": u.port},
                            },
                            "patch": {"operation": "MERGE", "value": credential_filter(u)},
                        }
                        for u in upstreams
                    ],
                },
            }
        )
    return objects


def _env_sds(upstream: ProviderUpstream) -> dict[str, Any]:
    resource = sds_resource(upstream)
    resource["resources"][0]["generic_secret"] = {"secret": {"environment_variable": upstream.key_env}}
    return resource


def _yaml(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1)  # JSON is YAML; Envoy reads either
