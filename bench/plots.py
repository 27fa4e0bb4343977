"""PNG plots of the side-by-side results: latency and throughput against concurrency.

matplotlib is optional: without it no plot is drawn and the caller is told why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "direct": "#7f7f7f",
    "echo": "#2ca02c",
    "reference": "#17becf",
    "router": "#1f77b4",
    "router_http": "#aec7e8",
    "litellm_proxy": "#d62728",
    "portkey": "#9467bd",
}
LABELS = {
    "direct": "fake provider, direct (floor)",
    "echo": "bare grpc.aio echo (ceiling)",
    "reference": "minimal grpc.aio gateway (reference)",
    "router": "Sekha router",
    "router_http": "Sekha router, OpenAI HTTP door",
    "litellm_proxy": "LiteLLM proxy",
    "portkey": "Portkey gateway (Node)",
}
WORKLOAD_TITLES = {"chat": "unary chat", "stream": "streaming chat (total)", "embed": "embeddings"}


def _series(report: dict[str, Any], target: str, workload: str, pick: Any) -> tuple[list[int], list[float]]:
    cells = report["targets"][target]["cells"]
    xs, ys = [], []
    for concurrency in report["settings"]["concurrencies"]:
        cell = cells.get(f"{workload}/c{concurrency}")
        value = pick(cell) if cell else None
        if value is not None:
            xs.append(concurrency)
            ys.append(value)
    return xs, ys


def plot_gateway(report: dict[str, Any], out_dir: Path) -> list[str] | str:
    """Write latency_vs_concurrency.png and throughput_vs_concurrency.png; the file names, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plots (add it to the dev extra)"
    workloads = report["settings"]["workloads"]
    machine = report.get("machine", {})
    note = (
        f"{machine.get('nproc')} cores, {machine.get('cpu_model')}, Python {machine.get('python')}, "
        f"upstream latency {report['settings']['upstream_latency_ms']} ms"
    )
    written = []

    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for target in report["targets"]:
            xs, p50 = _series(report, target, workload, lambda c: c["latency_ms"].get("p50"))
            _, p99 = _series(report, target, workload, lambda c: c["latency_ms"].get("p99"))
            if not xs:
                continue
            color = COLORS.get(target)
            ax.plot(xs, p50, marker="o", color=color, label=f"{LABELS.get(target, target)} p50")
            ax.plot(xs, p99, marker=".", linestyle="--", color=color, alpha=0.6, label=f"{target} p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (closed-loop workers)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(WORKLOAD_TITLES.get(workload, workload))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Latency vs concurrency ({note})", fontsize=9)
    fig.tight_layout()
    path = out_dir / "latency_vs_concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for target in report["targets"]:
            xs, rps = _series(report, target, workload, lambda c: c["throughput_rps"])
            if xs:
                ax.plot(xs, rps, marker="o", color=COLORS.get(target), label=LABELS.get(target, target))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (closed-loop workers)")
        ax.set_ylabel("throughput (requests/s)")
        ax.set_title(WORKLOAD_TITLES.get(workload, workload))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Throughput vs concurrency ({note})", fontsize=9)
    fig.tight_layout()
    path = out_dir / "throughput_vs_concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)
    return written
