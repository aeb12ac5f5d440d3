"""The parameters a connection service (``service=`` or ``PGSERVICE``) gives, found as libpq finds them.

libpq fills the parameters a connection string leaves out from the service's
section of ``pg_service.conf``. The pool must know them before it connects:
a keepalive setting there is the user's, and the pool adds none of its own
on top. psycopg2's ``parse_dsn`` does not expand services, so the files are
read here, in libpq's order: ``PGSERVICEFILE`` (else ``~/.pg_service.conf``),
then, if the service is not there, ``pg_service.conf`` in ``PGSYSCONFDIR``
(else the directory libpq is built with on Debian and Ubuntu and in
psycopg2-binary's wheels, ``/etc/postgresql-common``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["service_params"]

#: libpq's system configuration directory where PGSYSCONFDIR is not set
#: (Debian and Ubuntu packages, psycopg2-binary wheels).
DEFAULT_SYSCONFDIR = "/etc/postgresql-common"


def service_params(params: Mapping[str, object]) -> dict[str, str]:
    """The parameters of the service named in ``params`` (or ``PGSERVICE``); empty if none is named or found.

    Unreadable files and a missing service give nothing: libpq reports
    those itself when it connects.
    """
    name = params.get("service") or os.environ.get("PGSERVICE")
    if not name:
        return {}
    user_file = os.environ.get("PGSERVICEFILE") or str(Path("~/.pg_service.conf").expanduser())
    found = _read_section(user_file, str(name))
    if found is None:
        sysconfdir = os.environ.get("PGSYSCONFDIR") or DEFAULT_SYSCONFDIR
        found = _read_section(os.path.join(sysconfdir, "pg_service.conf"), str(name))
    return found or {}


def _read_section(path: str, name: str) -> dict[str, str] | None:
    """The ``key=value`` lines of section ``[name]`` in ``path``; None if the file or the section is not there."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found is not None:
                break  # the section ended
            if line[1:].startswith(f"{name}]"):
                found = {}
            continue
        if found is not None and "=" in line:
            key, value = line.split("=", 1)
            # libpq keeps the first value of a key.
            found.setdefault(key.strip(), value.strip())
    return found
