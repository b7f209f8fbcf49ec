"""The benchmark report: plots (PNG files, logged to MLflow)
and one self-contained HTML page with them embedded."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from visionnode.components.common.jsonio import atomic_write_text
from visionnode.components.common.numbers import format_number
from visionnode.components.common.tracking import Tracker, save_figure

if TYPE_CHECKING:
    from visionnode.components.benchmark.result import BenchmarkResult


def _figures(result: "BenchmarkResult", directory: Path, tracker: Tracker | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [s for s in result.levels if s.mode == "closed"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for level in result.levels:
        if level.latencies_ms:
            label = f"c={level.concurrency}" if level.mode == "closed" else f"open {level.target_rate:g}/s"
            ax.hist(level.latencies_ms, bins=60, histtype="step", label=label)
    ax.axvline(result.slo.p99_ms, color="red", linestyle="--",
               label=f"P99 target {result.slo.p99_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"{result.model} over {result.protocol}: latency per level")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, directory / "latency_histogram.png", tracker))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [s.concurrency for s in closed]
    ax.plot(xs, [s.qps for s in closed], "o-", color="tab:blue", label="QPS")
    ax.axhline(result.slo.qps, color="tab:blue", linestyle=":", label=f"QPS target {result.slo.qps:g}")
    if result.baselines.openvino_int8_ips:
        ax.axhline(result.baselines.openvino_int8_ips, color="tab:green", linestyle="--",
                   label=f"raw OpenVINO INT8 {result.baselines.openvino_int8_ips:.0f} img/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("QPS")
    twin = ax.twinx()
    twin.plot(xs, [s.p99_ms for s in closed], "s-", color="tab:red", label="P99")
    twin.axhline(result.slo.p99_ms, color="tab:red", linestyle=":",
                 label=f"P99 target {result.slo.p99_ms:g}")
    twin.set_ylabel("P99 latency (ms)")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    ax.set_title("QPS and P99 vs concurrency")
    paths.append(save_figure(fig, directory / "qps_p99_vs_concurrency.png", tracker))
    plt.close(fig)
    return paths


def level_table(result: "BenchmarkResult") -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The per-level table (header, rows of cells) that the CLI prints and the HTML report shows."""
    head = ("mode", "concurrency", "rate", "requests", "errors", "QPS", "p50 ms", "p95 ms", "p99 ms",
            "max ms",
            "server batch", "queue ms", "Triton RSS MB")
    rows = [(s.mode, str(s.concurrency), format_number(s.target_rate, 0), str(s.requests), str(s.errors),
             format_number(s.qps), format_number(s.p50_ms), format_number(s.p95_ms), format_number(s.p99_ms),
             format_number(s.max_ms), format_number(s.mean_batch, 2), format_number(s.server_queue_ms),
             format_number(s.triton_rss_mb, 0))
            for s in result.levels]
    return head, rows


def _table(result: "BenchmarkResult") -> str:
    head, rows = level_table(result)
    html_rows = []
    for i, cells in enumerate(rows):
        style = ' style="background:#e6ffe6"' if i == result.best_level else ""
        html_rows.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(html_rows) + "</table>"


def _errors(result: "BenchmarkResult") -> str:
    kinds: dict[str, int] = {}
    for level in result.levels:
        for kind, count in level.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
    if not kinds:
        return "<p>No errors.</p>"
    return "<ul>" + "".join(f"<li>{count} × {html.escape(kind)}</li>" for kind,
                            count in kinds.items()) + "</ul>"


def render_html(result: "BenchmarkResult", images: list[Path]) -> str:
    b = result.baselines
    colour = "green" if result.slo_met else "#b00"
    embedded = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in b.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>VisionNode benchmark: {html.escape(result.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:49%}}</style></head><body>
<h1>Triton benchmark: {html.escape(result.model)} over {html.escape(result.protocol)}</h1>
<p style="font-size:1.3em;color:{colour}"><b>{html.escape(result.verdict)}</b></p>
<h2>Promotion decision: {"promote" if result.decision.promote else "do not promote"}</h2>
<p>{html.escape(result.decision.reason)}</p>
<table><tr><th>model</th>
<th>top-1 % on {result.accuracy_images} labelled val images (through Triton)</th></tr>
<tr><td>{html.escape(result.model)} (candidate)</td><td>{format_number(result.candidate_top1, 2)}</td></tr>
<tr><td>{html.escape(result.champion or "no champion")} (champion)</td>
<td>{format_number(result.champion_top1, 2)}</td></tr></table>
<p>Server {html.escape(result.url)}; input {result.input_shape};
request images: {html.escape(result.images_source)}.</p>
<h2>Baselines (same images, this process, same machine)</h2>
<table><tr><th>engine</th><th>img/s (batch {b.batch})</th><th>best served QPS ÷ engine</th></tr>
<tr><td>raw OpenVINO INT8 (ceiling)</td><td>{format_number(b.openvino_int8_ips)}</td>
<td>{format_number(result.served_vs_openvino, 2)}</td></tr>
<tr><td>PyTorch eager FP32</td><td>{format_number(b.pytorch_fp32_ips)}</td>
<td>{format_number(result.served_vs_pytorch, 2)}</td></tr>
</table><ul>{notes}</ul>
<h2>Levels</h2>{_table(result)}
<p>Best level (highest QPS with P99 ≤ {result.slo.p99_ms:g} ms and no errors) highlighted.
Peak Triton RSS: {format_number(result.triton_rss_mb, 0)} MB.</p>
<h2>Errors</h2>{_errors(result)}
<h2>Plots</h2>{embedded}
</body></html>
"""


def write_report(result: "BenchmarkResult", path: Path, tracker: Tracker | None = None) -> Path:
    """Write the plots beside `path` and the HTML page with them embedded; log both to MLflow."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _figures(result, path.parent, tracker)
    atomic_write_text(path, render_html(result, images))
    if tracker is not None:
        tracker.log_artifact(path, artifact_path="report")
    return path
