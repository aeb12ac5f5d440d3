"""Prometheus metrics for the pools (``pip install "flask-pgpool[prometheus]"``).

``PgPoolMetrics(app)`` exports every pool of the app, labelled by app and pool
(bind) name. Two modes, picked from prometheus_client's own:

* one process (the default): a collector reads ``get_stats()`` at scrape time,
  so the numbers are exact and cost nothing between scrapes;
* gunicorn's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before
  prometheus_client is imported): each process writes its numbers to the
  shared directory, on every pool event and every ``sync_interval`` seconds,
  and ``MultiProcessCollector`` adds them up at scrape time. Gauges count live
  processes only (``livesum``); call ``multiprocess.mark_process_dead(pid)``
  from gunicorn's ``child_exit`` hook.

The wait-time histogram and the timeout / rejection counters are fed by the
pool's observer hook (:meth:`ConnectionPool.add_observer`) in both modes.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._pool import ConnectionPool

__all__ = ["WAIT_BUCKETS", "PgPoolMetrics"]

PREFIX = "flask_pgpool"
#: Buckets of the checkout wait histogram, in seconds.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
_LABELS = ("app", "pool")

# Gauges: (name, help). Values come from get_stats().
_GAUGES = {
    "connections_max": "Connections the pool may open (maxconn), per process; summed over live processes",
    "connections_min": "Connections the pool keeps open once used (minconn)",
    "requests_waiting": "Checkouts waiting for a connection now",
}
_CONNECTIONS_HELP = "Open connections, by state: idle (in the pool) or in_use (checked out)"
# Counters: stats key -> (name without _total, help).
_COUNTERS = {
    "requests_num": ("checkouts", "Checkouts asked for, including the ones that failed"),
    "connections_num": ("connection_attempts", "Attempts to open a connection"),
    "connections_errors": ("connection_errors", "Attempts to open a connection that failed"),
    "connections_lost": ("connections_lost", "Connections found dead (closed by the server) and replaced"),
    "returns_bad": ("returns_bad", "Connections given back broken, and closed"),
}


def _multiprocess_active() -> bool:
    """True when prometheus_client writes values to PROMETHEUS_MULTIPROC_DIR."""
    return values.ValueClass is not values.MutexValue


@dataclass(eq=False)
class _Tracked:
    pool: weakref.ReferenceType[ConnectionPool]
    app: str
    name: str
    # Multiprocess mode: the process that last synced, and the counters it had sent.
    pid: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PgPoolMetrics:
    """Export the pools of Flask apps (or bare :class:`ConnectionPool` objects) to Prometheus.

    ``PgPoolMetrics(app)`` or ``metrics = PgPoolMetrics(); metrics.init_app(app)``,
    after ``PgPool`` is set up on the app. ``registry`` is where the
    single-process collector is registered (default: prometheus_client's);
    ``multiprocess`` is detected from prometheus_client when None.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        multiprocess: bool | None = None,
        sync_interval: float = 1.0,
        buckets: Iterable[float] = WAIT_BUCKETS,
    ) -> None:
        """Create the metrics, and export the pools of ``app`` when given.

        ``registry``: where the single-process collector is registered
        (``None``: nowhere). ``multiprocess``: force the mode; ``True``
        without ``PROMETHEUS_MULTIPROC_DIR`` raises :class:`RuntimeError`.
        ``sync_interval``: seconds between writes in multiprocess mode.
        ``buckets``: of the checkout wait histogram, in seconds.
        """
        active = _multiprocess_active()
        if multiprocess is None:
            multiprocess = active
        if multiprocess and not active:
            raise RuntimeError(
                "multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client is "
                "first imported (set it in the environment of gunicorn)"
            )
        self.multiprocess = multiprocess
        self.sync_interval = sync_interval
        self._tracked: list[_Tracked] = []
        self._lock = threading.Lock()
        self._thread_pid = 0
        # Fed by the pool observers in both modes; registered nowhere: in one
        # process the collector below reports them, in multiprocess mode the
        # MultiProcessCollector reads their files.
        self._wait = Histogram(
            f"{PREFIX}_checkout_wait_seconds",
            "Time a successful checkout waited for a connection",
            _LABELS,
            buckets=tuple(buckets),
            registry=None,
        )
        self._timeouts = Counter(
            f"{PREFIX}_checkout_timeouts", "Checkouts that gave up waiting (PoolTimeout)", _LABELS, registry=None
        )
        self._rejected = Counter(
            f"{PREFIX}_checkout_rejected",
            "Checkouts refused at once because max_waiting checkouts already waited (TooManyRequests)",
            _LABELS,
            registry=None,
        )
        if multiprocess:
            self._live = _LiveMetrics()
        elif registry is not None:
            registry.register(_StatsCollector(self))
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Export every pool (bind) of ``app``; PgPool must be set up on it first."""
        ext = app.extensions.get("pgpool")
        if ext is None:
            raise RuntimeError("set up PgPool on the app before PgPoolMetrics (PgPool(app), then PgPoolMetrics(app))")
        for pool in ext.get_pools(app).values():
            self.track(pool, app.name)

    def track(self, pool: ConnectionPool, app: str = "") -> None:
        """Export one pool, labelled ``app`` and ``pool.name``."""
        tracked = _Tracked(pool=weakref.ref(pool), app=app, name=pool.name)
        with self._lock:
            self._tracked.append(tracked)
        pool.add_observer(lambda event, seconds: self._observe(tracked, event, seconds))

    def sync(self) -> None:
        """Multiprocess mode: write this process's numbers now (done on every pool event, and periodically)."""
        if self.multiprocess:
            for tracked in self._pools():
                if tracked.pid == os.getpid():
                    self._sync(tracked)

    # -- internals ---------------------------------------------------------

    def _pools(self) -> list[_Tracked]:
        with self._lock:
            self._tracked = [t for t in self._tracked if t.pool() is not None]
            return list(self._tracked)

    def _observe(self, tracked: _Tracked, event: str, seconds: float) -> None:
        labels = (tracked.app, tracked.name)
        if event == "checkout":
            self._wait.labels(*labels).observe(seconds)
        elif event == "timeout":
            self._timeouts.labels(*labels).inc()
        elif event == "rejected":
            self._rejected.labels(*labels).inc()
        if self.multiprocess:
            # A process reports a pool once it has used it: a gunicorn --preload
            # master that never queries must not add its maxconn to the sum.
            self._sync(tracked)
            self._start_syncing()

    def _sync(self, tracked: _Tracked) -> None:
        pool = tracked.pool()
        if pool is None:
            return
        stats = pool.get_stats()
        labels = (tracked.app, tracked.name)
        live = self._live
        with tracked.lock:
            if tracked.pid != os.getpid():  # a new process: its pool started from zero
                tracked.pid, tracked.sent = os.getpid(), {}
            for state, value in _connections(stats).items():
                live.connections.labels(*labels, state).set(value)
            live.gauges["connections_max"].labels(*labels).set(stats["pool_max"])
            live.gauges["connections_min"].labels(*labels).set(stats["pool_min"])
            live.gauges["requests_waiting"].labels(*labels).set(stats["requests_waiting"])
            for key in _COUNTERS:
                delta = stats[key] - tracked.sent.get(key, 0)
                if delta < 0:  # pop_stats() reset the pool's counters
                    delta = stats[key]
                if delta:
                    live.counters[key].labels(*labels).inc(delta)
                tracked.sent[key] = stats[key]

    def _start_syncing(self) -> None:
        """One daemon thread per process refreshes the gauges between events (waiting checkouts...)."""
        if self._thread_pid == os.getpid():
            return
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        threading.Thread(
            target=_sync_forever, args=(weakref.ref(self), os.getpid()), name="flask-pgpool-metrics", daemon=True
        ).start()


