"""`llm-extproc render istio`: Kubernetes and Istio manifests with your names filled in.

The Envoy pieces (header hygiene, the ext_proc filter, the observer, the override_host LB
policy and the retry budget) are taken from extproc/deploy/envoy/local.yaml, so the mesh runs exactly the
filter chain the local stack and the tests run. The manifests in istio/ are this command's
output for the defaults (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc.deploy import LOCAL_STACK_POLICY
from extproc.deploy.envoy_config import EnvoyPorts, connection_manager, render
from extproc.deploy.istio_providers import provider_objects, provider_routes
from extproc.providers.upstream import ProviderUpstream

POLICY_FILE = LOCAL_STACK_POLICY
# Client-sent headers that would steer Envoy itself. In the mesh the caller is the local app,
# which Envoy may treat as internal (and then honour x-envoy-*), so the mesh filter strips them.
ENVOY_CONTROL_HEADERS = (
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-hedge-on-per-try-timeout",
)


@dataclass(slots=True)
class IstioSettings:
    namespace: str = "llm-extproc"
    model_namespace: str = "models"
    service: str = "vllm"  # the model server's Kubernetes Service
    port: int = 8000
    port_name: str = "http"
    image: str = "ghcr.io/llm-extproc/llm-extproc:0.1.0"
    replicas: int = 2
    grpc_port: int = 9002
    metrics_port: int = 9464
    client_labels: dict[str, str] = field(default_factory=lambda: {"llm-extproc/route": "enabled"})
    gateway_labels: dict[str, str] = field(default_factory=lambda: {"istio": "ingressgateway"})
    model: str = "llama-3-8b"
    # EnvoyFilters in Istio's root namespace apply to matching workloads in every namespace
    # (the callers of the model service, and the ingress gateway).
    filter_namespace: str = "istio-system"

    @property
    def model_host(self) -> str:
        return f"{self.service}.{self.model_namespace}.svc.cluster.local"

    @property
    def extproc_host(self) -> str:
        return f"llm-extproc.{self.namespace}.svc.cluster.local"

    @property
    def model_cluster(self) -> str:
        return f"outbound|{self.port}||{self.model_host}"

    @property
    def extproc_cluster(self) -> str:
        # Istio's own cluster for our Service: HTTP/2 from appProtocol grpc, mTLS in the mesh.
        return f"outbound|{self.grpc_port}||{self.extproc_host}"


def _local_envoy() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(render(["10.0.0.1:8000"], EnvoyPorts()))
    return config


# The VirtualService route for audio uploads, by name: the EnvoyFilter gives it the local
# stack's per-route ext_proc override (BUFFERED_PARTIAL: routed on the form's head, the file
# streams on). A gateway's own VirtualService gets it by naming its audio route the same.
AUDIO_ROUTE = "audio"
AUDIO_PREFIX = "/v1/audio/"


def audio_route_override() -> dict[str, Any]:
    """The local stack's typed_per_filter_config of its audio route."""
    routes = connection_manager(_local_envoy())["route_config"]["virtual_hosts"][0]["routes"]
    audio = next(r for r in routes if r["match"].get("prefix") == AUDIO_PREFIX)
    override: dict[str, Any] = copy.deepcopy(audio["typed_per_filter_config"])
    return override


def envoy_http_filters(s: IstioSettings) -> list[dict[str, Any]]:
    """The local stack's HTTP filters before the router, pointed at Istio's ext_proc cluster."""
    filters = [
        f
        for f in connection_manager(_local_envoy())["http_filters"]
        if f["name"] != "envoy.filters.http.router"
    ]
    filters = copy.deepcopy(filters)
    for item in filters:
        typed = item["typed_config"]
        if "grpc_service" in typed:
            typed["grpc_service"]["envoy_grpc"]["cluster_name"] = s.extproc_cluster
        if item["name"] == "strip-client-routing-headers":
            mutations = typed["mutations"]["request_mutations"]
            mutations += [{"remove": name} for name in ENVOY_CONTROL_HEADERS]
    return filters


def envoy_cluster_patch() -> dict[str, Any]:
    """override_host (endpoint list from envoy.lb metadata only) and the retry budget."""
    fleet = next(c for c in _local_envoy()["static_resources"]["clusters"] if c["name"] == "fleet")
    return {
        "load_balancing_policy": fleet["load_balancing_policy"],
        "circuit_breakers": fleet["circuit_breakers"],
    }


