"""Results as Markdown (tables, per-target verdicts) and a PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .apps import LIMIT, VARIANTS
from .scenarios import paired_ratio


def _f(value: Any, fmt: str = ".0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, each with the measured value and met / missed / not run."""
    out: list[dict[str, Any]] = []
    steady = results.get("steady", {}).get("views", {}).get("db", {})
    for other, minimum in ((LIMIT, 0.95), ("sqlalchemy", 1.15), ("psycopg_pool", 1.3), ("recipe", 4.0)):
        ratio = paired_ratio(steady, "pgpool", other)
        # Cross-check that a shared machine disturbs less: the other's worker CPU
        # per request over ours (above 1: ours costs less CPU per request).
        cpu = paired_ratio(steady, other, "pgpool", "cpu_us_per_req")
        # What a pool with no cost at all (the limit) would have scored.
        ceiling = paired_ratio(steady, LIMIT, other) if other != LIMIT else 1.0
        out.append(
            {
                "target": f"steady: flask-pgpool >= {minimum:g}x {VARIANTS[other][1]} (req/s)",
                "value": None if ratio is None else f"{ratio:.2f}x",
                "cpu": None if cpu is None else f"{cpu:.2f}x",
                "ceiling": None if ceiling is None else f"{ceiling:.2f}x",
                "met": None if ratio is None else ratio >= minimum,
            }
        )
    overload = results.get("overload", {}).get("views", {}).get("db", {}).get("pgpool")
    out.append(
        {
            "target": "overload: flask-pgpool 0 failed requests",
            "value": None if overload is None else f"{overload['failed']} of {overload['requests']}",
            "met": None if overload is None else overload["failed"] == 0,
        }
    )
    micro = results.get("micro", {}).get("flask_request")
    ratio = micro[0]["ratio"] if micro else None
    out.append(
        {
            "target": "one thread, in-process: per request <= 1.05x a dedicated connection",
            "value": None if ratio is None else f"{ratio:.3f}x",
            "met": None if ratio is None else ratio <= 1.05,
        }
    )
    restart = results.get("restart", {}).get("variants", {}).get("pgpool")
    failed = None if restart is None else sum(row["failed_after_up"] for row in restart.values())
    out.append(
        {
            "target": "restart: flask-pgpool 0 failed requests once the server accepts connections",
            "value": None if restart is None else f"{failed} failed after up ({', '.join(restart)})",
            "met": None if restart is None else failed == 0,
        }
    )
    return out


def _verdict(met: bool | None) -> str:
    return "not run" if met is None else ("**met**" if met else "**MISSED**")


