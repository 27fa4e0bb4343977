"""Settings of the Embedding service (pydantic v2, unknown keys refused).

The defaults live in `default_config.yaml` next to this module; a deployment file and
`SEKHA_EMBEDDING__...` environment variables override them through the shared loader
`sekha_runtime.configloader.load_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sekha_runtime.configloader import ConfigPathError
from sekha_runtime.server.security import AuthConfig, ClientTlsConfig, ServerSettings, open_listener_problem
from sekha_runtime.telemetry import TelemetryConfig

ENV_PREFIX = "SEKHA_EMBEDDING__"

DistanceSpace = Literal["cosine", "l2", "ip"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(ServerSettings):
    """The gRPC listener."""

    port: int = Field(default=50052, ge=0, le=65535)


class RouterClientConfig(_Strict):
    """How the service reaches the Router service for vectors."""

    target: str = "127.0.0.1:50051"
    timeout_s: float = Field(default=30.0, gt=0)
    api_key: SecretStr | None = None
    tls: ClientTlsConfig | None = Field(default=None, description="TLS to the router; None = plaintext")


class HnswConfig(_Strict):
    """HNSW index parameters, fixed when a collection is created."""

    space: DistanceSpace = "cosine"
    ef_construction: int = Field(default=200, ge=4)
    ef_search: int = Field(default=100, ge=1)
    max_neighbors: int = Field(default=16, ge=2)


class ChromaConfig(_Strict):
    """Where the vectors live: an embedded persistent Chroma or a Chroma server."""

    mode: Literal["persistent", "http"] = "persistent"
    path: Path = Path("./data/chroma")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    # Chroma's client is synchronous; its calls run on this many worker threads.
    threads: int = Field(default=4, ge=1, le=64)
    hnsw: HnswConfig = HnswConfig()


class DefaultsConfig(_Strict):
    """Request defaults and limits."""

    model: str | None = None
    top_k: int = Field(default=10, ge=1)
    rrf_k: int = Field(default=60, ge=1)
    # Each collection is asked for fetch_multiplier x top_k hits so fusion has depth to work with.
    fetch_multiplier: int = Field(default=3, ge=2, le=4)
    # The most documents embedded in one call and written in one batch (calls are smaller while
    # a model is slow: see `batching`).
    write_batch_size: int = Field(default=256, ge=1)
    max_documents_per_request: int = Field(default=1000, ge=1)
    max_text_chars: int = Field(default=100_000, ge=1)
    max_top_k: int = Field(default=200, ge=1)
    max_id_chars: int = Field(default=512, ge=1)
    max_metadata_keys: int = Field(default=64, ge=1)
    max_metadata_value_chars: int = Field(default=8192, ge=1)
    page_size: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> DefaultsConfig:
        if self.top_k > self.max_top_k:
            raise ValueError("top_k must not exceed max_top_k")
        if self.page_size > self.max_page_size:
            raise ValueError("page_size must not exceed max_page_size")
        return self


class BatchingConfig(_Strict):
    """Texts per embedding call to the router, sized by each model's measured speed.

    A call is sized to take at most `call_fraction` of `router.timeout_s` (or of the request's
    remaining deadline, when shorter), between `min_size` and the caller's maximum
    (`defaults.write_batch_size`, a migration's `batch_size`); see `embedding_service.batching`.
    """

    # Texts in a model's first call, before its speed is known.
    initial_size: int = Field(default=16, ge=1)
    min_size: int = Field(default=1, ge=1)
    call_fraction: float = Field(default=0.25, gt=0, le=1)


class MigrationConfig(_Strict):
    """Background backfill of a model migration."""

    batch_size: int = Field(default=256, ge=1)
    max_batch_size: int = Field(default=5000, ge=1)
    # Verification passes (each re-embeds ids still missing) before the migration fails.
    verify_passes: int = Field(default=3, ge=1)
    # Attempts per backfill batch when the vector source is unavailable.
    retry_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _batch_fits(self) -> MigrationConfig:
        if self.batch_size > self.max_batch_size:
            raise ValueError("batch_size must not exceed max_batch_size")
        return self


class StateConfig(_Strict):
    """Where the collection registry, aliases, migrations and leases live (the `state:` section).

    sqlite: the file at `state_path`, one process (the default, nothing else to run). redis: shared
    by every replica of the service; leases with fencing tokens coordinate collection creation,
    alias swaps and migration phases (`embedding_service.redis_state`).
    """

    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: SecretStr | None = Field(default=None, description="redis://[:password@]host:port/db")
    key_prefix: str = Field(default="sekha-embedding", min_length=1, description="prefix of every Redis key")
    redis_timeout_s: float = Field(default=0.5, gt=0, description="a slower Redis counts as down")
    reconnect_interval_s: float = Field(default=1.0, gt=0, description="how often a down Redis is retried")
    # A replica that stops renewing (killed, paused, cut off) loses its leases after this long;
    # another replica then takes its migrations over.
    lease_ttl_s: float = Field(default=10.0, ge=0.2)
    # How long a request waits for a lease another replica holds before UNAVAILABLE + RetryInfo.
    lease_wait_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> StateConfig:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("redis_url is required when backend is redis")
        return self


class EmbeddingConfig(_Strict):
    """Root of the Embedding service's settings."""

    server: ServerConfig = ServerConfig()
    router: RouterClientConfig = RouterClientConfig()
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys; off unless enabled")
    chroma: ChromaConfig = ChromaConfig()
    # SQLite file holding the alias registry and the migrations (state.backend sqlite).
    state_path: Path = Path("./data/embedding_state.sqlite3")
    state: StateConfig = StateConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    batching: BatchingConfig = BatchingConfig()
    migration: MigrationConfig = MigrationConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @model_validator(mode="after")
    def _auth_beyond_loopback(self) -> EmbeddingConfig:
        problem = open_listener_problem(self.auth, [self.server.host])
        if problem is not None:
            raise ConfigPathError([(("auth", "enabled"), problem)])
        return self

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> EmbeddingConfig:
        """Defaults, then the YAML file at `path`, then `SEKHA_EMBEDDING__*` variables."""
        # Imported here so building a config in code never needs the YAML loader.
        from sekha_runtime.configloader import load_config

        return load_config(
            cls, path, env_prefix=ENV_PREFIX, default_text=default_config_text(), environ=environ
        )


def default_config_text() -> str:
    """The packaged `default_config.yaml`."""
    return resources.files("embedding_service").joinpath("default_config.yaml").read_text(encoding="utf-8")
