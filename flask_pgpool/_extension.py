"""Flask glue: per-app pools, one lease of connections per request, teardown, atexit, 503."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg2
from flask import Flask, Response
from flask.ctx import AppContext
from flask.typing import ResponseReturnValue
from psycopg2.extensions import connection

from . import _flask_compat as compat
from . import _fork, _maintenance
from ._config import DEFAULT_BIND, PoolSettings, check_options, read_settings
from ._embedded import embedded_dsn
from ._errors import PgPoolError
from ._guard import ENDED, LeasingPool, StaleConnectionError, guarded_factory
from ._leases import GiveBack, Lease
from ._pool import ConnectionPool
from ._responses import pass_on, service_unavailable

__all__ = ["PgPool", "get_db"]

_log = logging.getLogger("flask_pgpool")

# Where a request keeps its Lease: in g, or on the request context when the
# request borrows an app context it did not push (pytest-flask; a test's
# ``with app.app_context():`` around the test client, before Flask 3.2).
_LEASE = "_flask_pgpool_lease"
# On a request context: (app context, namespace, scope) where its lease lives,
# decided at its first get_db(). Flask 3.1.2+'s stream_with_context pushes the
# request again inside its own app context, which then looks borrowed.
_SCOPE = "_flask_pgpool_scope"
# The push (see _flask_compat.push_marker) in which flask-pgpool's teardown ran.
_ENDED_AT = "_flask_pgpool_ended_at"
# The app's state lives on the app, not in the PgPool: a PgPool often outlives
# its apps (a module-level PgPool and an app factory), and a pool's configure
# callback may refer to its app.
_STATE = "pgpool.state"
_EMBEDDED_DIR = "pgdata"
# Module globals, so that get_db() reads them without an attribute lookup;
# called with None (see _flask_compat.app_context_or).
_current_app_context = compat.app_context_or
_request_context = compat.request_context_or
_pushed_app_context = compat.pushed_app_context
_after_request_functions = compat.after_request_functions
_Generator = types.GeneratorType


class Lender(Protocol):
    """Lends connections instead of the pools (flask_pgpool.testing.rolled_back)."""

    def lend(self, bind: str) -> connection: ...

    def putconn(self, conn: connection) -> None: ...


@dataclass(eq=False)
class _AppState:
    """What one app's PgPool owns."""

    owner: PgPool
    pools: dict[str, ConnectionPool]
    settings: dict[str, PoolSettings]
    lender: Lender | None = None
    #: Whether _end_borrowing_request is registered (at the first request that borrows).
    ends_borrowing_requests: bool = False
    #: By bind: how a request checks out, and gives back, and whether its
    #: connections are guarded (see _guard). The base class's getconn() and
    #: putconn(): LeasingPool's only serve other callers.
    sources: dict[str, tuple[Callable[[], connection], GiveBack, bool]] = field(init=False)

    def __post_init__(self) -> None:
        self.sources = {
            bind: (
                types.MethodType(ConnectionPool.getconn, pool),
                types.MethodType(ConnectionPool.putconn, pool),
                isinstance(pool, LeasingPool),
            )
            for bind, pool in self.pools.items()
        }

    def pool(self, bind: str) -> ConnectionPool:
        try:
            return self.pools[bind]
        except KeyError:
            known = ", ".join(repr(b) for b in self.pools)
            raise KeyError(f"no database bind {bind!r}: PGPOOL_BINDS defines {known}") from None


