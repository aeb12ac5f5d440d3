"""The ``.. pgpool-benchmarks::`` directive: the summary table of the committed benchmark run.

The numbers are read from ``benchmarks/results/results.json`` (what
``python -m benchmarks`` wrote) when the docs are built, so the page shows the
committed run and nothing else. :func:`summary` is also what the test suite
compares the README's table with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphinx.application import Sphinx

__all__ = ["RESULTS", "load", "setup", "summary"]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "results.json"


def load(path: Path = RESULTS) -> dict[str, Any]:
    """The results of the committed run."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _labels() -> dict[str, str]:
    from benchmarks.apps import VARIANTS

    return {key: label for key, (_, label) in VARIANTS.items()}


def summary(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant, in the harness's order, formatted as the tables show them."""
    labels = _labels()
    steady = results["steady"]["views"]["db"]
    overload = results["overload"]["views"]["db"]
    restart = results["restart"]["variants"]
    table = []
    for key, label in labels.items():
        if key not in steady:
            continue
        row = steady[key]
        over = overload[key]
        after = restart.get(key, {})
        table.append(
            {
                "variant": label,
                "steady_rps": f"{row['rps']:.0f}",
                "vs_limit": f"{row['rps_vs_limit']:.2f}x",
                "cpu_us": f"{row['cpu_us_per_req']:.0f}",
                "overload_rps": f"{over['rps']:.0f}",
                "overload_failed": f"{over['failed']} of {over['requests']}",
                "restart_failed": " / ".join(str(after[k]["failed_after_up"]) for k in ("busy", "idle") if k in after),
            }
        )
    return table


_HEADERS = {
    "variant": "way of getting the connection",
    "steady_rps": "steady req/s",
    "vs_limit": "vs no pool",
    "cpu_us": "CPU µs per request",
    "overload_rps": "overload req/s",
    "overload_failed": "overload: failed requests",
    "restart_failed": "failed once the server is back (busy / idle restart)",
}


def _machine(results: dict[str, Any]) -> str:
    m, p = results["machine"], results["plan"]
    return (
        f"Measured on {m['cpu']} with {m['cores']} vCPUs shared with other jobs, Python {m['python']}, "
        f"PostgreSQL {m['pg_short']}, gunicorn {m['gunicorn']} ({p['workers']} gthread workers, pools of "
        f"{p['maxconn']} per worker), wrk {m['wrk'].rsplit('/', 1)[-1]}; medians of {p['rounds']} interleaved "
        f"rounds of {p['duration']:g} s."
    )


def _table(results: dict[str, Any]) -> list[str]:
    rows = summary(results)
    lines = [_machine(results), "", ".. list-table::", "   :header-rows: 1", ""]
    for row in [_HEADERS, *rows]:
        for j, column in enumerate(_HEADERS):
            lines.append(f"   {'* -' if j == 0 else '  -'} {row[column]}")
    return lines


def setup(app: Sphinx) -> dict[str, Any]:
    # Sphinx is imported here only: the tests use the functions above without it.
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class BenchmarksDirective(SphinxDirective):
        """``.. pgpool-benchmarks::`` renders the summary of ``benchmarks/results/results.json``."""

        has_content = False

        def run(self) -> list[nodes.Node]:
            self.env.note_dependency(str(RESULTS))
            source = self.get_source_info()[0] or "generated"
            container = nodes.container()
            self.state.nested_parse(StringList(_table(load()), source=source), self.content_offset, container)
            return [container]

    app.add_directive("pgpool-benchmarks", BenchmarksDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
