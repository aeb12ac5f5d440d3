"""What a benchmark ran on: CPU, cores, Python, PostgreSQL, and how loaded the machine was."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["describe"]


def describe(db_version: str) -> dict[str, Any]:
    """The machine and software, with the load average when called."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": db_version,
        "pg_short": db_version.split()[1] if db_version.startswith("PostgreSQL") else db_version,
        "os": platform.platform(),
        "load_at_start": load,
        "note": f"load average at start {load[0]:.1f} (the machine may be shared: expect noise)",
    }
