"""The benchmark harness runs end to end: `python -m bench.run --quick --skip-proxy` in a subprocess.

Only the shape of what it writes is checked (every section, every target and cell, no
errors, machine info, the start-up runs), never a timing: numbers on a shared 2-core machine
prove nothing. The Portkey gateway (Node) runs when npm could install it; offline it must be
reported as skipped, never fail the run.
The pure helpers the results depend on (percentiles, the py-spy summary) are checked exactly.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.compare import VARIANT_COMPARISONS, GatewaySettings
from bench.loadgen import USER_TEXT
from bench.profiling import summarize_folded
from bench.stats import percentile, summarize_ms

pytestmark = [pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 150  # a hang guard; the quick run takes about 50 s on 2 cores
MACHINE_KEYS = {"nproc", "cpu_model", "python", "grpcio", "litellm", "git_commit", "measured_at"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-quick")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--skip-proxy", "--output-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


def _load(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / name).read_text(encoding="utf-8"))
    assert MACHINE_KEYS <= set(data["machine"]), name
    return data


def test_gateway_section_has_every_target_cell_and_no_errors(quick_run: Path) -> None:
    gateway = _load(quick_run, "gateway.json")
    settings = gateway["settings"]
    assert settings["concurrencies"] == [1, 8]
    portkey = "portkey" in gateway["targets"]
    variants = {"router_memory", "router_telemetry", "router_redis", "router_workers2"}
    expected = {"direct", "echo", "reference", "router", "router_http"} | variants
    expected |= {"portkey"} if portkey else set()
    assert set(gateway["targets"]) == expected
    assert "skipped" in gateway["unavailable"]["litellm_proxy"]
    if portkey:
        assert gateway["portkey_install"]["version"] == "1.15.2"
    else:
        assert gateway["unavailable"]["portkey"].startswith("skipped in the quick run: ")
    for name, target in gateway["targets"].items():
        assert target["startup_s"] > 0 and target["first_success_s"] >= target["startup_s"], name
        assert target["rss_kib_after_run"] > 0 and target["alive_at_end"], name
        assert set(target["cells"]) == {f"{w}/c{c}" for w, c in GatewaySettings.quick().cells_for(name)}
        for key, cell in target["cells"].items():
            assert cell["errors"] == 0 and cell["warmup_errors"] == 0, (name, key, cell["error_kinds"])
            assert cell["ok"] == settings["requests"] or cell["elapsed_s"] >= settings["max_duration_s"]
            assert cell["throughput_rps"] > 0 and cell["target_rss_kib"] > 0
            assert cell["latency_ms"]["p50"] <= cell["latency_ms"]["p90"] <= cell["latency_ms"]["p99"]
            assert cell["target_cpu_ms_per_request"] >= 0
            if key.startswith("stream/"):
                assert cell["ttft_ms"]["p50"] <= cell["latency_ms"]["max"]
                # The fake streams its reply word by word ("echo:" and the user's words).
                if name == "direct":
                    assert cell["chunks"] == cell["ok"] * (len(USER_TEXT.split()) + 1)
                assert cell["chunks"] >= cell["ok"], (name, key)
                assert cell["target_cpu_ms_per_chunk"] is not None
    added = gateway["derived"]["added_latency_ms"]
    assert set(added) == expected - {"direct"}
    assert set(added["router"]["stream/c1"]) >= {"p50", "p99", "ttft_p50"}
    assert gateway["derived"]["errors"] == dict.fromkeys(expected, 0)
    ratios = gateway["derived"]["router_ratios"]
    assert set(ratios) == set(gateway["targets"]["router"]["cells"])
    assert set(ratios["chat/c1"]) >= {"cpu_per_request_over_reference", "throughput_vs_reference"}
    assert set(ratios["stream/c8"]) >= {"cpu_per_chunk_over_reference", "added_ttft_p50_minus_reference_ms"}
    if portkey:
        assert set(ratios["embed/c8"]) >= {"throughput_vs_portkey", "portkey_cpu_per_request_over_ours"}
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("latency_vs_concurrency.png", "throughput_vs_concurrency.png"):
            assert (quick_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_router_variants_are_compared_with_the_router_they_differ_from(quick_run: Path) -> None:
    gateway = _load(quick_run, "gateway.json")
    variants = gateway["derived"]["variant_ratios"]
    assert {(name, v["target"], v["baseline"]) for name, v in variants.items()} == set(VARIANT_COMPARISONS)
    assert set(variants["sqlite_over_memory"]["cells"]) == {"chat/c1", "chat/c8"}
    assert set(variants["telemetry_over_none"]["cells"]) == {"chat/c1", "stream/c1"}
    assert set(variants["workers2_over_workers1"]["cells"]) == {"chat/c8"}
    for found in variants.values():
        for entry in found["cells"].values():
            assert entry["throughput_ratio"] > 0 and entry["machine_share"] > 0
    assert variants["telemetry_over_none"]["cells"]["stream/c1"]["cpu_per_chunk_ratio"] is not None
    workers = variants["workers2_over_workers1"]["cells"]["chat/c8"]
    assert len(workers["worker_cpu_shares"]) == 2 and workers["cpu_with_redis_ratio"] > 0
    # The load generator's 8 connections end up split evenly between the two workers.
    cell = gateway["targets"]["router_workers2"]["cells"]["chat/c8"]
    assert sorted(cell["connections_by_process"].values()) == [4, 4]
    assert gateway["targets"]["router_redis"]["cells"]["chat/c8"]["companion_cpu_ms_per_request"] >= 0
    # 10% of the router_telemetry's traces reached the collector (the sampler is random).
    assert 0 < gateway["otlp_collector_received"]["spans"]


def test_startup_runs_each_gateway_afresh(quick_run: Path) -> None:
    gateway = _load(quick_run, "gateway.json")
    startup = gateway["startup"]
    runs = gateway["settings"]["startup_runs"]
    assert startup["runs_per_target"] == runs == 2
    expected = {"router", "reference"} | ({"portkey"} if "portkey" in gateway["targets"] else set())
    assert set(startup["targets"]) == expected
    for name, measured in startup["targets"].items():
        assert measured["failure"] is None, (name, measured["failure"])
        assert len(measured["runs"]) == runs
        for run in measured["runs"]:
            assert run["serving_s"] > 0 and run["first_chat_ms"] > 0
        assert measured["serving_s_min"] <= measured["serving_s_median"] <= measured["serving_s_max"]
    assert "serving on port" in startup["targets"]["router"]["signal"]


def test_embedding_routing_and_batching_sections(quick_run: Path) -> None:
    store = _load(quick_run, "embedding_store.json")
    [checkpoint] = store["checkpoints"]
    assert checkpoint["documents"] == 1000 and checkpoint["reached"]
    assert checkpoint["documents_in_collection"] == 1000 and checkpoint["segment_docs_per_s"] > 0
    assert checkpoint["search_latency_ms"]["count"] == store["queries_per_checkpoint"]
    cross = store["cross_dimension"]
    assert cross["collections"] == ["xdim_384", "xdim_768"] and cross["p50_ratio_fused_over_single"] > 0

    routing = _load(quick_run, "routing_decision.json")
    assert routing["scenarios"]["chat_smart"]["candidates_returned"] == 8

    batching = _load(quick_run, "local_batching.json")
    routed = batching["through_router"]
    assert routed["errors"] == 0 and routed["warmup_errors"] == 0
    assert routed["texts"] == batching["texts_per_measurement"] * batching["rounds"]
    assert batching["raw"]["batched_64_texts_per_s"] > 0 and batching["router_over_raw_batched"] > 0


def test_summary_lists_the_goals_and_no_failed_section(quick_run: Path) -> None:
    summary = _load(quick_run, "summary.json")
    assert summary["quick"] is True and summary["failed"] == {}
    assert set(summary["sections"]) == {"gateway", "routing", "embedding", "batching"}
    goals = {g["goal"]: g for g in summary["goals"]}
    assert goals["no errors (router and its variants, every cell)"]["pass"] is True
    [state] = [g for name, g in goals.items() if name.startswith("default SQLite state vs memory state")]
    assert state["pass"] is None and state["note"]  # the quick run has no c=32
    # Without the proxy, the goals stated against it are not judged either way.
    assert goals["router added latency p50 vs LiteLLM proxy's (chat, c=1)"]["pass"] is None
    for state in ("default SQLite state", "memory state"):
        goal = f"router server CPU per unary chat ({state}) vs the reference gateway (worst concurrency)"
        assert goals[goal]["measured"]
    markdown = (quick_run / "summary.md").read_text(encoding="utf-8")
    assert "| goal | target | measured | met |" in markdown
    assert "| router/reference CPU |" in markdown and "| serving signal |" in markdown
    assert "| throughput A/B |" in markdown


def test_variants_run_only_on_their_cells() -> None:
    full = GatewaySettings()
    assert full.cells_for("router") == [(w, c) for w in ("chat", "stream", "embed") for c in (1, 8, 32, 128)]
    assert full.cells_for("router_memory") == [("chat", c) for c in (1, 8, 32, 128)]
    assert full.cells_for("router_telemetry") == [("chat", 1), ("chat", 32), ("stream", 1), ("stream", 32)]
    assert full.cells_for("router_workers2") == [("chat", 32), ("chat", 128)]
    # Concurrencies the run does not have fall back to its highest.
    assert GatewaySettings(concurrencies=(1, 8)).cells_for("router_redis") == [("chat", 8)]
    assert GatewaySettings(workloads=("embed",)).cells_for("router_memory") == []


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.9) == 7.0
    summary = summarize_ms([0.001, 0.002, 0.003, 0.004])
    assert summary == {"count": 4, "p50": 2.0, "p90": 4.0, "p99": 4.0, "mean": 2.5, "min": 1.0, "max": 4.0}


def test_profile_summary_counts_self_inclusive_and_buckets() -> None:
    folded = "\n".join(
        [
            "main (router_service/__main__.py:60);Chat (router_service/rpc/servicer.py:30);"
            "chat_request_from_pb (router_service/rpc/convert.py:160) 6",
            "main (router_service/__main__.py:60);Chat (router_service/rpc/servicer.py:30);"
            "_request (aiohttp/client.py:500) 3",
            "run (asyncio/runners.py:118) 1",
        ]
    )
    summary = summarize_folded(folded)
    assert summary["samples"] == 10
    assert summary["top_self"][0] == {
        "frame": "chat_request_from_pb (router_service/rpc/convert.py)",
        "samples": 6,
        "percent": 60.0,
    }
    inclusive = {e["frame"]: e["percent"] for e in summary["top_inclusive"]}
    assert inclusive["Chat (router_service/rpc/servicer.py)"] == 90.0
    buckets = {e["frame"]: e["percent"] for e in summary["buckets_self"]}
    assert buckets == {"router: servicer + convert": 60.0, "aiohttp client": 30.0, "event loop": 10.0}


def test_profile_buckets_know_the_runtime_package() -> None:
    folded = "\n".join(
        [
            "intercept (sekha_runtime/server/tracing.py:80) 3",
            "record (sekha_runtime/aggregation.py:40) 1",
        ]
    )
    buckets = {e["frame"]: e["percent"] for e in summarize_folded(folded)["buckets_self"]}
    assert buckets == {
        "sekha_runtime.server: error guard, handler layers": 75.0,
        "sekha_runtime: telemetry, aggregation, events": 25.0,
    }