def _sync_forever(ref: weakref.ReferenceType[PgPoolMetrics], pid: int) -> None:
    while True:
        metrics = ref()
        if metrics is None or os.getpid() != pid:
            return
        interval = metrics.sync_interval
        metrics.sync()
        del metrics
        time.sleep(interval)


def _connections(stats: dict[str, int]) -> dict[str, int]:
    return {"idle": stats["pool_available"], "in_use": stats["pool_size"] - stats["pool_available"]}


class _LiveMetrics:
    """Multiprocess mode: gauges and counters written by each process."""

    def __init__(self) -> None:
        self.connections = Gauge(
            f"{PREFIX}_connections", _CONNECTIONS_HELP, (*_LABELS, "state"), multiprocess_mode="livesum", registry=None
        )
        self.gauges = {
            name: Gauge(f"{PREFIX}_{name}", help, _LABELS, multiprocess_mode="livesum", registry=None)
            for name, help in _GAUGES.items()
        }
        self.counters = {
            key: Counter(f"{PREFIX}_{name}", help, _LABELS, registry=None) for key, (name, help) in _COUNTERS.items()
        }


class _StatsCollector(Collector):
    """One process: read every tracked pool's stats at scrape time."""

    def __init__(self, metrics: PgPoolMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not read the pools.
        yield from self._families(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(with_samples=True)

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        metrics = self._metrics
        connections = GaugeMetricFamily(f"{PREFIX}_connections", _CONNECTIONS_HELP, labels=(*_LABELS, "state"))
        gauges = {name: GaugeMetricFamily(f"{PREFIX}_{name}", h, labels=_LABELS) for name, h in _GAUGES.items()}
        counters = {
            key: CounterMetricFamily(f"{PREFIX}_{name}", h, labels=_LABELS) for key, (name, h) in _COUNTERS.items()
        }
        for tracked in metrics._pools() if with_samples else ():
            pool = tracked.pool()
            if pool is None or pool.closed:
                continue
            stats: dict[str, Any] = pool.get_stats()
            labels = [tracked.app, tracked.name]
            for state, value in _connections(stats).items():
                connections.add_metric([*labels, state], value)
            gauges["connections_max"].add_metric(labels, stats["pool_max"])
            gauges["connections_min"].add_metric(labels, stats["pool_min"])
            gauges["requests_waiting"].add_metric(labels, stats["requests_waiting"])
            for key, family in counters.items():
                family.add_metric(labels, stats[key])
        yield connections
        yield from gauges.values()
        yield from counters.values()
        for metric in (metrics._wait, metrics._timeouts, metrics._rejected):
            yield from (metric.collect() if with_samples else metric.describe())