def markdown(results: dict[str, Any], chart_name: str | None) -> str:
    m = results["machine"]
    p = results["plan"]
    lines = [
        "# flask-pgpool benchmark results",
        "",
        f"Run {results['started']} (UTC), {'quick mode (harness check only)' if p['quick'] else 'full run'}.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['note']}",
        f"- Python {m['python']}, PostgreSQL: {m['postgres']}",
        f"- gunicorn {m['gunicorn']} (gthread), {p['workers']} workers; pools maxconn={p['maxconn']} per worker;"
        f" wrk {m['wrk']}",
        f"- {p['rounds']} interleaved rounds of {p['duration']:g} s per variant and view; medians below.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict | ceiling (limit / theirs) | CPU per request, theirs / ours |",
        "|---|---|---|---|---|",
    ]
    for t in targets(results):
        lines.append(
            f"| {t['target']} | {t['value'] or 'n/a'} | {_verdict(t['met'])} | {t.get('ceiling') or ''}"
            f" | {t.get('cpu') or ''} |"
        )
    lines += [
        "",
        "Throughput ratios are medians of per-round ratios (each round runs every variant once, in turn).",
        "The ceiling is the same ratio for the limit (a dedicated connection per thread, no pool at all):",
        "no pool can score more, so a target above its ceiling cannot be met on this machine.",
        "The last column is the same comparison in worker CPU time per request, which a shared machine",
        "disturbs less than throughput: above 1.00x, flask-pgpool spends less CPU per request.",
    ]
    if chart_name:
        lines += ["", f"![chart]({chart_name})"]
    for scenario, title in (("steady", "Steady load"), ("overload", "Overload (4 x maxconn threads)")):
        data = results.get(scenario)
        if not data:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"{data['threads_per_worker']} threads per worker, {data['connections']} wrk connections.",
        ]
        for view, per_variant in data["views"].items():
            lines += [
                "",
                f"`GET /{view}`" + (" (begin, SELECT 1, rollback)" if view == "db" else " (no database)"),
                "",
                "| variant | req/s | vs limit | CPU us/req | CPU vs limit | p50 ms | p99 ms | failed |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for key, row in per_variant.items():
                lines.append(
                    f"| {VARIANTS[key][1]} | {_f(row['rps'])} | {_f(row.get('rps_vs_limit'), '.2f')}x"
                    f" | {_f(row['cpu_us_per_req'])} | {_f(row.get('cpu_vs_limit'), '.2f')}x"
                    f" | {_f(row['p50_ms'], '.2f')} | {_f(row['p99_ms'], '.2f')}"
                    f" | {row['failed']} of {row['requests']} |"
                )
    restart = results.get("restart")
    if restart:
        lines += [
            "",
            "## Database restart",
            "",
            f"{restart['connections']} client connections (a small Python client that time-stamps every"
            f" response); `pg_ctl stop -m fast`, about {restart['down_s']:g} s down, `pg_ctl start -w`."
            ' "Up" is when `pg_ctl start -w` returned (the server accepts connections).'
            " busy: requests keep coming while the server is down; idle: the load pauses before the stop"
            ' and resumes at "up", so every pooled connection is dead when traffic comes back.',
            "",
            "| variant | restart | requests | failed | failed after up | last failure after up"
            " | first success after up |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for key, modes in restart["variants"].items():
            for mode, row in modes.items():
                lines.append(
                    f"| {VARIANTS[key][1]} | {mode} | {row['requests']} | {row['failed']} | {row['failed_after_up']}"
                    f" | {_f(row['last_failure_after_up_s'], '.2f')} s | {_f(row['first_ok_after_up_s'], '.3f')} s |"
                )
    micro = results.get("micro")
    if micro:
        lines += [
            "",
            "## In-process microbenchmark (one thread)",
            "",
            f"{micro['rounds']} interleaved rounds of {micro['n']} operations per case (checkout alone: 20 x that);"
            " median time per operation (wall clock, and this thread's CPU time);"
            " ratio = median of the per-round ratios.",
        ]
        for part, title in (
            ("checkout", "checkout + return alone"),
            ("query", "checkout + begin, SELECT 1, rollback + return"),
            ("flask_request", "one request to /db through the Flask test client"),
        ):
            lines += [
                "",
                title,
                "",
                "| case | wall us/op (median) | wall vs dedicated | CPU us/op (median) | CPU vs dedicated |",
                "|---|---:|---:|---:|---:|",
            ]
            for row in micro[part]:
                ratio = "-" if part == "checkout" else f"{row['ratio']:.3f}x"
                cpu_ratio = "-" if part == "checkout" else f"{row['cpu_ratio']:.3f}x"
                lines.append(
                    f"| {row['case']} | {row['median_us']:.2f} | {ratio} | {row['cpu_us']:.2f} | {cpu_ratio} |"
                )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> bool:
    """Bar charts: steady req/s and CPU per request, overload req/s. False if nothing to draw."""
    steady = results.get("steady", {}).get("views", {}).get("db")
    if not steady:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(steady)
    labels = [VARIANTS[k][1].replace(" (", "\n(").replace("connection per", "connection\nper") for k in keys]
    overload = results.get("overload", {}).get("views", {}).get("db", {})
    panels = [
        ("steady /db: req/s (higher is better)", [steady[k]["rps"] for k in keys]),
        ("steady /db: worker CPU us per request (lower is better)", [steady[k]["cpu_us_per_req"] for k in keys]),
    ]
    if overload:
        panels.append(("overload /db: successful req/s", [overload.get(k, {}).get("rps", 0.0) for k in keys]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    colors = ["#2a7ab9" if k == "pgpool" else ("#888888" if k == LIMIT else "#c9c9c9") for k in keys]
    for ax, (title, values) in zip(axes[:, 0], panels, strict=True):
        bars = ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.0f}", va="center", fontsize=8)
        if title.startswith("overload"):
            for bar, k in zip(bars, keys, strict=True):
                failed = overload.get(k, {}).get("failed", 0)
                if failed:
                    ax.text(
                        0,
                        bar.get_y() + bar.get_height() / 2,
                        f"  {failed} failed",
                        va="center",
                        fontsize=8,
                        color="#b00000",
                    )
    m = results["machine"]
    save_figure(fig, f"flask-pgpool vs alternatives - {m['cpu']}, {m['cores']} cores, PostgreSQL {m['pg_short']}", path)
    return True


def save_figure(fig: Any, title: str, path: Path, dpi: int = 100) -> None:
    """Title the figure, lay it out, write it as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
