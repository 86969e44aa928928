"""Hosted providers on the Wasm data path: the ext_proc path's provider tests, run against a
stack whose Envoy decides with the Wasm filter (extproc/deploy/wasm_config.py adds the provider
routes, clusters, credential injection and the fallback hop). A policy with providers is the
brain's, so every request here is escalated, and the brain's answers pick the providers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from extproc.devstack.stack import LocalStack
from tests.integration.test_providers import (
    provider_stack,
    test_a_rotated_key_file_is_picked_up_without_a_restart,
    test_a_tenant_over_its_hosted_budget_stays_self_hosted,
    test_azure_shape_deployment_path_api_version_and_api_key,
    test_failing_provider_5xx_falls_back_for_streams_before_the_first_byte,
    test_keys_never_reach_responses_metrics_or_logs,
    test_openai_sdk_streams_from_the_provider_and_its_cost_is_counted,
    test_premium_gpt4_goes_to_the_provider_with_its_key_and_without_the_clients,
    test_rate_limited_provider_falls_back_honours_retry_after_and_resumes,
)
from tests.wasm.test_stack import envoy_stats

pytestmark = pytest.mark.envoy

__all__ = [
    "test_a_rotated_key_file_is_picked_up_without_a_restart",
    "test_a_tenant_over_its_hosted_budget_stays_self_hosted",
    "test_azure_shape_deployment_path_api_version_and_api_key",
    "test_failing_provider_5xx_falls_back_for_streams_before_the_first_byte",
    "test_keys_never_reach_responses_metrics_or_logs",
    "test_openai_sdk_streams_from_the_provider_and_its_cost_is_counted",
    "test_premium_gpt4_goes_to_the_provider_with_its_key_and_without_the_clients",
    "test_rate_limited_provider_falls_back_honours_retry_after_and_resumes",
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from provider_stack(tmp_path_factory.mktemp("wasm-providers"), data_path="wasm")


def test_the_requests_went_through_the_wasm_filter(local: LocalStack) -> None:
    test_premium_gpt4_goes_to_the_provider_with_its_key_and_without_the_clients(local)
    stats = envoy_stats(local)
    assert stats["escalated"] > 0 and stats["routed"] > 0
