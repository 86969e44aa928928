"""Hosted providers on the Wasm data path: the ext_proc path's provider tests, run against a
stack whose Envoy decides with the Wasm filter (extproc/deploy/wasm_config.py adds the provider
routes, clusters, credential injection and the fallback hop). Rows of the policy that may reach
a provider are escalated, and the brain's answers pick the providers; the fleet's rows are the
filter's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from extproc.devstack.stack import LocalStack
from tests.conftest import envoy_stats
from tests.integration.test_providers import (
    chat,
    post,
    provider_stack,
    served_by_provider,
    test_a_rotated_key_file_is_picked_up_without_a_restart,
    test_a_tenant_over_its_hosted_budget_stays_self_hosted,
    test_azure_shape_deployment_path_api_version_and_api_key,
    test_failing_provider_5xx_falls_back_for_streams_before_the_first_byte,
    test_keys_never_reach_responses_metrics_or_logs,
    test_openai_sdk_streams_from_the_provider_and_its_cost_is_counted,
    test_premium_gpt4_goes_to_the_provider_with_its_key_and_without_the_clients,
    test_rate_limited_provider_falls_back_honours_retry_after_and_resumes,
)

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


def test_rows_that_cannot_reach_a_provider_are_decided_in_the_filter(local: LocalStack) -> None:
    # llama-3-8b is the fleet's alone; gpt-4 is the local 70B for a standard tenant; acme's plan
    # allows spill-over but the policy names no spill-over target: no provider on these rows.
    for model, tenant in (("llama-3-8b", "small"), ("llama-3-8b", "acme"), ("gpt-4", "small")):
        before = envoy_stats(local)["escalated"]
        status, headers, body = post(local, chat(model), tenant=tenant)
        assert status == 200 and not served_by_provider(headers), body
        assert envoy_stats(local)["escalated"] == before, (model, tenant)
    # A premium tenant's gpt-4 goes to the provider: the brain's.
    before = envoy_stats(local)["escalated"]
    status, headers, body = post(local, chat("gpt-4"), tenant="acme")
    assert status == 200 and served_by_provider(headers), body
    assert envoy_stats(local)["escalated"] == before + 1
