"""How a request is reshaped for one provider: its URL shape and its names for our models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from extproc.providers.pricing import Price

OPENAI_PREFIX = "/v1"


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    name: str  # the policy's pool name; also the value of the route-selecting header
    api: str  # "openai" or "azure-openai"
    base_path: str  # the base URL's path, no trailing slash
    api_version: str = ""
    model_names: Mapping[str, str] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)
    cooldown_s: float = 5.0

    def provider_model(self, model: str) -> str:
        return self.model_names.get(model, model)

    def path_for(self, path: str, model: str) -> str:
        """Our OpenAI path (/v1/chat/completions) as this provider wants it."""
        suffix = path.split("?", 1)[0]
        if suffix.startswith(OPENAI_PREFIX + "/"):
            suffix = suffix[len(OPENAI_PREFIX) :]
        if self.api == "azure-openai":
            deployment = quote(self.provider_model(model), safe="")
            return f"{self.base_path}/openai/deployments/{deployment}{suffix}?api-version={self.api_version}"
        return f"{self.base_path}{suffix}"