class PgPool:
    """A PostgreSQL connection pool for Flask apps.

    ``PgPool(app)`` or ``pgpool = PgPool(); pgpool.init_app(app)``. Keyword
    options (``maxconn=20``, ``timeout=5``...) are defaults that the app's
    ``PGPOOL_*`` config overrides. One PgPool may serve several apps; each has
    its own pools, freed with the app.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        """Set up the extension, and ``app`` with it when given.

        ``options`` are the ``PGPOOL_`` settings in lower case without the
        prefix (``maxconn=20``, ``binds={...}``), used as defaults for every
        app; an unknown option raises :class:`TypeError` naming the closest
        one. Values are checked at :meth:`init_app`.
        """
        self._options = check_options(options)
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
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
        unhooked = _fork.unhooked_fork_warning()
        if unhooked:
            _log.warning("flask-pgpool: %s", unhooked)
        pools = {name: _make_pool(app, name, s) for name, s in settings.items()}
        retry_after = settings[DEFAULT_BIND].retry_after
        app.extensions[_STATE] = _AppState(owner=self, pools=pools, settings=settings)
        app.extensions["pgpool"] = self
        self._apps.add(app)
        # Last, so that the app's own teardown functions, whenever registered,
        # still find the request's connection (to commit, say).
        compat.run_last_at_app_teardown(app, _end_app_context)
        # The app's own handler, registered before or after us, takes precedence.
        if not compat.has_app_error_handler(app, PgPoolError):

            def unavailable(error: PgPoolError) -> ResponseReturnValue:
                return service_unavailable(error, retry_after)

            app.register_error_handler(PgPoolError, unavailable)
        # Not only OperationalError: after a connection broke, ``with conn:``
        # (its rollback) raises InterfaceError("connection already closed")
        # instead, and a broken COPY may raise a bare DatabaseError. Each class
        # the app handles itself is left to it; a handler it has for
        # psycopg2.Error still gets every error that is not a lost connection.
        def lost(error: psycopg2.Error) -> ResponseReturnValue:
            return _connection_lost(error, retry_after, lost)

        for driver_error in (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.DatabaseError):
            if not compat.has_app_error_handler(app, driver_error):
                app.register_error_handler(driver_error, lost)
        # cli depends on this module, not the other way round; imported here only.
        from ._cli import status_command

        app.cli.add_command(status_command)
        _closer.track(pools.values())

    def get_db(self, name: str | None = None) -> connection:
        """The current request's connection, checked out on first call.

        Later calls in the same request (or app context) return the same
        connection; it goes back to the pool when the request ends.
        ``name`` picks a bind of ``PGPOOL_BINDS``.
        """
        self._state(_app_context().app)  # raises unless this PgPool is set up on the current app
        return get_db(name)

    def get_pool(self, name: str | None = None, app: Flask | None = None) -> ConnectionPool:
        """The pool of ``app`` (default: the current app) for bind ``name``."""
        if isinstance(name, Flask):
            # drain(app) and close(app) take the app first; these take the bind first.
            raise TypeError(
                "the first argument is the bind's name: pass the app as app=..., "
                "e.g. get_stats(app=app) or get_pool(app=app)"
            )
        return self._state(app).pool(name or DEFAULT_BIND)

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
            ctx = compat.app_context()
            if ctx is None:
                raise RuntimeError(
                    "no app given and no application context: pass app=... or work inside 'with app.app_context():'"
                )
            app = ctx.app
        state = app.extensions.get(_STATE)
        if not isinstance(state, _AppState) or state.owner is not self:
            raise RuntimeError(f"this PgPool is not set up on the app {app.name!r}: call init_app(app) first")
        return state

    @contextlib.contextmanager
    def _lending(self, app: Flask, lender: Lender) -> Iterator[None]:
        """Within the block, get_db() of ``app`` takes its connections from ``lender``."""
        state = self._state(app)
        if state.lender is not None:
            raise RuntimeError("rolled_back(app) is already active for this app: it cannot be nested")
        current = _current_lease(app)
        if current is not None:
            # Checked out from the pool before the block (pytest-flask's
            # context for the test): give them back, and use the lender's.
            current.end()
        state.lender = lender
        try:
            yield
        finally:
            state.lender = None
            current = _current_lease(app)
            if current is not None:
                for bind, (give_back, _conn) in list(current.conns.items()):
                    if getattr(give_back, "__self__", None) is lender:
                        del current.conns[bind]

    def __repr__(self) -> str:
        return f"<PgPool apps={len(self._apps)}>"


def get_db(name: str | None = None) -> connection:
    """The current request's pooled connection (see :meth:`PgPool.get_db`).

    Works in any blueprint without importing the ``PgPool`` instance.
    """
    # The same as _app_context(), written out: one call less on every get_db().
    ctx = _current_app_context(None)
    if ctx is None:
        ctx = _app_context()  # raises, saying where get_db() works
    # The app's state rather than app.extensions["pgpool"]: _check_out() needs it, and init_app() sets both.
    try:
        state: _AppState = ctx.app.extensions[_STATE]
    except KeyError:
        raise RuntimeError(
            "flask-pgpool is not set up on this app: create PgPool(app) or call pgpool.init_app(app) in the app factory"
        ) from None
    bind = name or DEFAULT_BIND
    request = _request_context(None)
    if request is None or _pushed_app_context(request) is ctx:
        namespace, scope = ctx.g.__dict__, ctx  # _request_scope()'s answer for a request that borrows nothing
    else:
        namespace, scope = _request_scope(ctx, request)
    lease: Lease | None = namespace.get(_LEASE)
    if lease is not None:
        entry = lease.conns.get(bind)
        if entry is not None and not entry[1].closed:
            return entry[1]
    return _check_out(ctx, state, namespace, scope, request, lease, bind)


def _check_out(
    ctx: AppContext,
    state: _AppState,
    namespace: dict[str, Any],
    scope: Any,
    request: Any,
    lease: Lease | None,
    bind: str,
) -> connection:
    """Check out ``bind``'s connection for the request (or app context) whose lease lives in ``namespace``.

    Every case: the first checkout, another bind, a connection the view
    closed, a lender (``rolled_back()``), and get_db() after the teardown.
    """
    source = state.sources.get(bind)
    if source is None:
        state.pool(bind)  # raises, naming the binds there are
        raise KeyError(bind)
    take, give_back, guarded = source
    if lease is not None or _ENDED_AT in namespace:
        # Not the first checkout of a fresh request (or app context).
        if lease is None or lease.ctx is ENDED:
            ended_at = namespace.get(_ENDED_AT)
            if ended_at is not None and ended_at is compat.push_marker(scope):
                if scope is not ctx:
                    # A request that borrows its app context, after its own
                    # teardown (a request_tearing_down receiver): in production
                    # this still runs in the request's app context, so it gets
                    # the app context's connection.
                    return _get_db_in_app_context(ctx, state, bind)
                raise RuntimeError(
                    "get_db() was called after flask-pgpool gave this app context's connections back "
                    "(from an appcontext_tearing_down receiver, or later): use a teardown_appcontext "
                    "function instead, which runs while the request's connection is still there"
                )
            if lease is not None and namespace.get(_LEASE) is lease:
                del namespace[_LEASE]  # ended (its streamed body was sent): the next lease replaces it
            lease = None
        else:
            closed = lease.conns.pop(bind, None)
            if closed is not None:
                # The view closed it: give the slot back and check out another.
                try:
                    closed[0](closed[1])
                except Exception:
                    # Already given back by the view itself: nothing left to free.
                    _log.warning("flask-pgpool: the closed %r connection was not checked out any more", bind)
    lender = state.lender
    if lender is None:
        conn = take()
    else:
        conn, give_back, guarded = lender.lend(bind), lender.putconn, False
    if lease is not None:
        return lease.add(bind, give_back, conn, guarded)
    # Made once the connection is there: a checkout that fails leaves nothing to end.
    made = Lease(ctx, scope, bind, give_back, conn, guarded)
    # setdefault, not an assignment: threads that share this app context
    # (contextvars.copy_context()) may make their first get_db() at once, and
    # one lease must hold every connection they check out.
    lease = namespace.setdefault(_LEASE, made)
    if lease is made:
        if request is not None:
            # Registered per request, so that requests that never call get_db() pay nothing for it.
            _after_request_functions(request).append(_hold_if_streamed)
        return conn
    made.end()  # another thread's lease came first: this connection goes back
    entry = lease.conns.get(bind)
    if entry is not None and not entry[1].closed:
        return entry[1]
    return _check_out(ctx, state, namespace, scope, request, lease, bind)


def _get_db_in_app_context(ctx: AppContext, state: _AppState, bind: str) -> connection:
    namespace = ctx.g.__dict__
    lease: Lease | None = namespace.get(_LEASE)
    entry = lease.conns.get(bind) if lease is not None else None
    if entry is not None and not entry[1].closed:
        return entry[1]
    return _check_out(ctx, state, namespace, ctx, _request_context(None), lease, bind)


def _app_context() -> AppContext:
    ctx = compat.app_context()
    if ctx is None:
        raise RuntimeError(
            "get_db() needs an application context: call it in a request, a CLI command, "
            "or inside 'with app.app_context():'"
        )
    return ctx


def _current_lease(app: Flask) -> Lease | None:
    """The lease of the current request (or app context) of ``app``, if any."""
    ctx = compat.app_context()
    if ctx is None or ctx.app is not app:
        return None
    request = _request_context(None)
    namespace = ctx.g.__dict__ if request is None else _request_scope(ctx, request)[0]
    lease: Lease | None = namespace.get(_LEASE)
    return lease


def _request_scope(ctx: AppContext, request: Any) -> tuple[dict[str, Any], Any]:
    """Where the lease of ``request`` (the current request context, in app context ``ctx``) lives,
    and the context it ends with.

    The app context, unless the request borrows it (then the request context).
    """
    known = request.__dict__.get(_SCOPE)
    if known is not None and known[0] is ctx:
        return known[1], known[2]
    if compat.borrowed_by(request, ctx):
        found: tuple[dict[str, Any], Any] = (request.__dict__, request)
        _end_borrowing_requests(ctx.app)
    else:
        found = (ctx.g.__dict__, ctx)
    request.__dict__[_SCOPE] = (ctx, *found)
    return found


def _end_borrowing_requests(app: Flask) -> None:
    """Make sure requests that borrow their app context end as requests (see _end_borrowing_request).

    Registered when the first one checks out, not in init_app: an extra
    teardown_request function costs every request of the app about 1%, and
    only tests run requests inside an app context they did not push.
    """
    state = app.extensions.get(_STATE)
    if isinstance(state, _AppState) and not state.ends_borrowing_requests:
        state.ends_borrowing_requests = True
        compat.run_last_at_request_teardown(app, _end_borrowing_request)


def _make_pool(app: Flask, name: str, settings: PoolSettings) -> ConnectionPool:
    dsn: Any = settings.dsn
    if dsn is None:
        # Embedded: started on the first checkout, so that `flask routes` or a
        # gunicorn --preload master start nothing; a missing extra fails here.
        dsn = embedded_dsn(Path(app.instance_path) / _EMBEDDED_DIR)
    connect_args, guarded = _guarded_connect_args(settings.connect_args)
    pool_class = LeasingPool if guarded else ConnectionPool
    return pool_class(
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
        connect_args=connect_args,
        reset=settings.reset,
        label=_setting_label(app, name),
    )


def _guarded_connect_args(source: Any) -> tuple[Any, bool]:
    """``connect_args`` (or the function that returns them) with the check of _guard in
    their ``connection_factory``, and whether the pool's connections may have it."""
    if callable(source):

        def guarded() -> Any:
            args = source()
            return _with_guard(args)[0] if isinstance(args, Mapping) else args

        return guarded, True
    return _with_guard(source)


