"""The goals, checked against a run's results, and the run as Markdown tables."""

from __future__ import annotations

from typing import Any

GOAL_ADDED_P50_MS = 1.5
GOAL_PROXY_ADDED_OVER_OURS = 5.0
GOAL_THROUGHPUT_VS_PROXY = 5.0
GOAL_THROUGHPUT_VS_ECHO = 0.40
GOAL_TTFT_OVERHEAD_MS = 1.0  # issue 19 (was 2 ms)
GOAL_CPU_OVER_REFERENCE = 1.5  # router server CPU per unary chat / per stream chunk vs the reference
GOAL_RSS_FRACTION_OF_PROXY = 0.5
GOAL_BATCHING = 0.8
GOAL_STATE_THROUGHPUT_COST = 0.10  # default SQLite state vs memory, budget + rate limit on both
GOAL_TELEMETRY_THROUGHPUT_COST = 0.10  # metrics + 10% of traces vs no telemetry
THROUGHPUT_CONCURRENCY = 32


def _goal(name: str, target: str, measured: Any, passed: bool | None, note: str = "") -> dict[str, Any]:
    return {"goal": name, "target": target, "measured": measured, "pass": passed, "note": note}


def _cell(gateway: dict[str, Any], target: str, key: str) -> dict[str, Any] | None:
    cells: dict[str, Any] | None = gateway.get("targets", {}).get(target, {}).get("cells")
    return cells.get(key) if cells else None


def _worst(ratios: dict[str, Any], workload: str, field: str) -> tuple[float, str] | None:
    """The highest ratio over the measured concurrencies of a workload, with its cell."""
    found = [
        (entry[field], key)
        for key, entry in ratios.items()
        if key.startswith(f"{workload}/") and entry.get(field)
    ]
    return max(found) if found else None