def envoy_filter(s: IstioSettings, context: str) -> dict[str, Any]:
    sidecar = context == "SIDECAR_OUTBOUND"
    listener: dict[str, Any] = {
        "filterChain": {
            "filter": {
                "name": "envoy.filters.network.http_connection_manager",
                "subFilter": {"name": "envoy.filters.http.router"},
            }
        }
    }
    if sidecar:
        listener["portNumber"] = s.port
    patches: list[dict[str, Any]] = [
        {
            "applyTo": "HTTP_FILTER",
            "match": {"context": context, "listener": listener},
            "patch": {"operation": "INSERT_BEFORE", "value": item},
        }
        for item in envoy_http_filters(s)
    ]
    route_match: dict[str, Any] = {"vhost": {"route": {"name": AUDIO_ROUTE}}}
    if sidecar:
        route_match["portNumber"] = s.port
    patches.append(
        {
            "applyTo": "HTTP_ROUTE",
            "match": {"context": context, "routeConfiguration": route_match},
            "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": audio_route_override()}},
        }
    )
    patches.append(
        {
            "applyTo": "CLUSTER",
            "match": {"context": context, "cluster": {"service": s.model_host, "portNumber": s.port}},
            "patch": {"operation": "MERGE", "value": envoy_cluster_patch()},
        }
    )
    name = "llm-extproc-sidecar" if sidecar else "llm-extproc-gateway"
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": s.filter_namespace},
        "spec": {
            "workloadSelector": {"labels": dict(s.client_labels if sidecar else s.gateway_labels)},
            "configPatches": patches,
        },
    }


def extproc_objects(s: IstioSettings) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "llm-extproc"}
    ns = s.namespace
    args = [
        "serve",
        "--host=0.0.0.0",
        f"--port={s.grpc_port}",
        "--metrics-host=0.0.0.0",
        f"--metrics-port={s.metrics_port}",
        "--discovery=k8s",
        f"--k8s-namespace={s.model_namespace}",
        f"--k8s-service={s.service}",
        f"--k8s-port-name={s.port_name}",
        f"--model={s.model}",
        "--policy=/etc/llm-extproc/policies",
        "--grace=60",
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio-injection": "enabled"}},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "llm-extproc", "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "llm-extproc-endpointslices", "namespace": s.model_namespace},
            # Least privilege: read EndpointSlices in the model namespace, nothing else.
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "llm-extproc-endpointslices", "namespace": s.model_namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "llm-extproc-endpointslices",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "llm-extproc", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "llm-extproc-policies", "namespace": ns},
            # Mounted as a directory: kubelet swaps the files on change and the server hot-reloads.
            "data": {"policy.yaml": POLICY_FILE.read_text()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "llm-extproc", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": s.replicas,
                "selector": {"matchLabels": labels},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(s.metrics_port),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        "serviceAccountName": "llm-extproc",
                        # Longer than --grace so in-flight streams finish after SIGTERM.
                        "terminationGracePeriodSeconds": 75,
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "weight": 100,
                                        "podAffinityTerm": {
                                            "labelSelector": {"matchLabels": labels},
                                            "topologyKey": "kubernetes.io/hostname",
                                        },
                                    }
                                ]
                            }
                        },
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "llm-extproc",
                                "image": s.image,
                                "args": args,
                                "ports": [
                                    {"name": "grpc", "containerPort": s.grpc_port},
                                    {"name": "metrics", "containerPort": s.metrics_port},
                                ],
                                # SERVING only after the first successful fleet sync.
                                "readinessProbe": {
                                    "grpc": {"port": s.grpc_port},
                                    "periodSeconds": 2,
                                    "failureThreshold": 2,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", "port": "metrics"},
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                },
                                "resources": {
                                    "requests": {"cpu": "1", "memory": "512Mi"},
                                    "limits": {"memory": "1Gi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {
                                        "name": "policies",
                                        "mountPath": "/etc/llm-extproc/policies",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "policies", "configMap": {"name": "llm-extproc-policies"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "llm-extproc", "namespace": ns, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "grpc", "port": s.grpc_port, "targetPort": "grpc", "appProtocol": "grpc"},
                    {"name": "http-metrics", "port": s.metrics_port, "targetPort": "metrics"},
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "llm-extproc", "namespace": ns},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "llm-extproc", "namespace": ns},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-extproc"},
                "minReplicas": s.replicas,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 60},
                        },
                    }
                ],
            },
        },
    ]


