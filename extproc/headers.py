"""Every header and metadata name llm-extproc reads or writes, in one place.

The names Envoy's filters and the Gateway API Inference Extension depend on are part of the
protocol: changing one here changes what the Envoy configs and Istio manifests must say.
"""

from __future__ import annotations

# -- the decision, handed to Envoy (Gateway API Inference Extension protocol) ----------------
# Ordered endpoint list "host:port,host:port": primary first, then the fallbacks Envoy's
# retries walk. Sent as a request header (for logs and the simulator's echo) and as dynamic
# metadata, which is the only source override_host reads.
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_METADATA_NAMESPACE = "envoy.lb"
# Set by Envoy on the response: the endpoint that actually served it.
SERVED_HEADER = "x-gateway-destination-endpoint-served"

# -- what we tell upstreams and clients about the decision ----------------------------------
MODEL_HEADER = "x-llm-model"
COMPLEXITY_HEADER = "x-llm-complexity"
STRONG_GAIN_HEADER = "x-llm-strong-gain"
STREAM_HEADER = "x-llm-stream"
TIER_HEADER = "x-llm-tier"
PRIORITY_HEADER = "x-llm-priority"
RULE_HEADER = "x-llm-rule"
MIRROR_CLUSTER_HEADER = "x-llm-mirror-cluster"
CACHE_HEADER = "x-llm-cache"
# Who pays: the pool that served and the tenant, read back by the observer for the cost metric.
POOL_HEADER = "x-llm-pool"
TENANT_HEADER = "x-llm-tenant"

# -- hosted providers (docs/providers.md) ------------------------------------------------------
# Names the provider pool: Envoy's route for that provider matches on it (and sends the request
# to its cluster, which injects the key). Also how the fallback hop knows a provider attempt failed.
PROVIDER_HEADER = "x-llm-provider"
# What the client asked for, kept for the fallback hop: the body and path it receives are the
# provider's (its model name, maybe Azure's deployment path).
REQUESTED_MODEL_HEADER = "x-llm-requested-model"
ORIGINAL_PATH_HEADER = "x-llm-original-path"
# The Wasm data path's provider path: Wasm cannot set :path from its body callback, so the
# decision carries it here and Envoy's Lua step moves it into :path (docs/wasm.md).
PROVIDER_PATH_HEADER = "x-llm-provider-path"
# Set by the provider clusters' upstream observer (its own header_mutation), so that stream is
# told apart from the listener's observer; removed before the provider sees the request.
PROVIDER_ATTEMPT_HEADER = "x-llm-provider-attempt"
# Set on responses that came through the fallback hop: the provider failed, self-hosted served.
FALLBACK_OF_HEADER = "x-llm-fallback-of"
# ... and which model answered there (so cost is charged at the fleet's price, not the provider's).
FALLBACK_MODEL_HEADER = "x-llm-fallback-model"

# Client-sent headers with these prefixes are stripped before any decision: they carry routing.
ROUTING_HEADER_PREFIXES = (DESTINATION_HEADER, "x-llm-")

# -- Envoy's per-request route controls (set by policy; never accepted from clients) ---------
ENVOY_TIMEOUT_MS_HEADER = "x-envoy-upstream-rq-timeout-ms"
ENVOY_PER_TRY_TIMEOUT_MS_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"
ENVOY_MAX_RETRIES_HEADER = "x-envoy-max-retries"
ENVOY_RETRY_ON_HEADER = "x-envoy-retry-on"

# -- read from the request --------------------------------------------------------------------
REQUEST_ID_HEADER = "x-request-id"
DEFAULT_SESSION_HEADER = "x-user-id"
DEFAULT_TENANT_HEADER = "x-tenant-id"
RETRY_AFTER_HEADER = "retry-after"

# -- attributes Envoy sends to ext_proc (the filter's `request_attributes`) --------------------
EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"  # ProcessingRequest.attributes key
REQUEST_TIME_ATTRIBUTE = "request.time"  # when Envoy received the request's first byte (RFC 3339)


def is_routing_header(name: str) -> bool:
    return name.startswith(ROUTING_HEADER_PREFIXES)
