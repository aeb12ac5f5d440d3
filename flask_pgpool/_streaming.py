"""The body of a streamed response that holds the request's connections until it is sent."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._guard import STREAMING

if TYPE_CHECKING:
    from ._leases import Lease

__all__ = ["ReleaseWhenSent"]

_log = logging.getLogger("flask_pgpool")


class ReleaseWhenSent:
    """A response body that gives its lease back once it is sent, closed, or dropped.

    The WSGI server closes the body even when the client hangs up, and the
    test client exhausts or closes it. A body that is never closed (a hook
    replaced the response, a server dropped it against PEP 3333) gives the
    lease back when it is garbage: at once in CPython when nothing else
    refers to it.
    """

    def __init__(self, body: Iterable[Any], lease: Lease) -> None:
        self._iterator: Iterator[Any] = iter(body)
        self._lease = lease
        # The finalizer must not refer to this object, only to what it frees.
        self.release = weakref.finalize(self, _release, body, lease, True)
        self.release.atexit = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        # The body's code is the request's: it may use the request's connections.
        token = STREAMING.set(self._lease)
        try:
            return next(self._iterator)
        except BaseException:
            self.close()  # sent, or failed: either way the stream is over
            raise
        finally:
            STREAMING.reset(token)

    def close(self) -> None:
        info = self.release.detach()
        if info is not None:
            body, lease, _quiet = info[2]
            _release(body, lease, quiet=False)


def _release(body: Iterable[Any], lease: Lease, quiet: bool) -> None:
    """Close the body (its code may still use the connections), then give the lease back.

    ``quiet``: called by the finalizer, where an exception would only be
    printed, so it is logged instead.
    """
    token = STREAMING.set(lease)
    try:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    except Exception:
        if not quiet:
            raise
        _log.exception("flask-pgpool: closing a streamed response body failed")
    finally:
        STREAMING.reset(token)
        lease.end()
