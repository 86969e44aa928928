"""What Envoy needs to know about one hosted provider: where it is, how to reach it, its key.

Plain data, built from a policy's provider pools (extproc.policy) and rendered by extproc.deploy
into an Envoy cluster, route and credential injector, or into Istio manifests. It names where
the key comes from (a file or an environment variable), never the key itself: Envoy reads the
key, llm-extproc never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

# Headers that carry an API key to a provider: removed from every client request routed to a
# provider before the provider's own key is added, and from the fallback hop before self-hosted.
CREDENTIAL_HEADERS = ("authorization", "api-key")


@dataclass(frozen=True, slots=True)
class ProviderUpstream:
    name: str  # the policy's pool name
    api: str  # "openai" or "azure-openai"
    base_url: str
    key_file: str = ""  # one of key_file / key_env
    key_env: str = ""
    ca_file: str = ""  # "" = the system CA bundle
    http2: bool = True
    connect_timeout_s: float = 5.0
    timeout_s: float = 300.0
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024

    @property
    def cluster(self) -> str:
        return f"provider-{self.name}"

    @property
    def direct_cluster(self) -> str:
        return f"provider-{self.name}-direct"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.base_url).port or 443

    @property
    def base_path(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    @property
    def credential_header(self) -> str:
        return "api-key" if self.api == "azure-openai" else "Authorization"

    @property
    def credential_prefix(self) -> str:
        return "" if self.api == "azure-openai" else "Bearer "

    @property
    def secret_name(self) -> str:
        return f"provider-{self.name}-key"
