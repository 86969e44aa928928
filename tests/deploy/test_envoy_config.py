from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extproc.deploy.envoy_config import EnvoyPorts, render
from extproc.devstack.stack import envoy_binary


def filter_names(text: str) -> list[str]:
    config = yaml.safe_load(text)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return [f["name"] for f in chain["typed_config"]["http_filters"]]


@pytest.mark.parametrize("observe", [True, False])
def test_rendered_config_is_valid_for_envoy_with_and_without_the_observer(
    observe: bool, tmp_path: Path
) -> None:
    text = render(["127.0.0.1:8001", "127.0.0.1:8002"], EnvoyPorts(), observe=observe)
    names = filter_names(text)
    assert names[0] == "strip-client-routing-headers" and names[-1] == "envoy.filters.http.router"
    assert ("llm-observe" in names) is observe
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_observer_never_waits_and_sees_the_response_only() -> None:
    config = yaml.safe_load(render(["127.0.0.1:8001"], EnvoyPorts()))
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (observer,) = [f for f in chain["typed_config"]["http_filters"] if f["name"] == "llm-observe"]
    typed = observer["typed_config"]
    assert typed["observability_mode"] is True and typed["failure_mode_allow"] is True
    assert typed["processing_mode"]["request_body_mode"] == "NONE"
    assert typed["processing_mode"]["response_body_mode"] == "STREAMED"


def test_retries_past_our_list_never_go_back_to_a_host_that_failed() -> None:
    """Past the end of our list Envoy's fallback LB picks; least_request favours a dead host
    (it has no active requests), so the route must exclude hosts already tried."""
    config = yaml.safe_load(render(["127.0.0.1:8001"], EnvoyPorts()))
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = chain["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"]["prefix"] for r in routes] == ["/v1/audio/", "/"]  # uploads, everything else
    for route in routes:
        retry = route["route"]["retry_policy"]
        predicates = [p["name"] for p in retry["retry_host_predicate"]]
        assert predicates == ["envoy.retry_host_predicates.previous_hosts"]
        assert retry["host_selection_retry_max_attempts"] >= 3


def test_providers_render_a_valid_config_with_key_sources_not_keys(tmp_path: Path) -> None:
    from extproc.providers.upstream import ProviderUpstream

    key = tmp_path / "openai" / "api-key"
    key.parent.mkdir()
    key.write_text("sk-never-in-the-config")
    ca = tmp_path / "ca.pem"
    import trustme

    ca.write_bytes(trustme.CA().cert_pem.bytes())
    providers = [
        ProviderUpstream("openai", "openai", "https://api.openai.com/v1", key_file=str(key), ca_file=str(ca)),
        ProviderUpstream(
            "azure",
            "azure-openai",
            "https://x.openai.azure.com",
            key_env="AZURE_KEY",
            ca_file=str(ca),
            http2=False,
        ),
    ]
    text = render(["127.0.0.1:8001"], EnvoyPorts(), providers=providers, sds_dir=tmp_path)
    assert "sk-never-in-the-config" not in text
    config = yaml.safe_load(text)
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"]
    clusters_routed = [r["route"]["cluster"] for r in routes]
    assert clusters_routed[:2] == ["provider-openai", "provider-azure"] and set(clusters_routed[2:]) == {
        "fleet"
    }
    assert {"provider-openai-direct", "provider-fallback"} <= {
        c["name"] for c in config["static_resources"]["clusters"]
    }
    for route in routes[:2]:
        assert {"authorization", "api-key"} <= set(route["request_headers_to_remove"])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    options = clusters["provider-openai"]["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    direct = clusters["provider-openai-direct"]["typed_extension_protocol_options"]
    assert (
        "http2_protocol_options"
        in direct["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
    )
    filters = [f["name"] for f in options["http_filters"]]
    assert filters[-2:] == ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]
    tls = clusters["provider-azure-direct"]["transport_socket"]["typed_config"]
    assert tls["sni"] == "x.openai.azure.com"
    assert (tmp_path / "sds-openai.yaml").exists() and not (tmp_path / "sds-azure.yaml").exists()
    hop = config["static_resources"]["listeners"][1]
    assert hop["name"] == "provider-fallback" and "internal_listener" in hop
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"AZURE_KEY": "k"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
