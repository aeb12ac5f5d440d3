"""A Flask app under a bounded load of reads and writes, and what every request got.

The failover tests and ``python -m benchmarks.failover`` drive it the same way::

    app = load_app(dsn, "writes", app_name)        # PgPool on dsn; /read and /write views
    with Load(app, threads=6) as load:              # clients in threads, through the test client
        load.wait_for(lambda o: ..., timeout=10, what="...")
        ...                                         # fence, promote, rotate...
    figures = Figures.of(load.outcomes(), ...)      # what the requests saw around a promotion

Each client makes one request after the other with a short pause, so the load
is bounded. A request never hangs: checkouts give up after PGPOOL_TIMEOUT and
connects after PGPOOL_CONNECT_TIMEOUT; :meth:`Load.stop` fails if a client does
not finish in time.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, got_request_exception

from flask_pgpool import PgPool, get_db

__all__ = ["Figures", "Load", "LoadError", "Outcome", "create_table", "load_app", "successes_since"]


class LoadError(AssertionError):
    """The load did not behave: a client hung, or an awaited event did not come."""


@dataclass(frozen=True)
class Outcome:
    """One request: what it was, when it ran (time.monotonic()), and what it got."""

    kind: str  # "read" or "write"
    token: str
    started: float
    ended: float
    status: int
    port: int | None  # the port of the server that answered, when it succeeded
    sqlstate: str | None  # the SQLSTATE of the database error that failed it, if any

    @property
    def ok(self) -> bool:
        return self.status == 200


def create_table(cursor: Any, table: str) -> None:
    cursor.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, token text NOT NULL UNIQUE)")


def load_app(dsn: Any, table: str, app_name: str, **config: Any) -> Flask:
    """An app with PgPool on ``dsn`` (a string or a callable) and two views.

    ``POST /write/<token>`` inserts the token and commits; ``GET /read`` runs a
    query. Both answer with the port of the server that ran it
    (``inet_server_port()``). A database error is not handled: the request
    fails with a 500, as in most apps. TESTING is off.
    """
    app = Flask(f"load_{app_name}")
    app.config.update(
        TESTING=False,
        PGPOOL_DSN=dsn,
        PGPOOL_CONNECT_ARGS={"application_name": app_name},
        PGPOOL_MAXCONN=4,
        PGPOOL_TIMEOUT=5.0,
        PGPOOL_CONNECT_TIMEOUT=2,
    )
    app.config.update(config)
    PgPool(app)

    @app.post("/write/<token>")
    def write(token: str) -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (token) VALUES (%s) RETURNING inet_server_port()", (token,))
            port = _first(cur)
        db.commit()
        return str(port)

    @app.get("/read")
    def read() -> str:
        with get_db().cursor() as cur:
            cur.execute(f"SELECT inet_server_port(), (SELECT count(*) FROM {table})")
            return str(_first(cur))

    return app


def _first(cur: Any) -> Any:
    row = cur.fetchone()
    assert row is not None
    return row[0]


class Load:
    """``threads`` clients of ``app``, each making requests one after another until stopped.

    ``writes`` is the share of writes among the requests; ``pause`` the seconds
    a client waits between two requests.
    """

    def __init__(self, app: Flask, *, threads: int = 6, writes: float = 0.5, pause: float = 0.002) -> None:
        self._app = app
        self._writes = writes
        self._pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._errors: list[BaseException] = []
        self._tokens = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]  # tokens unique across loads on one table
        self._sqlstate = threading.local()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(threads)]
        got_request_exception.connect(self._record_error, app)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> list[Outcome]:
        """Stop the clients; fail if one is still in a request after ``timeout`` s."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        got_request_exception.disconnect(self._record_error, self._app)
        if any(thread.is_alive() for thread in self._threads):
            raise LoadError(f"a client was still in a request {timeout} s after the load was stopped")
        if self._errors:
            raise self._errors[0]
        return self.outcomes()

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def wait_for(self, predicate: Callable[[list[Outcome]], bool], *, timeout: float, what: str) -> None:
        """Wait until ``predicate(outcomes so far)`` holds; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self.outcomes()):
            if self._errors:
                raise self._errors[0]
            if time.monotonic() > deadline:
                raise LoadError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    def _record_error(self, sender: Flask, exception: BaseException, **extra: Any) -> None:
        # The test client runs the app in the client's thread.
        self._sqlstate.value = getattr(exception, "pgcode", None)

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        try:
            with self._app.test_client() as client:
                while not self._stop.is_set():
                    kind = "write" if rng.random() < self._writes else "read"
                    token = f"{self._prefix}-{number}-{next(self._tokens)}"
                    self._sqlstate.value = None
                    started = time.monotonic()
                    response = client.post(f"/write/{token}") if kind == "write" else client.get("/read")
                    ended = time.monotonic()
                    body = response.get_data(as_text=True)
                    outcome = Outcome(
                        kind=kind,
                        token=token,
                        started=started,
                        ended=ended,
                        status=response.status_code,
                        port=int(body) if response.status_code == 200 else None,
                        sqlstate=self._sqlstate.value,
                    )
                    with self._lock:
                        self._outcomes.append(outcome)
                    self._stop.wait(self._pause)
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)


def successes_since(moment: float, kind: str | None = None) -> Callable[[list[Outcome]], int]:
    """A counter of the successful requests (of ``kind``) that started after ``moment``."""

    def count(outcomes: list[Outcome]) -> int:
        return sum(1 for o in outcomes if o.ok and o.started >= moment and (kind is None or o.kind == kind))

    return count


@dataclass(frozen=True)
class Figures:
    """What the requests saw around a promotion (times in seconds, counts of requests)."""

    requests: int
    failed_before: int  # failed, started before the promotion finished (allowed)
    failed_after: int  # failed, started after the promotion finished
    refused_writes: int  # writes a read-only server refused (SQLSTATE 25006)
    refused_after: int  # of those, started after the promotion finished
    old_server_after: int  # requests the old primary answered, started after the promotion finished
    lost_writes: int  # acknowledged writes missing on the new primary
    promote_seconds: float  # the promotion itself (pg_ctl promote)
    first_write_after: float | None  # from the start of the promotion to the first acknowledged write

    @classmethod
    def of(
        cls,
        outcomes: Iterable[Outcome],
        *,
        promote_started: float,
        promoted: float,
        old_port: int,
        committed: set[str],
    ) -> Figures:
        """``committed``: the tokens found on the new primary at the end."""
        outcomes = list(outcomes)
        after = [o for o in outcomes if o.started >= promoted]
        before = [o for o in outcomes if o.started < promoted]
        refused = [o for o in outcomes if o.sqlstate == "25006"]
        acknowledged = [o for o in outcomes if o.kind == "write" and o.ok]
        first = min((o.ended for o in acknowledged if o.ended >= promote_started and o.port != old_port), default=None)
        return cls(
            requests=len(outcomes),
            failed_before=sum(1 for o in before if not o.ok),
            failed_after=sum(1 for o in after if not o.ok),
            refused_writes=len(refused),
            refused_after=sum(1 for o in refused if o.started >= promoted),
            old_server_after=sum(1 for o in after if o.port == old_port),
            lost_writes=sum(1 for o in acknowledged if o.token not in committed),
            promote_seconds=promoted - promote_started,
            first_write_after=None if first is None else first - promote_started,
        )
