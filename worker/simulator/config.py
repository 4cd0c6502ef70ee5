"""The simulator's settings and the text of its flags, apart from the simulator itself, so that
the command line can describe `simulate` without loading the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimConfig:
    """How the simulator behaves."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"  # noqa: S105 - a simulator's well-known demo value
    api_key: str = "demo-key"
    token_ttl_s: float = 3600.0
    token_failures: int = 0  # the first N token requests answer 503
    latency_ms: float = 0.0
    rate_limit: float | None = None  # gateway limit, requests per sliding second; 429 beyond
    retry_after_s: int = 1
    quota_retry_after_s: int = 2
    stall_s: float = 120.0
    error_rate: float = 0.0  # share of DELETEs answered 503 at random
    reset_rate: float = 0.0  # share of DELETEs whose connection is reset at random
    seed: int = 0
    orders: int = 0  # orders to pre-create for the list endpoint
    tls_cert: str = ""  # PEM certificate (chain) to serve HTTPS with; empty: plain HTTP
    tls_key: str = ""  # its private key, when not in the same file
    base_path: str = "/customer-orders/v1"
    token_path: str = "/soget-connect/v1/openid-connect/token"  # noqa: S105 - a path


# flag -> (SimConfig field, type, help); defaults come from SimConfig.
SIMULATE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--latency-ms": ("latency_ms", float, "added to every API answer"),
    "--rate-limit": ("rate_limit", float, "gateway limit per sliding second; 429 beyond it"),
    "--retry-after": ("retry_after_s", int, "Retry-After seconds of a 429"),
    "--error-rate": ("error_rate", float, "share of DELETEs answered 503 at random"),
    "--reset-rate": ("reset_rate", float, "share of DELETEs whose connection is reset"),
    "--stall": ("stall_s", float, "seconds an SLO order stalls"),
    "--token-ttl": ("token_ttl_s", float, "access token lifetime in seconds"),
    "--token-failures": ("token_failures", int, "the first N token requests answer 503"),
    "--orders": ("orders", int, "orders to create for the list endpoint"),
    "--seed": ("seed", int, "random seed"),
    "--client-id": ("client_id", str, "client id it accepts"),
    "--client-secret": ("client_secret", str, "client secret it accepts"),
    "--api-key": ("api_key", str, "API key it accepts"),
    "--tls-cert": ("tls_cert", str, "serve HTTPS with this PEM certificate chain"),
    "--tls-key": ("tls_key", str, "the certificate's private key, if not in --tls-cert"),
}
