"""eventlet: refused when the app is set up, with a message that says what to use instead.

The script runs in a fresh interpreter, so that eventlet patches nothing in
pytest's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Looked up, not imported: eventlet stays out of pytest's own interpreter.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("eventlet") is None, reason="eventlet is not installed (pip install -e '.[servers]')"
    ),
]

SCRIPT = """
    import eventlet

    eventlet.monkey_patch()  # first thing, as eventlet (and gunicorn -k eventlet) does

    import json, sys
    from flask import Flask
    from flask_pgpool import PgPool

    app = Flask(__name__)
    app.config["PGPOOL_DSN"] = sys.argv[1]
    try:
        PgPool(app)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"error": None}))
"""


def test_an_eventlet_process_is_refused_at_init_app(pg_server_dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), pg_server_dsn],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] == "EventletNotSupported"
    # It says what to do instead.
    assert "gevent" in result["message"] and "gthread" in result["message"]
