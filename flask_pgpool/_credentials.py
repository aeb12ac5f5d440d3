"""What a new connection is opened with: a fixed DSN, or one asked for at every connect.

Passwords and IAM tokens rotate: a DSN callable, or a connect-arguments
callable, is called for every new connection, so each one gets the secret of
the moment. Every secret seen is remembered (the most recent few) so that
:func:`flask_pgpool._dsn.redact` masks it wherever it may show up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from . import _dsn as dsnlib

__all__ = ["ArgsSource", "ConnectParams", "DsnSource"]

DsnSource: TypeAlias = str | Callable[[], str]
ArgsSource: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None

# Old secrets may still appear in messages about connections opened with them;
# tokens that change at every connect must not grow the list without bound.
_SECRETS_KEPT = 16


class ConnectParams:
    """The DSN and ``psycopg2.connect()`` arguments of one pool's new connections.

    :meth:`resolve` is called outside the pool's lock, once per connect: a
    callable source is called each time, a fixed one is worked out once.
    ``complete(dsn, kwargs)`` returns the arguments with the pool's own added
    (its timeouts, where neither the DSN nor ``connect_args`` set them).
    """

    def __init__(
        self,
        dsn: DsnSource,
        connect_args: ArgsSource,
        complete: Callable[[str, dict[str, Any]], dict[str, Any]],
    ) -> None:
        self._dsn_source = dsn
        self._args_source = connect_args
        self._complete = complete
        self._lock = threading.Lock()
        self._fixed: tuple[str, dict[str, Any]] | None = None
        #: The last DSN used (or the fixed one); None until a callable has been called.
        self.last_dsn: str | None = dsn if isinstance(dsn, str) else None
        #: Secret values seen so far, newest first: for :func:`flask_pgpool._dsn.redact`.
        self.secrets: tuple[str, ...] = ()
        if self.last_dsn is not None and not callable(connect_args):
            self._learn(self.last_dsn, connect_args or {})

    def after_fork(self) -> None:
        """In a child process: another thread of the parent may have held the lock."""
        self._lock = threading.Lock()

    @property
    def rotating(self) -> bool:
        """Whether each connect may use other credentials (a callable source)."""
        return callable(self._dsn_source) or callable(self._args_source)

    def resolve(self) -> tuple[str, dict[str, Any]]:
        """The DSN and keyword arguments for the next ``psycopg2.connect()``.

        Raises what a callable raises, :class:`TypeError` when it returns the
        wrong type, or :class:`flask_pgpool._dsn.InvalidDSN`.
        """
        fixed = self._fixed
        if fixed is not None:
            return fixed
        dsn = self._call_dsn()
        args = self._call_args()
        self._learn(dsn, args)
        kwargs = self._complete(dsn, dict(args))
        self.last_dsn = dsn
        if not self.rotating:
            self._fixed = (dsn, kwargs)
        return dsn, kwargs

    def _call_dsn(self) -> str:
        source = self._dsn_source
        if not callable(source):
            return source
        dsn = source()
        if not isinstance(dsn, str):
            raise TypeError(
                f"the DSN callable returned a {type(dsn).__name__}, not a connection string or postgresql:// URL"
            )
        return dsn

    def _call_args(self) -> Mapping[str, Any]:
        source = self._args_source
        if not callable(source):
            return source or {}
        args = source()
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            raise TypeError(
                f"the connect-arguments callable returned a {type(args).__name__}, "
                "not a dict of psycopg2.connect() keyword arguments"
            )
        return args

    def _learn(self, dsn: str, args: Mapping[str, Any]) -> None:
        found = dsnlib.secrets_of(dsn, args)
        if all(secret in self.secrets for secret in found):
            return
        with self._lock:
            merged = [*dict.fromkeys([*found, *self.secrets])]
            # Replaced whole: readers use the tuple they got, without a lock.
            self.secrets = tuple(merged[:_SECRETS_KEPT])
