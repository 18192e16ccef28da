"""Writing results down: the JSON record, the headline Markdown table, and the plots."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from .shapes import Case
from .workloads import COMPILED, REFERENCE

SCHEMA_VERSION = 1


def make_record(environment: dict, settings: dict, rows: list[dict], skipped: list[tuple[Case, str]]) -> dict:
    """The whole result of a run, as written to JSON (fields: benchmarks/README.md)."""
    return {
        "schema_version": SCHEMA_VERSION, "environment": environment, "settings": settings, "rows": rows,
        "skipped_cases": [{"case": case.label, "reason": reason} for case, reason in skipped],
    }


def write_json(path: Path, record: dict) -> None:
    """Atomically: the CLI rewrites the file after every case, so a run cut short keeps its rows."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2g}%" if fraction < 0.1 else f"{100 * fraction:.0f}%"


def markdown(record: dict) -> str:
    """The headline table: one line per fused backend and case, with the baselines' medians."""
    env = record["environment"]
    copy_gbps = record["settings"]["copy_bandwidth_bytes_per_s"] / 1e9
    lines = [
        f"Device: {env['device_name']} ({env['device']}); torch {env['torch']}, Triton {env['triton']}, "
        f"CUDA {env['cuda']}; commit {env['commit'][:12]}, {env['date'][:10]}; {env['cpu_threads']} CPU threads, "
        f"load {env['load_average_1min']:.1f}. Copy bandwidth {copy_gbps:.1f} GB/s. Medians in ms.",
        "",
    ]
    baseline = {(row["case"], row["pass"], row["impl"]): row.get("median_ms") for row in record["rows"]}
    fused = [row for row in record["rows"] if row["impl"] not in (REFERENCE, COMPILED) and row["status"] == "ok"]
    if not fused:
        return "\n".join(lines + ["No fused backend was measured."])
    graphs = any(row.get("graph_median_ms") is not None for row in fused)
    header = ["case", "pass", "backend", "median (IQR)", "eager", "compile", "vs eager", "vs compile", "GB/s",
              "% copy"] + (["CUDA graph"] if graphs else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in fused:
        key = (row["case"], row["pass"])
        cells = [
            row["case"], row["pass"], row["impl"],
            f"{_ms(row['median_ms'])} ({_ms(row['q1_ms'])}–{_ms(row['q3_ms'])})",
            _ms(baseline.get((*key, REFERENCE))), _ms(baseline.get((*key, COMPILED))),
            _times(row["speedup_vs_reference"]), _times(row["speedup_vs_compile"]),
            f"{row['bytes_per_s'] / 1e9:.3g}", _percent(row["copy_fraction"]),
        ] + ([_ms(row.get("graph_median_ms"))] if graphs else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(record: dict, stem: Path) -> list[Path]:
    """Draws the forward+backward rows: ``<stem>-throughput.png`` and ``<stem>-speedup.png``
    (each when there is something to draw). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in record["rows"] if row["status"] == "ok" and row["pass"] == "fwd+bwd"]
    title = f"{record['environment']['device_name']} — torch {record['environment']['torch']}"
    # One colour per implementation in every panel and figure.
    colors = {impl: f"C{i}" for i, impl in enumerate(record["settings"]["implementations"])}
    copy_gbps = record["settings"]["copy_bandwidth_bytes_per_s"] / 1e9
    paths = []
    figures = (
        ("throughput", "Loss forward+backward, floor bytes / median", _throughput_figure(plt, rows, colors, copy_gbps)),
        ("speedup", "Forward+backward speedup", _speedup_figure(plt, rows, colors)),
    )
    for name, heading, figure in figures:
        if figure is not None:
            figure.suptitle(f"{heading} — {title}")
            figure.tight_layout()
            paths.append(stem.with_name(f"{stem.name}-{name}.png"))
            figure.savefig(paths[-1], dpi=110)
            plt.close(figure)
    return paths


def _throughput_figure(plt, rows: list[dict], colors: dict, copy_gbps: float):
    """The loss: achieved GB/s (floor bytes) against C, one panel per mode, dtype, B and K,
    one line per implementation; the copy bandwidth dashed."""
    panels = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["op"] == "loss":
            panel = f"{row['mode']} {row['dtype']} B={row['batch']} K={row['num_mix']}"
            panels[panel][row["impl"]].append((row["classes"], row["bytes_per_s"] / 1e9))
    if not panels:
        return None
    cols = min(4, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax, (panel, series) in zip(axes.flat, sorted(panels.items())):
        for impl, points in sorted(series.items()):
            ax.plot(*zip(*sorted(points)), marker="o", label=impl, color=colors[impl])
        ax.axhline(copy_gbps, linestyle="--", color="gray", label="copy")
        ax.set(xscale="log", yscale="log", title=panel, xlabel="classes C", ylabel="GB/s")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    return fig


def _speedup_figure(plt, rows: list[dict], colors: dict):
    """Speedup of each implementation per case: against the eager reference, and against
    torch.compile when it was measured (log scale; the black line is 1)."""
    compared = [row for row in rows if row["impl"] != REFERENCE]
    baselines = [(key, label) for key, label in (("speedup_vs_reference", "eager reference"),
                                                 ("speedup_vs_compile", "torch.compile(reference)"))
                 if any(row[key] for row in compared)]
    if not baselines:
        return None
    cases = list(dict.fromkeys(row["case"] for row in compared))
    impls = list(dict.fromkeys(row["impl"] for row in compared))
    height = 0.8 / len(impls)
    fig, axes = plt.subplots(1, len(baselines), figsize=(6.5 * len(baselines), 1.5 + 0.22 * len(cases) * len(impls)),
                             sharey=True, squeeze=False)
    for ax, (key, label) in zip(axes.flat, baselines):
        for slot, impl in enumerate(impls):
            values = {row["case"]: row[key] for row in compared if row["impl"] == impl}
            ax.barh([i + slot * height for i in range(len(cases))],
                    [values.get(case) or float("nan") for case in cases], height=height, label=impl,
                    color=colors[impl])
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set(xscale="log", xlabel=f"speedup vs {label}")
    axes[0, 0].set_yticks([i + 0.4 - height / 2 for i in range(len(cases))], cases, fontsize="small")
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize="small")
    return fig
