"""Render Envoy's config for the Wasm data path (extproc/deploy/envoy/wasm.yaml)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from extproc.deploy import shipped
from extproc.deploy.envoy_config import lb_endpoints
from extproc.headers import (
    COMPLEXITY_HEADER,
    DESTINATION_HEADER,
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_PER_TRY_TIMEOUT_MS_HEADER,
    ENVOY_RETRY_ON_HEADER,
    ENVOY_TIMEOUT_MS_HEADER,
    MIRROR_CLUSTER_HEADER,
    MODEL_HEADER,
    PRIORITY_HEADER,
    RULE_HEADER,
    STREAM_HEADER,
    TIER_HEADER,
)

# Every request header a decision may set. Wasm cannot set request headers from its body
# callback, so the filter writes each as filter state and Envoy's header_mutation copies it:
# a header outside this list would be dropped, so the brain's decide endpoint refuses to emit one.
DECISION_HEADERS = (
    DESTINATION_HEADER,
    MODEL_HEADER,
    STREAM_HEADER,
    COMPLEXITY_HEADER,
    TIER_HEADER,
    PRIORITY_HEADER,
    RULE_HEADER,
    MIRROR_CLUSTER_HEADER,
    ENVOY_TIMEOUT_MS_HEADER,
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_RETRY_ON_HEADER,
    ENVOY_PER_TRY_TIMEOUT_MS_HEADER,
    "content-length",  # the replacement body's, when the decision rewrites it
)


def wasm_module() -> Path:
    return shipped("wasm", "llm_extproc.wasm")


def decision_mutations() -> str:
    """header_mutation's request_mutations: each decision header from filter state wasm.<name>."""
    return json.dumps(
        [
            {
                "append": {
                    "header": {"key": name, "value": f"%FILTER_STATE(wasm.{name}:PLAIN)%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            }
            for name in DECISION_HEADERS
        ]
    )


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """The filter's plugin configuration (wasm/assembly/index.ts, Settings)."""

    poll_ms: int = 100
    decide_timeout_ms: int = 1000
    report_every_ticks: int = 10
    observe: bool = True

    def json(self) -> str:
        return json.dumps(
            {
                "brain_cluster": "llm_brain",
                "brain_authority": "llm-brain",
                "poll_ms": self.poll_ms,
                "decide_timeout_ms": self.decide_timeout_ms,
                "report_every_ticks": self.report_every_ticks,
                "observe": self.observe,
            }
        )


DEFAULT_SETTINGS = FilterSettings()


def render_wasm(
    addresses: Sequence[str],
    *,
    listen_port: int,
    admin_port: int,
    brain_port: int,
    listen_host: str = "127.0.0.1",
    brain_host: str = "127.0.0.1",
    max_body_bytes: int = 4 * 1024 * 1024,
    shadow: Sequence[str] = (),
    settings: FilterSettings = DEFAULT_SETTINGS,
    module: Path | None = None,
) -> str:
    text = shipped("envoy", "wasm.yaml").read_text()
    return Template(text).substitute(
        admin_port=admin_port,
        listen_port=listen_port,
        listen_host=listen_host,
        brain_host=brain_host,
        brain_port=brain_port,
        buffer_limit_bytes=max_body_bytes * 2,
        lb_endpoints=lb_endpoints(addresses),
        shadow_endpoints=lb_endpoints(shadow),
        plugin_configuration=settings.json(),
        wasm_path=json.dumps(str(module or wasm_module())),
        decision_mutations=decision_mutations(),
    )