def traffic_objects(s: IstioSettings) -> list[dict[str, Any]]:
    """The reference design's VirtualService and DestinationRule for the model Service."""
    host = s.model_host
    ns = s.model_namespace
    destination = {"host": host, "port": {"number": s.port}}
    return [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": s.service, "namespace": ns},
            "spec": {
                "host": host,
                "trafficPolicy": {
                    "connectionPool": {
                        # Long generations: many concurrent streams per connection, no idle cut-off mid-stream.
                        "tcp": {"maxConnections": 10000, "connectTimeout": "2s"},
                        "http": {
                            "http2MaxRequests": 10000,
                            "maxRequestsPerConnection": 0,
                            "idleTimeout": "600s",
                            "maxRetries": 1000,
                        },
                    },
                    "outlierDetection": {
                        "consecutive5xxErrors": 5,
                        "consecutiveGatewayErrors": 3,
                        "interval": "10s",
                        "baseEjectionTime": "30s",
                        "maxEjectionPercent": 50,
                    },
                },
                "subsets": [
                    {"name": "stable", "labels": {"version": "stable"}},
                    {"name": "canary", "labels": {"version": "canary"}},
                ],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": s.service, "namespace": ns},
            "spec": {
                "hosts": [host],
                "http": [
                    {
                        # Audio uploads: the EnvoyFilter's route patch (matched by this name) has
                        # ext_proc read only the head of the multipart body; the file streams on.
                        "name": AUDIO_ROUTE,
                        "match": [{"uri": {"prefix": AUDIO_PREFIX}}],
                        "route": [
                            {"destination": {**destination, "subset": "stable"}, "weight": 90},
                            {"destination": {**destination, "subset": "canary"}, "weight": 10},
                        ],
                        "timeout": "300s",
                        "retries": {"attempts": 1, "retryOn": "connect-failure,refused-stream"},
                    },
                    {
                        # ext_proc sets x-llm-stream (client-sent x-llm-* are stripped first) and
                        # clears the route cache, so this match sees the body's "stream" flag.
                        "name": "streaming",
                        "match": [{"headers": {"x-llm-stream": {"exact": "true"}}}],
                        "route": [
                            {"destination": {**destination, "subset": "stable"}, "weight": 90},
                            {"destination": {**destination, "subset": "canary"}, "weight": 10},
                        ],
                        "timeout": "300s",
                        "retries": {"attempts": 0},
                    },
                    {
                        "name": "default",
                        "route": [
                            {"destination": {**destination, "subset": "stable"}, "weight": 90},
                            {"destination": {**destination, "subset": "canary"}, "weight": 10},
                        ],
                        "timeout": "120s",
                        "retries": {
                            "attempts": 2,
                            "perTryTimeout": "60s",
                            "retryOn": "gateway-error,connect-failure,retriable-4xx",
                        },
                        "mirror": {"host": host, "subset": "canary", "port": {"number": s.port}},
                        "mirrorPercentage": {"value": 10.0},
                    },
                ],
            },
        },
    ]


def model_server_objects(s: IstioSettings) -> list[dict[str, Any]]:
    """A vLLM Deployment the router can pick from (discovered through its Service)."""
    ns = s.model_namespace
    labels = {"app": s.service, "version": "stable"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio-injection": "enabled"}},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{s.service}-stable", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 120,
                        "containers": [
                            {
                                "name": "vllm",
                                "image": "vllm/vllm-openai:v0.11.0",
                                "args": [
                                    "--model",
                                    "meta-llama/Meta-Llama-3-8B-Instruct",
                                    "--served-model-name",
                                    s.model,
                                    "--port",
                                    str(s.port),
                                ],
                                "ports": [{"name": s.port_name, "containerPort": s.port}],
                                # Loading weights takes minutes: no traffic (and no restarts) until /health answers.
                                "startupProbe": {
                                    "httpGet": {"path": "/health", "port": s.port},
                                    "periodSeconds": 10,
                                    "failureThreshold": 60,
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/health", "port": s.port},
                                    "periodSeconds": 5,
                                },
                                "resources": {
                                    "limits": {"nvidia.com/gpu": 1},
                                    "requests": {"cpu": "4", "memory": "32Gi"},
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.service, "namespace": ns},
            "spec": {
                "selector": {"app": s.service},
                "ports": [{"name": s.port_name, "port": s.port, "targetPort": s.port, "appProtocol": "http"}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": s.service, "namespace": ns},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": s.service}}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"{s.service}-stable", "namespace": ns},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": f"{s.service}-stable",
                },
                "minReplicas": 2,
                "maxReplicas": 16,
                # Served by the Prometheus adapter from llm-extproc's pool gauge.
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {
                                "name": "inference_pool_queue_length",
                                "selector": {"matchLabels": {"pool": "default"}},
                            },
                            "target": {"type": "AverageValue", "averageValue": "4"},
                        },
                    }
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
            },
        },
    ]