def _with_guard(args: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    args = dict(args)
    factory = guarded_factory(args.get("connection_factory"))
    if factory is None:
        return args, False  # not a connection class: it cannot be given the check
    args["connection_factory"] = factory
    return args, True


def _setting_label(app: Flask, bind: str) -> Callable[[str], str]:
    """How the pool names its options in messages: by the config key to change."""
    if bind != DEFAULT_BIND:
        return lambda option: f"PGPOOL_BINDS[{bind!r}][{option!r}]"
    dsn_key = "PGPOOL_DSN"
    if not str(app.config.get("PGPOOL_DSN") or "").strip() and os.environ.get("DATABASE_URL"):
        dsn_key = "the DATABASE_URL environment variable"
    return lambda option: dsn_key if option == "dsn" else f"PGPOOL_{option.upper()}"


def _hold_if_streamed(response: Response) -> Response:
    """The after-this-request hook of a request that checked out: see Lease.hold_if_streamed.

    A plain function, not the lease's bound method: Flask asks of every hook
    whether it is a coroutine function, which costs more for a method, and
    most bodies are not generators.
    """
    if isinstance(response.response, _Generator):
        ctx = compat.app_context()
        lease = _current_lease(ctx.app) if ctx is not None else None
        if lease is not None:
            return lease.hold_if_streamed(response)
    return response


def _end_app_context(exc: BaseException | None) -> None:
    """teardown_appcontext: give back what this app context checked out. Never raises.

    ``exc`` is None after ``abort()`` or a handled error, so it cannot decide
    commit or rollback: uncommitted work is always rolled back. It only tells
    whether a streamed response that holds the connections will be sent.
    """
    ctx = _current_app_context(None)
    if ctx is None:
        return
    # _end(ctx.g.__dict__, ctx, exc) written out: this runs at the end of every request.
    namespace = ctx.g.__dict__
    lease: Lease | None = namespace.get(_LEASE)
    if lease is not None:
        if lease.release is None:
            lease.end()
        elif lease.finish(exc):
            return
        del namespace[_LEASE]
    namespace[_ENDED_AT] = compat.push_marker(ctx)


def _end_borrowing_request(exc: BaseException | None) -> None:
    """teardown_request: give back what a request that borrowed its app context checked out. Never raises."""
    ctx = compat.app_context()
    request = compat.request_context()
    if ctx is None or request is None:
        return
    known = request.__dict__.get(_SCOPE)
    # Without a get_db() in this request (yet) there is nothing to give back,
    # but a late get_db() must not check out what nothing would give back.
    borrowed = known[2] is request if known is not None and known[0] is ctx else compat.borrowed_by(request, ctx)
    if borrowed:
        _end(request.__dict__, request, exc)


def _end(namespace: dict[str, Any], scope: Any, exc: BaseException | None) -> None:
    lease: Lease | None = namespace.get(_LEASE)
    if lease is not None:
        if lease.release is None:
            lease.end()  # what finish() does without a streamed response, one call less
        elif lease.finish(exc):
            # The streamed body gives it back; stream_with_context may push
            # this context again meanwhile, and get_db() must find it there.
            return
        del namespace[_LEASE]
    namespace[_ENDED_AT] = compat.push_marker(scope)


def _connection_lost(error: psycopg2.Error, retry_after: int, handler: Any) -> ResponseReturnValue:
    """The request's own connection broke (the network or the server went away): answer 503.

    Whatever the driver raised about it (OperationalError, or InterfaceError
    from a rollback on the broken connection). Any other driver error (a
    cancelled statement, a deadlock, a constraint, use after the request's
    end) goes on to the app's own handlers, or becomes a 500, as if
    ``handler`` did not exist.
    """
    ctx = compat.app_context()
    lease = _current_lease(ctx.app) if ctx is not None else None
    pooled = [conn for _, conn in lease.conns.values()] if lease is not None else []
    cursor = getattr(error, "cursor", None)
    failed = [cursor.connection] if cursor is not None else pooled
    # closed == 2: psycopg2 found the connection broken (closed by the view is 1).
    broken = any(conn.closed == 2 and any(conn is p for p in pooled) for conn in failed)
    if ctx is None or not broken or isinstance(error, StaleConnectionError):
        return pass_on(error, handler)
    message = str(error).strip()
    for pool in ctx.app.extensions["pgpool"].get_pools(ctx.app).values():
        message = pool.redact(message)
    return service_unavailable(f"the connection to the database was lost: {message}", retry_after)


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
                # Requests still running now are in daemon threads that die with the process.
                _maintenance.cancel_running(pool)
            except Exception:
                _log.exception("flask-pgpool: could not close pool %r at exit", pool.name)


_closer = _PoolCloser()
