"""Flask glue: per-app pools, one connection per app context on ``g``, teardown, atexit, 503."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from flask import Flask, Response, after_this_request, current_app, has_app_context, has_request_context
from flask.ctx import AppContext
from flask.globals import _cv_app
from flask.typing import ResponseReturnValue
from psycopg2.extensions import connection
from werkzeug.exceptions import ServiceUnavailable

from ._config import DEFAULT_BIND, PoolSettings, check_options, read_settings
from ._embedded import embedded_dsn
from ._errors import PgPoolError
from ._pool import ConnectionPool

__all__ = ["PgPool", "get_db"]

_log = logging.getLogger("flask_pgpool")

# Connections checked out in the current app context: {bind: (pool, connection)}.
_G_KEY = "_flask_pgpool_connections"
# Set on g when a streamed response holds those connections until it ends.
_G_HELD = "_flask_pgpool_held_by_response"
_EMBEDDED_DIR = "pgdata"


@dataclass
class _AppState:
    """What one app's PgPool owns."""

    pools: dict[str, ConnectionPool]
    settings: dict[str, PoolSettings]


class PgPool:
    """A PostgreSQL connection pool for Flask apps.

    ``PgPool(app)`` or ``pgpool = PgPool(); pgpool.init_app(app)``. Keyword
    options (``maxconn=20``, ``timeout=5``...) are defaults that the app's
    ``PGPOOL_*`` config overrides. One PgPool may serve several apps; each has
    its own pools.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        """Set up the extension, and ``app`` with it when given.

        ``options`` are the ``PGPOOL_`` settings in lower case without the
        prefix (``maxconn=20``, ``binds={...}``), used as defaults for every
        app; an unknown option raises :class:`TypeError` naming the closest
        one. Values are checked at :meth:`init_app`.
        """
        self._options = check_options(options)
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and check the app's ``PGPOOL_*`` config and create its pools.

        No connection is opened here: the first :func:`get_db` opens one.
        """
        if "pgpool" in app.extensions:
            raise RuntimeError(
                "flask-pgpool is already set up on this app: call init_app() once per app "
                "(app.extensions['pgpool'] is taken)"
            )
        settings = read_settings(app.config, self._options)
        pools = {name: _make_pool(app, name, s) for name, s in settings.items()}
        self._states[app] = _AppState(pools=pools, settings=settings)
        app.extensions["pgpool"] = self
        app.teardown_appcontext(_teardown)
        # The app's own handler, registered before or after us, takes precedence.
        if PgPoolError not in app.error_handler_spec[None][None]:
            app.register_error_handler(PgPoolError, _service_unavailable)
        if psycopg2.OperationalError not in app.error_handler_spec[None][None]:
            app.register_error_handler(psycopg2.OperationalError, _connection_lost)
        # cli depends on this module, not the other way round; imported here only.
        from ._cli import status_command

        app.cli.add_command(status_command)
        _closer.track(pools.values())

    def get_db(self, name: str | None = None) -> connection:
        """The current app context's connection, checked out on first call.

        Later calls in the same context return the same connection; it goes
        back to the pool when the context ends. ``name`` picks a bind of
        ``PGPOOL_BINDS``.
        """
        return self._get_db(_app_context(), name)

    def _get_db(self, ctx: AppContext, name: str | None) -> connection:
        # The context is read once and g's namespace used directly: Flask's
        # proxies cost more than the pool's own checkout on this path.
        bind = name or DEFAULT_BIND
        namespace = ctx.g.__dict__
        checked_out: dict[str, tuple[ConnectionPool, connection]] | None = namespace.get(_G_KEY)
        if checked_out is not None and bind in checked_out:
            pool, conn = checked_out[bind]
            if not conn.closed:
                return conn
            # The view closed it: give the slot back and check out another.
            del checked_out[bind]
            try:
                pool.putconn(conn)
            except Exception:
                # Already given back by the view itself: nothing left to free.
                _log.warning("flask-pgpool: the closed %r connection was not checked out any more", bind)
        pool = self.get_pool(name, ctx.app)
        conn = pool.getconn()
        if checked_out is None:
            checked_out = namespace[_G_KEY] = {}
            if has_request_context():
                # Registered per request, so that requests that never call
                # get_db() pay nothing for it.
                after_this_request(_hold_for_streamed_response)
        checked_out[bind] = (pool, conn)
        return conn

    def get_pool(self, name: str | None = None, app: Flask | None = None) -> ConnectionPool:
        """The pool of ``app`` (default: the current app) for bind ``name``."""
        state = self._state(app)
        bind = name or DEFAULT_BIND
        try:
            return state.pools[bind]
        except KeyError:
            known = ", ".join(repr(b) for b in state.pools)
            raise KeyError(f"no database bind {bind!r}: PGPOOL_BINDS defines {known}") from None

    def get_pools(self, app: Flask | None = None) -> dict[str, ConnectionPool]:
        """All pools of ``app`` (default: the current app), by bind name."""
        return dict(self._state(app).pools)

    def get_stats(self, name: str | None = None, app: Flask | None = None) -> dict[str, int]:
        """The stats of one pool (see :data:`flask_pgpool.STATS_KEYS`); the keys are psycopg_pool's."""
        return self.get_pool(name, app).get_stats()

    def drain(self, app: Flask | None = None, name: str | None = None) -> None:
        """Replace the connections of ``app``'s pools (default: the current app; ``name``: one bind).

        Idle connections are closed now and new ones opened, those in use are
        closed when their request ends; no request fails because of it. New
        connections get the credentials of the moment (a callable ``PGPOOL_DSN``
        or ``PGPOOL_CONNECT_ARGS`` is called for each). Call it from a thread,
        not from a signal handler.
        """
        pools = [self.get_pool(name, app)] if name is not None else list(self._state(app).pools.values())
        for pool in pools:
            pool.drain()

    def close(self, app: Flask | None = None) -> None:
        """Close the pools of ``app`` (default: the current app). Idempotent."""
        for pool in self._state(app).pools.values():
            pool.closeall()

    def _state(self, app: Flask | None) -> _AppState:
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "no app given and no application context: pass app=... or work inside "
                    "'with app.app_context():'"
                )
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._states[app]
        except KeyError:
            raise RuntimeError(
                f"this PgPool is not set up on the app {app.name!r}: call init_app(app) first"
            ) from None

    def __repr__(self) -> str:
        return f"<PgPool apps={len(self._states)}>"