def manifests(
    s: IstioSettings, providers: Sequence[ProviderUpstream] = ()
) -> dict[str, list[dict[str, Any]]]:
    parts = {
        "extproc.yaml": extproc_objects(s),
        "envoyfilter.yaml": [envoy_filter(s, "SIDECAR_OUTBOUND"), envoy_filter(s, "GATEWAY")],
        "traffic.yaml": traffic_objects(s),
        "model-server.yaml": model_server_objects(s),
    }
    if providers:
        service = next(o for o in parts["traffic.yaml"] if o["kind"] == "VirtualService")
        service["spec"]["http"][:0] = provider_routes(providers)
        contexts = [("SIDECAR_OUTBOUND", s.client_labels), ("GATEWAY", s.gateway_labels)]
        parts["providers.yaml"] = provider_objects(providers, s.namespace, s.filter_namespace, contexts)
    return parts


HEADER = "# Generated by `llm-extproc render istio`; edit the command's flags, not this file.\n"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(objects: list[dict[str, Any]]) -> str:
    return HEADER + yaml.dump_all(objects, Dumper=_NoAliases, sort_keys=False, width=120)


def _labels(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"labels look like key=value,key=value, not {text!r}")
    return {k: v for k, v in pairs}


def parse_settings(argv: list[str] | None = None) -> tuple[IstioSettings, argparse.Namespace]:
    """`render TARGET [flags]`: the settings, and the parsed arguments (target, --out, --policy)."""
    parser = argparse.ArgumentParser(prog="llm-extproc render", description=__doc__.splitlines()[0])
    # istio-wasm: the Wasm data path's brain, WasmPlugin and EnvoyFilter (extproc.deploy.istio_wasm).
    parser.add_argument("target", choices=["istio", "istio-wasm"])
    d = IstioSettings()
    parser.add_argument("--namespace", default=d.namespace, help="where llm-extproc runs")
    parser.add_argument("--model-namespace", default=d.model_namespace)
    parser.add_argument("--service", default=d.service, help="the model server's Service")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--port-name", default=d.port_name)
    parser.add_argument("--model", default=d.model, help="model name the servers serve")
    parser.add_argument("--image", default=d.image)
    parser.add_argument("--replicas", type=int, default=d.replicas)
    parser.add_argument(
        "--client-labels", type=_labels, default=d.client_labels, help="callers' pod labels (sidecar filter)"
    )
    parser.add_argument("--gateway-labels", type=_labels, default=d.gateway_labels)
    parser.add_argument(
        "--filter-namespace", default=d.filter_namespace, help="Istio root or gateway namespace"
    )
    parser.add_argument("--out", help="write one file per part into this directory instead of stdout")
    parser.add_argument("--policy", help="add the policy's provider pools (providers.yaml)")
    args = parser.parse_args(argv)
    settings = IstioSettings(
        namespace=args.namespace,
        model_namespace=args.model_namespace,
        service=args.service,
        port=args.port,
        port_name=args.port_name,
        model=args.model,
        image=args.image,
        replicas=args.replicas,
        client_labels=args.client_labels,
        gateway_labels=args.gateway_labels,
        filter_namespace=args.filter_namespace,
    )
    return settings, args


def write_parts(parts: dict[str, list[dict[str, Any]]], out_dir: str | None) -> int:
    """One file per part into ``out_dir``, or everything to stdout."""
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, objects in parts.items():
            (out / name).write_text(dump(objects))
        return 0
    sys.stdout.write(dump([obj for objects in parts.values() for obj in objects]))
    return 0


def main(argv: list[str] | None = None, providers: Sequence[ProviderUpstream] = ()) -> int:
    """``providers``: the policy's provider pools (`render istio --policy FILE`, extproc.cli)."""
    settings, args = parse_settings(argv)
    return write_parts(manifests(settings, providers), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
