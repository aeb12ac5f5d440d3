"""When the process cannot start a thread, the pool loses nothing and recovers."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from support.poolkit import PoolFactory, query_one, wait_until

from flask_pgpool import PoolTimeout


@pytest.fixture
def no_new_pool_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """While switch["on"], starting any of the pool's threads fails as it does when the process is out of threads."""
    switch = {"on": True}
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if switch["on"] and self.name.startswith("flask-pgpool-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return switch


def test_a_connect_thread_that_cannot_start_leaks_nothing(
    make_pool: PoolFactory, no_new_pool_threads: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    pool = make_pool(0, 2, timeout=1)
    with pytest.raises(PoolTimeout):
        pool.getconn()
    stats = pool.get_stats()
    assert stats["pool_size"] == 0, "a reservation for a thread that never ran was kept"
    assert stats["connections_errors"] >= 1
    assert "can't start new thread" in caplog.text
    # Threads can start again: the pool reconnects.
    no_new_pool_threads["on"] = False
    conn = pool.getconn(timeout=10)
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 1


def test_a_housekeeper_that_cannot_start_is_started_later(
    make_pool: PoolFactory, no_new_pool_threads: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    pool = make_pool(2, 4, timeout=10)
    real_start = threading.Thread.start

    # Connect threads may start; the housekeeper may not.
    def start(self: Any) -> None:
        if self.name == "flask-pgpool-default":
            raise RuntimeError("can't start new thread")
        real_start(self)

    no_new_pool_threads["on"] = False
    threading.Thread.start = start  # type: ignore[method-assign]
    try:
        pool.putconn(pool.getconn())
        assert "housekeeping thread" in caplog.text
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]
    # The next checkout starts it, and it brings the pool up to minconn.
    pool.putconn(pool.getconn())
    wait_until(lambda: pool.get_stats()["pool_size"] >= 2, timeout=10, what="minconn connections")
