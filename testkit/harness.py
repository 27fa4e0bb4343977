"""Starting real services for tests and benchmarks.

Everything here runs the production `build_server` on 127.0.0.1 port 0 and
talks to it through the generated client; providers are the fake HTTP server
in `testkit.fake_provider`, so LiteLLM's and our own HTTP code run for real.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from embedding_service.config import EmbeddingConfig
from embedding_service.server import EmbeddingApp, EmbeddingDeps
from embedding_service.server import build_server as build_embedding_server
from router_service.config import RouterConfig
from router_service.server import RouterApp, RouterDeps
from router_service.server import build_server as build_router_server
from sekha.client import ConnectionConfig, EmbeddingClient, RouterClient


class FakeClock:
    """A clock tests move instead of sleeping (breakers, probes, budgets read it)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def openai_provider(
    provider_id: str,
    base_url: str,
    models: list[dict[str, Any]],
    *,
    priority: int = 50,
    provider_type: str = "openai_compatible",
    **extra: Any,
) -> dict[str, Any]:
    """A provider entry speaking the OpenAI API at the fake's /v1."""
    return {
        "id": provider_id,
        "type": provider_type,
        "base_url": f"{base_url}/v1",
        "api_key": f"sk-test-{provider_id}",
        "priority": priority,
        "models": models,
        **extra,
    }


def chat_model(
    model_id: str,
    *,
    tasks: tuple[str, ...] = ("chat_smart",),
    price: tuple[float, float] | None = (1.0, 2.0),
    **extra: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model_id, "tasks": list(tasks), "context_window": 8192, **extra}
    if price is not None:
        entry["price"] = {"input_per_million": price[0], "output_per_million": price[1]}
    return entry


def embedding_model(model_id: str, dimension: int, *, price: float = 0.02) -> dict[str, Any]:
    return {
        "id": model_id,
        "tasks": ["embedding"],
        "embedding_dimension": dimension,
        "price": {"input_per_million": price, "output_per_million": 0},
    }


def router_config(providers: list[dict[str, Any]], **sections: Any) -> RouterConfig:
    """A validated router config listening on 127.0.0.1:0."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1.0},
        "retry": {"backoff_base_s": 0.001, "backoff_max_s": 0.01},
        "providers": providers,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return RouterConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running_router(
    config: RouterConfig, deps: RouterDeps | None = None
) -> AsyncIterator[tuple[RouterApp, RouterClient]]:
    app = await build_router_server(config, deps)
    client = RouterClient(ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=30.0))
    try:
        yield app, client
    finally:
        await client.close()
        await app.stop(0.5)


def embedding_config(tmp_path: Any, router_target: str, **sections: Any) -> EmbeddingConfig:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1.0},
        "router": {"target": router_target, "timeout_s": 30},
        "chroma": {"mode": "persistent", "path": str(tmp_path / "chroma")},
        "state_path": str(tmp_path / "state.sqlite3"),
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return EmbeddingConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running_embedding(
    config: EmbeddingConfig, deps: EmbeddingDeps | None = None
) -> AsyncIterator[tuple[EmbeddingApp, EmbeddingClient]]:
    app = await build_embedding_server(config, deps)
    client = EmbeddingClient(ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=60.0))
    try:
        yield app, client
    finally:
        await client.close()
        await app.stop(0.5)
