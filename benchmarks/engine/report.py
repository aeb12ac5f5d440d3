"""engine.md and engine.png from the results of :func:`~.bench.run_engine`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..report import save_figure
from .contenders import CONTENDERS, REFERENCE

__all__ = ["chart", "markdown"]


def _f(value: Any, fmt: str = ".0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def _loads(load: list[float] | tuple[float, ...]) -> str:
    return " / ".join(f"{x:.1f}" for x in load)


def markdown(results: dict[str, Any], chart_name: str | None) -> str:
    m, p = results["machine"], results["plan"]
    ref = CONTENDERS[REFERENCE].label
    lines = [
        "# Pool engine alone: checkout + return",
        "",
        f"Run {results['started']} (UTC), {'quick mode (harness check only)' if p['quick'] else 'full run'},"
        f" {results['elapsed_s']:.0f} s. Command: `python -m benchmarks.engine{' --quick' if p['quick'] else ''}`.",
        "",
        "## Machine and load",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['os']}",
        f"- Python {m['python']}; PostgreSQL: {m['postgres']} (a private cluster on 127.0.0.1, TCP)",
        f"- load average (1/5/15 min) at start {_loads(m['load_at_start'])},"
        f" at the end {_loads(results['load_at_end'])}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        "",
        "## Method",
        "",
        "A pair is `putconn(getconn())` with no query: the pool's own cost. Every pool is opened full",
        "(minimum = maximum = the connections column) with its defaults otherwise, and warmed up.",
        f"Each round runs every pool once, in an order rotated every round, {p['seconds']:g} s each;",
        f"{p['rounds']} rounds. pairs/s: min / **median** / max over the rounds. Ratio: each round's",
        f"pairs/s over {ref}'s in the same round, then min / **median** / max of those ratios.",
        "CPU share: this process's CPU time over wall time (near 1.0 is one core, the most the GIL allows;",
        "lower means the machine's other work took the CPU). Switches: the process's voluntary context",
        "switches (a thread blocked) per pair. Each shape gives the 1-minute load average during its rounds.",
    ]
    notes = [f"- {c.label}: {c.note}" for c in CONTENDERS.values() if c.note and c.waits]
    if notes:
        lines += ["", *notes]
    if chart_name:
        lines += ["", f"![pairs per second]({chart_name})"]
    for shape in results["throughput"]:
        lines += [
            "",
            f"## {shape['threads']} thread{'s' if shape['threads'] > 1 else ''}"
            f" on {shape['conns']} connection{'s' if shape['conns'] > 1 else ''}",
            "",
            f"Load average during the rounds: {_loads(list(shape['load_during'].values()))} (min / median / max).",
            "",
            f"| pool | pairs/s min | **median** | max | us/pair | vs {ref} (min / median / max)"
            " | CPU share | switches/pair |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for row in shape["contenders"].values():
            r = row.get("vs_reference")
            ratio = f"{r['min']:.2f} / **{r['median']:.2f}x** / {r['max']:.2f}" if r else "n/a"
            rate = row["pairs_per_s"]
            lines.append(
                f"| {row['label']} | {rate['min']:,.0f} | **{rate['median']:,.0f}** | {rate['max']:,.0f}"
                f" | {row['us_per_pair']:.1f} | {ratio} | {row['cpu_share']:.2f}"
                f" | {row['voluntary_switches_per_pair']:.2f} |"
            )
        for key, reason in shape["skipped"].items():
            lines.append(f"| {CONTENDERS[key].label} | - | - | - | - | {reason} | - | - |")
    if results["handover"]:
        lines += [
            "",
            "## Hand-over: wait and order under contention",
            "",
            "Separate runs in which every checkout records its time in `getconn()` and two tickets: one",
            "taken just before `getconn()` (arrival) and one just after (service). Waits are over all",
            "recorded checkouts of all rounds; p50 and p99 per round: min / median / max over the rounds.",
            "Overtaken: the share of checkouts served after one that arrived later (0 in a strict",
            "first-come-first-served queue, but for the measurement's own noise: a thread may be preempted",
            "between its ticket and the pool's queue); overtakers: how many later arrivals went first,",
            "mean, p99 and worst. The tickets are taken outside the pool, so the order seen is the order in",
            "which threads got to run with a connection: the pool's queue, its lock (not first come, first",
            "served) and the GIL's scheduling together; a long overtaking (more than the number of threads)",
            "is a thread passed over for whole rotations. Thread share: the fewest and the most pairs one",
            "thread did, over the mean; starved: threads that did no pair at all in a round (worst round).",
        ]
        for shape in results["handover"]:
            lines += [
                "",
                f"### {shape['threads']} threads on {shape['conns']} connections",
                "",
                f"Load average before / after: {shape['load_before'][0]:.1f} / {shape['load_after'][0]:.1f}.",
                "",
                "| pool | checkouts | wait p50 us | p99 us | p99.9 us | max us | p50 per round | p99 per round"
                " | overtaken | overtakers mean / p99 / max | thread share min / max | starved |",
                "|---|---:|---:|---:|---:|---:|---|---|---:|---|---|---:|",
            ]
            for row in shape["contenders"].values():
                pr, p5 = row["p99_us_per_round"], row["p50_us_per_round"]
                lines.append(
                    f"| {row['label']} | {row['checkouts']:,} | {_f(row['p50_us'])} | {_f(row['p99_us'])}"
                    f" | {_f(row['p999_us'])} | {_f(row['max_us'])}"
                    f" | {p5['min']:.0f} / {p5['median']:.0f} / {p5['max']:.0f}"
                    f" | {pr['min']:.0f} / {pr['median']:.0f} / {pr['max']:.0f}"
                    f" | {row['overtaken_share']:.1%} | {row['overtakers_mean']:.2f} / {row['overtakers_p99']:.0f}"
                    f" / {row['overtakers_max']:.0f} | {row['thread_min_share']:.2f} / {row['thread_max_share']:.2f}"
                    f" | {row['threads_starved']:.0f} |"
                )
            for key, reason in shape["skipped"].items():
                lines.append(f"| {CONTENDERS[key].label} | - | - | - | - | - | - | - | {reason} | - | - | - |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """One panel of pairs/s per shape (median, min-max whiskers), then the hand-over waits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    shapes = results["throughput"]
    handover = results["handover"]
    panels = len(shapes) + len(handover)
    cols = 2
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(12, 3.4 * ((panels + 1) // cols)))
    flat = list(axes.flat)
    keys = list(CONTENDERS)
    colors = {k: "#2a7ab9" if k.startswith("pgpool") else ("#555555" if k == REFERENCE else "#bbbbbb") for k in keys}
    for ax, shape in zip(flat, shapes, strict=False):
        rows = shape["contenders"]
        names = [k for k in keys if k in rows]
        med = [rows[k]["pairs_per_s"]["median"] for k in names]
        lo = [m - rows[k]["pairs_per_s"]["min"] for k, m in zip(names, med, strict=True)]
        hi = [rows[k]["pairs_per_s"]["max"] - m for k, m in zip(names, med, strict=True)]
        ax.barh([CONTENDERS[k].label for k in names], med, xerr=[lo, hi], color=[colors[k] for k in names])
        ax.invert_yaxis()
        ax.set_title(f"{shape['threads']} thread(s) / {shape['conns']} conn(s): pairs/s (higher is better)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
        for i, k in enumerate(names):
            ratio = rows[k].get("vs_reference")
            text = f" {med[i]:,.0f}" + (f" ({ratio['median']:.2f}x)" if ratio else "")
            ax.text(med[i], i, text, va="center", fontsize=7)
    for ax, shape in zip(flat[len(shapes) :], handover, strict=False):
        rows = shape["contenders"]
        names = [k for k in keys if k in rows]
        p50 = [rows[k]["p50_us"] for k in names]
        p99 = [rows[k]["p99_us"] for k in names]
        y = range(len(names))
        ax.barh([i - 0.2 for i in y], p50, height=0.4, label="p50", color="#2a7ab9")
        ax.barh([i + 0.2 for i in y], p99, height=0.4, label="p99", color="#bbbbbb")
        ax.set_yticks(list(y), [CONTENDERS[k].label for k in names])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.legend(fontsize=7)
        ax.set_title(
            f"{shape['threads']} threads / {shape['conns']} conns: wait in getconn, us (lower is better)", fontsize=9
        )
        ax.tick_params(labelsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    m = results["machine"]
    save_figure(
        fig,
        f"Pool engine alone - {m['cpu']}, {m['cores']} cores, load {m['load_at_start'][0]:.1f} at start",
        path,
        dpi=90,
    )
