"""All benchmarks in one command; results as JSON (one file per section), PNG plots and a summary.

    python -m bench.run                 # the full run (about 20 to 30 minutes on 2 cores)
    python -m bench.run --quick         # CI: tiny counts, checks the harness end to end
    python -m bench.run --quick --skip-proxy --output-dir /tmp/out

Sections (``--sections``, comma-separated; default: all):

* ``gateway``: router vs the reference gateway (minimal grpc.aio forwarding to the same fake)
  vs the LiteLLM proxy vs the Portkey gateway vs the fake provider called directly (the floor)
  vs a bare grpc.aio echo server, each its own process, one load generator process; unary
  chat, streaming chat and embeddings at concurrency 1, 8, 32, 128 (``bench.compare``); the
  router's variants (memory state, telemetry, Redis state, two workers) on the cells their
  ratios need, about 3 minutes of the run; first
  the start-up and first request of the router, the reference and Portkey (``bench.startup``,
  ``--startup-runs`` fresh starts each); with ``--profile-seconds`` > 0, py-spy profiles the
  router at concurrency 32 afterwards;
* ``routing``: the routing-decision microbenchmark (``bench.routing_decision``);
* ``embedding``: ingest rate and search latency of the embedding service over Chroma at 10k
  and 100k 384-d documents, and cross-dimension search cost (``bench.embedding_store``);
* ``batching``: 64 concurrent single-text Embed calls through the router's local model vs the
  model's raw batched throughput (``bench.local_batching``).

Every results file carries the machine it was measured on (cores, CPU model, Python,
grpcio, litellm, git commit). ``summary.json`` and ``summary.md`` hold the goals with their
measured values; the full run writes to ``bench/results/``, ``--quick`` to
``bench/results/quick/`` unless ``--output-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench import compare, plots, report
from bench.machine import machine_info
from bench.procs import ROOT

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("gateway", "routing", "embedding", "batching")
SECTION_TIMEOUT_S = {"embedding": 3600.0, "batching": 1800.0}
SECTION_FILES = {
    "gateway": "gateway.json",
    "routing": "routing_decision.json",
    "embedding": "embedding_store.json",
    "batching": "local_batching.json",
}


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sekha benchmarks", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts: checks the harness runs end to end"
    )
    parser.add_argument("--skip-proxy", action="store_true", help="do not install or run the LiteLLM proxy")
    parser.add_argument(
        "--no-install-proxy", action="store_true", help="use the proxy venv only if it exists"
    )
    parser.add_argument(
        "--skip-portkey", action="store_true", help="do not install or run the Portkey gateway"
    )
    parser.add_argument(
        "--no-install-portkey", action="store_true", help="use bench/.node-portkey only if it is installed"
    )
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=None,
        help="fresh starts per target for start-up (default 5; quick: 2)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--concurrency", type=_csv_ints, default=None, help="e.g. 1,8,32,128")
    parser.add_argument("--requests", type=int, default=None, help="requests per measured cell")
    parser.add_argument("--duration", type=float, default=None, help="max seconds per measured cell")
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0, help="fake provider latency")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, help="py-spy the router at c=32 (default 10; quick: 0)"
    )
    parser.add_argument("--embedding-sizes", default=None, help="checkpoint sizes (default 10000,100000)")
    parser.add_argument("--max-ingest-s", type=float, default=1200.0, help="bound on the embedding ingest")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and configs of the processes")
    parser.add_argument("--targets", default=None, help=f"gateway targets, from {compare.TARGET_ORDER}")
    parser.add_argument(
        "--router-source", type=Path, default=None, help="run the router from this checkout (A/B of a patch)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def gateway_settings(args: argparse.Namespace) -> compare.GatewaySettings:
    settings = compare.GatewaySettings.quick() if args.quick else compare.GatewaySettings()
    overrides: dict[str, Any] = {
        "include_proxy": not args.skip_proxy,
        "install_proxy": not args.no_install_proxy,
        "include_portkey": not args.skip_portkey,
        "install_portkey": not args.no_install_portkey,
        "upstream_latency_ms": args.upstream_latency_ms,
        "profile_seconds": args.profile_seconds
        if args.profile_seconds is not None
        else (0.0 if args.quick else 10.0),
    }
    if args.startup_runs is not None:
        overrides["startup_runs"] = args.startup_runs
    if args.concurrency:
        overrides["concurrencies"] = args.concurrency
    if args.targets:
        overrides["targets"] = tuple(t for t in compare.TARGET_ORDER if t in args.targets.split(","))
    if args.router_source:
        overrides["router_source"] = str(args.router_source.resolve())
    if args.requests:
        overrides["requests"] = args.requests
    if args.duration:
        overrides["max_duration_s"] = args.duration
    return replace(settings, **overrides)


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _subprocess_section(module: str, out: Path, extra: list[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m bench.<module>`` (heavy imports stay out of this process); returns its JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--output", str(out), *extra],
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"bench.{module} exited with {completed.returncode}")
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


def run_routing(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from bench import routing_decision

    out = out_dir / "routing_decision.json"
    routing_decision.main(["--output", str(out), *(["--quick"] if args.quick else [])])
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    data["section"] = "routing"
    data["machine"] = machine_info()
    _write(out, data)
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.output_dir or (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sekha-bench-"))
    started = time.perf_counter()
    outcome: dict[str, Any] = {"sections": {}, "failed": {}}
    results: dict[str, dict[str, Any]] = {}
    print(f"sekha bench: {'quick' if args.quick else 'full'} run, sections {sections}, results in {out_dir}")
    try:
        for section in sections:
            began = time.perf_counter()
            print(f"== {section}", flush=True)
            try:
                if section == "gateway":
                    settings = gateway_settings(args)
                    data = compare.run_gateway(settings, work / "gateway", out_dir)
                    _write(out_dir / "gateway.json", data)
                    drawn = plots.plot_gateway(data, out_dir)
                    data["plots"] = drawn
                    _write(out_dir / "gateway.json", data)
                elif section == "routing":
                    data = run_routing(args, out_dir)
                elif section == "embedding":
                    extra = ["--quick"] if args.quick else []
                    if args.embedding_sizes:
                        extra += ["--sizes", args.embedding_sizes]
                    extra += ["--max-ingest-s", str(args.max_ingest_s)]
                    data = _subprocess_section(
                        "embedding_store",
                        out_dir / "embedding_store.json",
                        extra,
                        SECTION_TIMEOUT_S["embedding"],
                    )
                else:
                    extra = ["--quick"] if args.quick else []
                    extra += ["--work-dir", str(work / "batching")]
                    data = _subprocess_section(
                        "local_batching",
                        out_dir / "local_batching.json",
                        extra,
                        SECTION_TIMEOUT_S["batching"],
                    )
                results[section] = data
                outcome["sections"][section] = {"wall_s": round(time.perf_counter() - began, 1)}
            except Exception as exc:
                outcome["failed"][section] = f"{type(exc).__name__}: {exc}"
                print(f"   {section} FAILED: {exc}", flush=True)
        # Sections not run this time keep their last results in the summary, marked as earlier.
        earlier = {}
        for section, file_name in SECTION_FILES.items():
            path = out_dir / file_name
            if section not in results and section not in outcome["failed"] and path.exists():
                results[section] = json.loads(path.read_text(encoding="utf-8"))
                earlier[section] = results[section].get("machine", {}).get("measured_at")
        summary = report.build_summary(results, quick=args.quick)
        summary.update(outcome)
        summary["from_earlier_runs"] = earlier
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        summary["command"] = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
        summary["settings"] = asdict(gateway_settings(args))
        summary["machine"] = machine_info(
            litellm_proxy_version=(results.get("gateway", {}).get("litellm_install") or {}).get("version")
        )
        _write(out_dir / "summary.json", summary)
        (out_dir / "summary.md").write_text(report.markdown(summary, results), encoding="utf-8")
        print(report.markdown(summary, results))
        print(f"wrote {out_dir}/summary.json and summary.md in {summary['wall_s']} s")
    finally:
        if args.keep_work or outcome["failed"]:
            print(f"process logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
