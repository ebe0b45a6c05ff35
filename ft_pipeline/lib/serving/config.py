"""The settings of ``ft-pipeline serve``; every default is the documented one."""

from __future__ import annotations

from dataclasses import dataclass

from ft_pipeline.lib.registry_schema import ALIASES

__all__ = ["DEFAULT_ASSIGNMENT_LOG", "ServeConfig"]

#: Where the CLI writes the A/B assignment log, relative to the data directory.
DEFAULT_ASSIGNMENT_LOG = "serving/assignments.jsonl"


@dataclass(frozen=True)
class ServeConfig:
    """How the OpenAI-compatible server runs. The CLI maps its flags onto these fields."""

    model_name: str = "ft-pipeline-assistant"
    """Registry name of the model line served. A request's ``model`` names it (the production
    alias), ``<name>@<alias>`` or ``<name>:v<N>``; any other name is a 404."""
    host: str = "127.0.0.1"
    """Interface to listen on; loopback only by default (0.0.0.0 in a container)."""
    port: int = 8000
    """TCP port (0 = any free port, for tests and benchmarks)."""
    poll_interval_s: float = 2.0
    """Seconds between two reads of the aliases' generation counters: a promotion or rollback is
    served at most this long (plus the new model's load time) after it is committed."""
    challenger_alias: str = "staging"
    """The alias that gets ``challenger_share`` of the requests naming the bare model."""
    challenger_share: float = 0.0
    """Share of the requests (0..1, by a stable hash of the request id) that the challenger
    answers; 0 = A/B routing off, production answers every bare-name request."""
    assignment_log: str = ""
    """JSON-lines file with one line per A/B assignment (request id, alias, version, time);
    empty = not written. The CLI defaults it to ``<data dir>/serving/assignments.jsonl``."""
    max_tokens_limit: int = 1024
    """Largest ``max_tokens`` / ``max_completion_tokens`` a request may ask for (400 above)."""
    max_context_tokens: int = 4096
    """Largest prompt plus ``max_tokens`` (also capped by the model's own position limit); a
    longer request is a 400 ``context_length_exceeded``."""
    max_request_messages: int = 256
    """Most messages one request may carry (400 above)."""
    max_loaded_models: int = 3
    """Model versions kept loaded at once (the served aliases count; pinned ones are not evicted).
    A ``<name>:v<N>`` request beyond it evicts the least recently used unpinned version."""
    device: str = ""
    """Torch device of local models; empty = CUDA when available, else CPU."""
    openai_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable with the API key used to proxy versions of backend ``openai`` (read
    when such a version is loaded; never logged)."""
    openai_base_url: str = ""
    """Base URL of the provider for backend ``openai``; empty = the SDK default."""
    openai_timeout_s: float = 60.0
    """Timeout of one proxied request."""
    openai_max_retries: int = 2
    """SDK retries of a proxied request (connection errors, 408/409/429/5xx) before its error is
    passed on to the client."""
    together_api_key_env: str = "TOGETHER_API_KEY"
    """Environment variable with the API key used to proxy versions of backend ``together``."""
    together_base_url: str = "https://api.together.ai/v1"
    """Together AI's OpenAI-compatible inference endpoint (versions of backend ``together``)."""
    azure_endpoint: str = ""
    """Azure OpenAI endpoint (``https://<resource>.openai.azure.com``) of versions of backend
    ``azure``; they are called by their deployment name. Empty = such versions cannot be served."""
    azure_api_key_env: str = "AZURE_OPENAI_API_KEY"
    """Environment variable with the Azure OpenAI key (versions of backend ``azure``)."""
    azure_api_version: str = "2024-10-21"
    """Azure OpenAI data-plane API version."""

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {self.poll_interval_s}")
        if self.challenger_alias not in ALIASES or self.challenger_alias == "production":
            raise ValueError(f"challenger_alias must be one of {[a for a in ALIASES if a != 'production']}")
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"challenger_share must be within [0, 1], got {self.challenger_share}")
        for name in ("max_tokens_limit", "max_context_tokens", "max_request_messages", "max_loaded_models"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.openai_max_retries < 0:
            raise ValueError(f"openai_max_retries must be >= 0, got {self.openai_max_retries}")
        if self.openai_timeout_s <= 0:
            raise ValueError(f"openai_timeout_s must be > 0, got {self.openai_timeout_s}")