def get_db(name: str | None = None) -> connection:
    """The current request's pooled connection (see :meth:`PgPool.get_db`).

    Works in any blueprint without importing the ``PgPool`` instance.
    """
    ctx = _app_context()
    ext = ctx.app.extensions.get("pgpool")
    if not isinstance(ext, PgPool):
        raise RuntimeError(
            "flask-pgpool is not set up on this app: create PgPool(app) or call pgpool.init_app(app) "
            "in the app factory"
        )
    return ext._get_db(ctx, name)


def _app_context() -> AppContext:
    ctx = _cv_app.get(None)
    if ctx is None:
        raise RuntimeError(
            "get_db() needs an application context: call it in a request, a CLI command, "
            "or inside 'with app.app_context():'"
        )
    return ctx


def _make_pool(app: Flask, name: str, settings: PoolSettings) -> ConnectionPool:
    dsn: Any = settings.dsn
    if dsn is None:
        # Embedded: started on the first checkout, so that `flask routes` or a
        # gunicorn --preload master start nothing; a missing extra fails here.
        dsn = embedded_dsn(Path(app.instance_path) / _EMBEDDED_DIR)
    return ConnectionPool(
        settings.minconn,
        settings.maxconn,
        dsn,
        name=name,
        timeout=settings.timeout,
        max_waiting=settings.max_waiting,
        max_idle=settings.max_idle,
        max_lifetime=settings.max_lifetime,
        health_check=settings.health_check,
        ping_after=settings.ping_after,
        leak_timeout=settings.leak_timeout,
        connect_timeout=settings.connect_timeout,
        network_timeout=settings.network_timeout,
        statement_timeout=settings.statement_timeout,
        read_only=settings.read_only,
        configure=settings.configure,
        connect_args=settings.connect_args,
        reset=settings.reset,
        label=_setting_label(app, name),
    )


def _setting_label(app: Flask, bind: str) -> Callable[[str], str]:
    """How the pool names its options in messages: by the config key to change."""
    if bind != DEFAULT_BIND:
        return lambda option: f"PGPOOL_BINDS[{bind!r}][{option!r}]"
    dsn_key = "PGPOOL_DSN"
    if not str(app.config.get("PGPOOL_DSN") or "").strip() and os.environ.get("DATABASE_URL"):
        dsn_key = "the DATABASE_URL environment variable"
    return lambda option: dsn_key if option == "dsn" else f"PGPOOL_{option.upper()}"


def _teardown(exc: BaseException | None) -> None:
    """Give back what this app context checked out. Never raises.

    ``exc`` is not looked at: it is None after ``abort()`` or a handled error,
    so it cannot decide anything. Uncommitted work is always rolled back.
    """
    ctx = _cv_app.get(None)
    if ctx is None:
        return
    namespace = ctx.g.__dict__
    if namespace.get(_G_HELD):
        return  # a streamed response gives them back when it ends
    _give_back(namespace.pop(_G_KEY, None))