def _reference_goals(ratios: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for workload, field, what in (
        ("chat", "cpu_per_request_over_reference", "router server CPU per unary chat (default SQLite state)"),
        (
            "chat",
            "memory_state_cpu_per_request_over_reference",
            "router server CPU per unary chat (memory state)",
        ),
        ("stream", "cpu_per_chunk_over_reference", "router server CPU per stream chunk"),
    ):
        worst = _worst(ratios, workload, field)
        goals.append(
            _goal(
                f"{what} vs the reference gateway (worst concurrency)",
                f"<= {GOAL_CPU_OVER_REFERENCE:g}x",
                None if worst is None else f"{worst[0]:.2f}x ({worst[1]})",
                None if worst is None else worst[0] <= GOAL_CPU_OVER_REFERENCE,
                "" if worst is not None else "reference not measured",
            )
        )
    return goals


def _variant_goals(variants: dict[str, Any]) -> list[dict[str, Any]]:
    """The throughput a setting may cost, judged where the other throughput goals are (chat, c=32)."""
    goals = []
    key = f"chat/c{THROUGHPUT_CONCURRENCY}"
    for comparison, what, limit in (
        (
            "sqlite_over_memory",
            "default SQLite state vs memory state (budget + rate limit on both): throughput cost",
            GOAL_STATE_THROUGHPUT_COST,
        ),
        (
            "telemetry_over_none",
            "metrics + 10% of traces (OTLP) vs no telemetry: throughput cost",
            GOAL_TELEMETRY_THROUGHPUT_COST,
        ),
    ):
        entry = (variants.get(comparison) or {}).get("cells", {}).get(key) or {}
        ratio, cpu = entry.get("throughput_ratio"), entry.get("cpu_per_request_ratio")
        goals.append(
            _goal(
                f"{what} ({key})",
                f"<= {limit:.0%}",
                None
                if ratio is None
                else f"{1 - ratio:+.1%} (throughput ratio {ratio:.3f}; CPU per request ratio {_fmt(cpu, 3)})",
                None if ratio is None else 1 - ratio <= limit,
                "" if ratio is not None else f"{key} of both routers not measured",
            )
        )
    return goals


def _startup_goals(startup: dict[str, Any]) -> list[dict[str, Any]]:
    measured = startup.get("targets") or {}
    router, portkey = measured.get("router") or {}, measured.get("portkey") or {}
    goals = []
    for field, what, unit in (
        ("serving_s_median", "start-up: process start to serving", "s"),
        ("first_chat_ms_median", "start-up: first chat after serving", "ms"),
    ):
        ours, theirs = router.get(field), portkey.get(field)
        text = None if ours is None else f"{ours:.3g} {unit}"
        if text is not None and theirs is not None:
            text += f" vs {theirs:.3g} {unit}"
        goals.append(
            _goal(
                f"{what} (median), router vs Portkey",
                "<= Portkey's",
                text,
                None if ours is None or theirs is None else ours <= theirs,
                "" if theirs is not None else "Portkey not measured",
            )
        )
    return goals


def evaluate_goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []
    gateway = results.get("gateway")
    if gateway:
        derived = gateway["derived"]
        added = derived["added_latency_ms"]
        ours = (added.get("router", {}).get("chat/c1") or {}).get("p50")
        theirs = (added.get("litellm_proxy", {}).get("chat/c1") or {}).get("p50")
        goals.append(
            _goal(
                "router added latency p50, unary chat, concurrency 1",
                f"<= {GOAL_ADDED_P50_MS} ms",
                None if ours is None else f"{ours:.3f} ms",
                None if ours is None else ours <= GOAL_ADDED_P50_MS,
            )
        )
        ratio = theirs / ours if ours and theirs is not None and ours > 0 else None
        goals.append(
            _goal(
                "router added latency p50 vs LiteLLM proxy's (chat, c=1)",
                f"<= 1/{GOAL_PROXY_ADDED_OVER_OURS:g} of the proxy's",
                None if ratio is None else f"proxy adds {theirs:.3f} ms = {ratio:.1f}x ours",
                None if ratio is None else ratio >= GOAL_PROXY_ADDED_OVER_OURS,
                "" if theirs is not None else "proxy not measured",
            )
        )
        key = f"chat/c{THROUGHPUT_CONCURRENCY}"
        ratios = derived["router_ratios"].get(key, {})
        vs_proxy = ratios.get("throughput_vs_proxy")
        goals.append(
            _goal(
                f"throughput at concurrency {THROUGHPUT_CONCURRENCY} (unary chat) vs LiteLLM proxy",
                f">= {GOAL_THROUGHPUT_VS_PROXY:g}x",
                None if vs_proxy is None else f"{vs_proxy:.2f}x",
                None if vs_proxy is None else vs_proxy >= GOAL_THROUGHPUT_VS_PROXY,
                "" if vs_proxy is not None else f"{key} or the proxy not measured",
            )
        )
        vs_echo = ratios.get("throughput_vs_echo")
        goals.append(
            _goal(
                f"throughput at concurrency {THROUGHPUT_CONCURRENCY} (unary chat) vs bare grpc.aio echo",
                f"aim >= {GOAL_THROUGHPUT_VS_ECHO:.0%}",
                None if vs_echo is None else f"{vs_echo:.0%}",
                None if vs_echo is None else vs_echo >= GOAL_THROUGHPUT_VS_ECHO,
            )
        )
        ttft = (added.get("router", {}).get("stream/c1") or {}).get("ttft_p50")
        goals.append(
            _goal(
                "streaming time-to-first-token overhead p50 (c=1)",
                f"<= {GOAL_TTFT_OVERHEAD_MS} ms",
                None if ttft is None else f"{ttft:.3f} ms",
                None if ttft is None else ttft <= GOAL_TTFT_OVERHEAD_MS,
            )
        )
        goals += _reference_goals(derived["router_ratios"])
        goals += _variant_goals(derived.get("variant_ratios") or {})
        goals += _startup_goals(gateway.get("startup") or {})
        memory = derived["rss_kib_after_run"]
        router_rss, proxy_rss = memory.get("router"), memory.get("litellm_proxy")
        goals.append(
            _goal(
                "router RSS after the run vs LiteLLM proxy's",
                f"<= {GOAL_RSS_FRACTION_OF_PROXY:.0%}",
                None
                if not router_rss or not proxy_rss
                else f"{router_rss / 1024:.0f} MiB vs {proxy_rss / 1024:.0f} MiB"
                f" = {router_rss / proxy_rss:.0%}",
                None
                if not router_rss or not proxy_rss
                else router_rss <= GOAL_RSS_FRACTION_OF_PROXY * proxy_rss,
            )
        )
        errors = derived["errors"]
        routers = [name for name in errors if name.startswith("router")]
        goals.append(
            _goal(
                "no errors (router and its variants, every cell)",
                "0",
                ", ".join(f"{name}: {count}" for name, count in errors.items()),
                all(errors[name] == 0 for name in routers) if routers else None,
            )
        )
    batching = results.get("batching")
    if batching:
        ratio = batching.get("router_over_raw_batched")
        goals.append(
            _goal(
                "local model: 64 concurrent single-text Embed calls vs raw batched throughput",
                f">= {GOAL_BATCHING:.0%}",
                None
                if ratio is None
                else f"median per-round ratio {ratio:.0%} "
                f"(router {batching['through_router']['texts_per_s']}, "
                f"raw {batching['raw']['batched_64_texts_per_s']} texts/s, medians of "
                f"{batching.get('rounds', 1)} rounds)",
                None if ratio is None else ratio >= GOAL_BATCHING,
            )
        )
    return goals


def build_summary(results: dict[str, dict[str, Any]], quick: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"quick": quick, "goals": evaluate_goals(results)}
    gateway = results.get("gateway")
    if gateway:
        summary["gateway"] = {
            "derived": gateway["derived"],
            "startup_s": {n: t["startup_s"] for n, t in gateway["targets"].items()},
            "first_success_s": {n: t["first_success_s"] for n, t in gateway["targets"].items()},
            "unavailable": gateway["unavailable"],
            "startup": {
                name: {k: v for k, v in t.items() if k.endswith("_median") or k == "failure"}
                for name, t in (gateway.get("startup") or {}).get("targets", {}).items()
            },
            "portkey_install": gateway.get("portkey_install"),
            "profile": {
                k: v
                for k, v in (gateway.get("profile") or {}).items()
                if k in ("available", "reason", "samples", "buckets_self", "load")
            },
        }
    if "routing" in results:
        summary["routing_median_us"] = results["routing"].get("median_us")
    if "embedding" in results:
        emb = results["embedding"]
        summary["embedding"] = {
            "checkpoints": [
                {k: c.get(k) for k in ("documents", "reached", "segment_docs_per_s", "search_latency_ms")}
                for c in emb["checkpoints"]
            ],
            "cross_dimension_p50_ratio": emb.get("cross_dimension", {}).get("p50_ratio_fused_over_single"),
        }
    if "batching" in results:
        summary["batching_ratio"] = results["batching"].get("router_over_raw_batched")
    return summary


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _reference_table(gateway: dict[str, Any]) -> list[str]:
    """Router against the reference gateway (CPU per request and chunk, added TTFT) and the peers."""
    ratios = gateway["derived"]["router_ratios"]
    cells = {name: t["cells"] for name, t in gateway["targets"].items()}
    if not ratios:
        return []
    added = gateway["derived"]["added_latency_ms"]
    lines = [
        "",
        "Router over the reference gateway (minimal grpc.aio forwarding to the same fake) and the peers. "
        "Server CPU is the target process's own, per request (per text chunk for streams); "
        "added TTFT is time to first token minus the direct call's. Portkey's stream handler waits "
        "25 ms before the first chunk by design, so its TTFT carries those 25 ms.",
        "",
        "| workload | c | router CPU ms | reference CPU ms | router/reference CPU | router added TTFT p50 ms "
        "| reference added TTFT p50 ms | router/reference added TTFT | throughput vs reference "
        "| vs LiteLLM proxy | vs Portkey | Portkey CPU / ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_chunk = "target_cpu_ms_per_chunk"
    for key, entry in ratios.items():
        workload, concurrency = key.split("/c")
        stream = workload == "stream"
        router, reference = cells["router"][key], cells.get("reference", {}).get(key) or {}
        cpu_field = per_chunk if stream else "target_cpu_ms_per_request"
        cpu_ratio = entry.get("cpu_per_chunk_over_reference" if stream else "cpu_per_request_over_reference")
        ours_ttft = added.get("router", {}).get(key, {}).get("ttft_p50") if stream else None
        ref_ttft = added.get("reference", {}).get(key, {}).get("ttft_p50") if stream else None
        row = [
            f"{workload} (per chunk)" if stream else workload,
            concurrency,
            _fmt(router.get(cpu_field), 3),
            _fmt(reference.get(cpu_field), 3),
            _fmt(cpu_ratio),
            _fmt(ours_ttft),
            _fmt(ref_ttft),
            _fmt(entry.get("added_ttft_p50_over_reference")),
            _fmt(entry.get("throughput_vs_reference")),
            _fmt(entry.get("throughput_vs_proxy")),
            _fmt(entry.get("throughput_vs_portkey")),
            _fmt(entry.get("portkey_cpu_per_request_over_ours")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _http_door_table(gateway: dict[str, Any]) -> list[str]:
    """The same router through its OpenAI-compatible HTTP door next to its gRPC path."""
    cells = {name: t["cells"] for name, t in gateway["targets"].items()}
    added = gateway["derived"]["added_latency_ms"]
    if "router_http" not in cells or "router" not in cells:
        return []
    lines = [
        "",
        "The HTTP door (`server.http_port`, OpenAI's API) against the gRPC path of the same router "
        "(added latency over the direct call, p50; server CPU per request):",
        "",
        "| workload | c | gRPC added p50 ms | HTTP added p50 ms | gRPC rps | HTTP rps "
        "| gRPC CPU ms | HTTP CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, grpc_cell in cells["router"].items():
        http_cell = cells["router_http"].get(key) or {}
        workload, concurrency = key.split("/c")
        lines.append(
            f"| {workload} | {concurrency} | {_fmt(added.get('router', {}).get(key, {}).get('p50'))} "
            f"| {_fmt(added.get('router_http', {}).get(key, {}).get('p50'))} "
            f"| {_fmt(grpc_cell.get('throughput_rps'), 0)} | {_fmt(http_cell.get('throughput_rps'), 0)} "
            f"| {_fmt(grpc_cell.get('target_cpu_ms_per_request'), 3)} "
            f"| {_fmt(http_cell.get('target_cpu_ms_per_request'), 3)} |"
        )
    return lines


VARIANT_LABELS = {
    "sqlite_over_memory": "SQLite state / memory state",
    "telemetry_over_none": "telemetry / none",
    "workers2_over_workers1": "2 workers / 1 worker (Redis state)",
}


def _variant_table(gateway: dict[str, Any]) -> list[str]:
    """Each router variant against the router it differs from in one setting."""
    variants = gateway["derived"].get("variant_ratios") or {}
    if not variants:
        return []
    lines = [
        "",
        "Router settings, each pair differing in one setting (A over B, same cells, interleaved). "
        "CPU is the router's process tree per request (per text chunk for streams); with Redis, "
        "'+ redis' adds the router's own redis-server; machine share is CPU seconds per wall "
        "second over all cores.",
        "",
        "| A / B | workload | c | A req/s | B req/s | throughput A/B | A CPU ms | B CPU ms | CPU A/B "
        "| CPU + redis A/B | A machine share | B machine share | worker CPU shares |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for comparison, found in variants.items():
        label = f"{VARIANT_LABELS.get(comparison, comparison)} ({found['target']} / {found['baseline']})"
        for key, entry in found["cells"].items():
            workload, concurrency = key.split("/c")
            stream = workload == "stream"
            cpu_ratio = entry.get("cpu_per_chunk_ratio") if stream else entry.get("cpu_per_request_ratio")
            shares = entry.get("worker_cpu_shares")
            cpu = "cpu_ms_per_chunk" if stream else "cpu_ms_per_request"
            row = [
                label,
                f"{workload} (CPU per chunk)" if stream else workload,
                concurrency,
                _fmt(entry["throughput_rps"], 0),
                _fmt(entry["baseline_throughput_rps"], 0),
                _fmt(entry["throughput_ratio"], 3),
                _fmt(entry.get(cpu), 3),
                _fmt(entry.get(f"baseline_{cpu}"), 3),
                _fmt(cpu_ratio, 3),
                _fmt(entry.get("cpu_with_redis_ratio"), 3),
                _fmt(entry.get("machine_share")),
                _fmt(entry.get("baseline_machine_share")),
                " / ".join(f"{share:.0%}" for share in shares) if shares else "-",
            ]
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
    received = gateway.get("otlp_collector_received")
    if received:
        lines.append(
            f"\nThe OTLP collector received {received.get('spans')} spans, "
            f"{received.get('metric_exports')} metric exports and {received.get('log_records')} log records."
        )
    return lines


def _startup_table(gateway: dict[str, Any]) -> list[str]:
    startup = gateway.get("startup")
    if not startup or not startup.get("targets"):
        return []
    lines = [
        "",
        f"Start-up and first request ({startup['runs_per_target']} fresh starts per target; "
        "serving = process start to the target's own serving signal; first chat over a new connection "
        "right after it):",
        "",
        "| target | serving signal | serving s median | min | max | first chat ms median | min | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in startup["targets"].items():
        lines.append(
            f"| {name} | {t['signal']} | {_fmt(t['serving_s_median'], 3)} | {_fmt(t['serving_s_min'], 3)} "
            f"| {_fmt(t['serving_s_max'], 3)} | {_fmt(t['first_chat_ms_median'], 1)} "
            f"| {_fmt(t['first_chat_ms_min'], 1)} | {_fmt(t['first_chat_ms_max'], 1)} |"
        )
        if t.get("failure"):
            lines.append(f"\n{name} start-up failed: {t['failure']}")
    return lines


def markdown(summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables of a run (pasted into docs/PERFORMANCE.md)."""
    lines: list[str] = []
    machine = summary.get("machine", {})
    portkey = (results.get("gateway") or {}).get("portkey_install") or {}
    lines += [
        f"Run: `{summary.get('command', '')}` at {machine.get('measured_at')}, commit "
        f"{(machine.get('git_commit') or '')[:10]}{' (dirty tree)' if machine.get('git_dirty') else ''}; "
        f"{machine.get('nproc')} cores ({machine.get('cpu_model')}), load average at the end "
        f"{machine.get('load_average_1_5_15')}; Python {machine.get('python')}, "
        f"grpcio {machine.get('grpcio')}, "
        f"uvloop {machine.get('uvloop')}, aiohttp {machine.get('aiohttp')}, litellm {machine.get('litellm')} "
        f"(proxy venv: {machine.get('litellm_proxy')}), Portkey gateway {portkey.get('version')} "
        f"on Node {portkey.get('node')}, chromadb {machine.get('chromadb')}, "
        f"torch {machine.get('torch')}.",
        "",
        *(
            [f"Sections from earlier runs: {summary['from_earlier_runs']}.", ""]
            if summary.get("from_earlier_runs")
            else []
        ),
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for goal in summary.get("goals", []):
        met = {True: "yes", False: "**no**", None: "n/a"}[goal["pass"]]
        lines.append(f"| {goal['goal']} | {goal['target']} | {_fmt(goal['measured'])} | {met} |")
    gateway = results.get("gateway")
    if gateway:
        added = gateway["derived"]["added_latency_ms"]
        lines += [
            "",
            "| workload | c | target | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | TTFT p50 ms "
            "| added TTFT p50 ms | CPU ms/req | errors |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for workload in gateway["settings"]["workloads"]:
            for concurrency in gateway["settings"]["concurrencies"]:
                key = f"{workload}/c{concurrency}"
                for name, target in gateway["targets"].items():
                    cell = target["cells"].get(key)
                    if not cell:
                        continue
                    extra = added.get(name, {}).get(key, {})
                    lat, ttft = cell["latency_ms"], cell.get("ttft_ms") or {}
                    lines.append(
                        f"| {workload} | {concurrency} | {name} | {_fmt(cell['throughput_rps'], 0)} "
                        f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} "
                        f"| {_fmt(extra.get('p50'))} | {_fmt(ttft.get('p50'))} "
                        f"| {_fmt(extra.get('ttft_p50'))} "
                        f"| {_fmt(cell['target_cpu_ms_per_request'], 3)} | {cell['errors']} |"
                    )
        lines += [
            "",
            "| target | startup to SERVING s | first successful request s | RSS after run MiB "
            "| peak RSS MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, target in gateway["targets"].items():
            lines.append(
                f"| {name} | {_fmt(target['startup_s'], 3)} | {_fmt(target['first_success_s'], 3)} "
                f"| {target['rss_kib_after_run'] / 1024:.0f} | {target['peak_rss_kib'] / 1024:.0f} |"
            )
        for name, reason in gateway.get("unavailable", {}).items():
            lines.append(f"\n{name} unavailable: {reason}")
        lines += _reference_table(gateway)
        lines += _http_door_table(gateway)
        lines += _variant_table(gateway)
        lines += _startup_table(gateway)
    emb = results.get("embedding")
    if emb:
        lines += [
            "",
            "| documents (384-d) | reached | ingest docs/s (segment) | search p50 ms | p90 ms | p99 ms |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for c in emb["checkpoints"]:
            s = c.get("search_latency_ms") or {}
            reached = "yes" if c["reached"] else f"no ({c['documents_in_collection']})"
            lines.append(
                f"| {c['documents']} | {reached} "
                f"| {_fmt(c['segment_docs_per_s'], 0)} | {_fmt(s.get('p50'))} | {_fmt(s.get('p90'))} "
                f"| {_fmt(s.get('p99'))} |"
            )
        x = emb.get("cross_dimension")
        if x:
            lines.append(
                f"\nCross-dimension search ({x['documents_per_collection']} documents in a 384-d and a 768-d "
                f"collection): single collection p50 {x['single_collection_384_ms']['p50']} ms, "
                "both fused p50 "
                f"{x['both_collections_fused_ms']['p50']} ms = {x['p50_ratio_fused_over_single']}x "
                f"(p99 {x['p99_ratio_fused_over_single']}x). Ingest total {emb.get('ingest_total_s')} s."
            )
    batching = results.get("batching")
    if batching:
        raw, routed = batching["raw"], batching["through_router"]
        lines.append(
            f"\nLocal model batching: raw batched (64) {raw['batched_64_texts_per_s']} texts/s, one text per "
            f"call {raw['one_text_per_call_texts_per_s']} texts/s, LocalEmbedder in process "
            f"{raw['local_embedder_in_process']['texts_per_s']} texts/s; through the router (gRPC, "
            f"64 concurrent single-text calls) {routed['texts_per_s']} texts/s, "
            f"{batching['router_over_raw_batched']} of raw (median per-round ratio; rounds "
            f"{batching.get('ratio_per_round')}), "
            f"p50 {routed['latency_ms'].get('p50')} ms, errors {routed['errors']}."
        )
    routing = results.get("routing")
    if routing:
        lines.append(
            f"\nRouting decision ({routing['providers']} providers x "
            f"{routing['models_per_provider']} models): "
            f"median {routing['median_us']} us, p99 {routing['p99_us']} us."
        )
    profile = (gateway or {}).get("profile")
    if profile and profile.get("available"):
        lines += ["", f"Profile of the router (py-spy, {profile['samples']} samples, unary chat c=32):", ""]
        lines += ["| bucket (leaf frame) | % of samples |", "|---|---:|"]
        lines += [f"| {b['frame']} | {b['percent']} |" for b in profile["buckets_self"]]
    return "\n".join(lines) + "\n"
