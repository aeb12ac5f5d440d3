"""The warning for a uWSGI master that forks its workers without Python's fork hooks.

uWSGI's ``uwsgi`` module exists only inside uWSGI; these tests give the
detection a stand-in with the two things it reads (the options and the worker
id). The real server runs the recipe in tests/deploy/test_servers.py.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from flask_pgpool._fork import unhooked_fork_warning


@pytest.fixture
def in_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    module = types.ModuleType("uwsgi")
    state = types.SimpleNamespace(opt={"master": True, "processes": b"4"}, worker=0)
    module.opt = state.opt  # type: ignore[attr-defined]
    module.worker_id = lambda: state.worker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    yield state


def test_outside_uwsgi_nothing_is_said() -> None:
    assert "uwsgi" not in sys.modules
    assert unhooked_fork_warning() is None


def test_a_master_without_fork_hooks_is_told_what_to_add(in_uwsgi: types.SimpleNamespace) -> None:
    message = unhooked_fork_warning()
    assert message is not None
    assert "--py-call-uwsgi-fork-hooks" in message and "--lazy-apps" in message


@pytest.mark.parametrize("option", ["py-call-uwsgi-fork-hooks", "lazy-apps", "lazy"])
def test_the_options_that_make_it_safe_silence_it(in_uwsgi: types.SimpleNamespace, option: str) -> None:
    in_uwsgi.opt[option] = True
    assert unhooked_fork_warning() is None


def test_a_worker_that_loads_the_app_itself_is_not_warned(in_uwsgi: types.SimpleNamespace) -> None:
    in_uwsgi.worker = 2
    assert unhooked_fork_warning() is None