def _give_back(checked_out: dict[str, tuple[ConnectionPool, connection]] | None) -> None:
    """Return every connection of ``checked_out`` to its pool, and empty it. Never raises."""
    if not checked_out:
        return
    items = list(checked_out.items())
    checked_out.clear()
    for bind, (pool, conn) in items:
        try:
            pool.putconn(conn)
        except Exception:
            # A raising teardown would stop Flask < 3.2 from running the others.
            _log.exception("flask-pgpool: could not return the %r connection", bind)


def _hold_for_streamed_response(response: Response) -> Response:
    """Keep the request's connections until a streamed response has been sent.

    Flask 3.1.2+ ends the app context when the view returns, before the body
    is streamed; giving the connection back then would roll back the view's
    work and let another request use it while the stream still does.
    """
    ctx = _cv_app.get(None)
    if ctx is None:
        return response
    namespace = ctx.g.__dict__
    checked_out = namespace.get(_G_KEY)
    # Only a generator body can run view code after the view returned; other
    # streamed bodies (error pages, files) need no connection.
    if checked_out and isinstance(response.response, types.GeneratorType):
        namespace[_G_HELD] = True
        response.response = _ReleaseWhenSent(response.response, checked_out)
    return response


class _ReleaseWhenSent:
    """A response body that gives the connections back once it is sent or closed.

    The WSGI server closes the body even when the client hangs up, and the
    test client exhausts it, so one of the two always happens.
    """

    def __init__(self, body: Iterable[Any], checked_out: dict[str, tuple[ConnectionPool, connection]]) -> None:
        self._body = body
        self._checked_out = checked_out

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._body
        finally:
            self.close()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _give_back(self._checked_out)


def _service_unavailable(error: PgPoolError) -> ResponseReturnValue:
    """A pool that cannot serve answers 503 with Retry-After, not a 500 or a hang."""
    _log.warning("flask-pgpool: answering 503: %s", error)
    return _unavailable()


def _connection_lost(error: psycopg2.OperationalError) -> ResponseReturnValue:
    """A connection that broke during the request (the network or the server went away) answers 503.

    Any other OperationalError (a cancelled statement, a deadlock) goes on to
    the app's own handlers, or becomes a 500, as if this handler did not exist.
    """
    ctx = _cv_app.get(None)
    checked_out = (ctx.g.__dict__.get(_G_KEY) if ctx is not None else None) or {}
    pooled = [conn for _, conn in checked_out.values()]
    cursor = getattr(error, "cursor", None)
    failed = [cursor.connection] if cursor is not None else pooled
    # closed == 2: psycopg2 found the connection broken (closed by the view is 1).
    if not any(conn.closed == 2 and any(conn is p for p in pooled) for conn in failed):
        return _pass_on(error)
    message = str(error).strip()
    for pool, _ in checked_out.values():
        message = pool.redact(message)
    _log.warning("flask-pgpool: answering 503: the connection to the database was lost: %s", message)
    return _unavailable()


def _pass_on(error: Exception) -> ResponseReturnValue:
    """Answer ``error`` the way Flask would without :func:`_connection_lost`.

    Flask tries blueprint handlers before app handlers, so only the app's
    handlers for the error's other classes are left to try.
    """
    handlers = current_app.error_handler_spec[None][None]
    for cls in type(error).__mro__:
        handler = handlers.get(cls)
        if handler is not None and handler is not _connection_lost:
            return current_app.ensure_sync(handler)(error)  # type: ignore[no-any-return]
    raise error


def _unavailable() -> ResponseReturnValue:
    """503 with the app's Retry-After, through the app's 503 handler if it has one."""
    state = current_app.extensions["pgpool"]._state(None)
    retry_after = state.settings[DEFAULT_BIND].retry_after
    unavailable = ServiceUnavailable(
        description="The database is busy or unreachable. Please try again shortly.",
        retry_after=retry_after or None,
    )
    # Goes through the app's 503 handler if it has one.
    response = current_app.handle_http_exception(unavailable)
    return response


class _PoolCloser:
    """Closes the pools at interpreter exit, once, without raising.

    gunicorn's --preload workers run the master's atexit handlers too; that is
    safe because a pool in a forked child holds only the child's own
    connections (see ConnectionPool), never the parent's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
        self._registered = False

    def track(self, pools: Any) -> None:
        with self._lock:
            self._pools.update(pools)
            if not self._registered:
                atexit.register(self.close_all)
                self._registered = True

    def close_all(self) -> None:
        with self._lock:
            pools = list(self._pools)
            self._pools.clear()
        for pool in pools:
            try:
                pool.closeall()
            except Exception:
                _log.exception("flask-pgpool: could not close pool %r at exit", pool.name)


_closer = _PoolCloser()
