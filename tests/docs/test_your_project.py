"""The project of "Use it in your own project", written out file by file from the page, works as a
new user's would: its tests pass with the copied conftest, ``flask init-db`` creates its tables, and
``mypy --strict`` checks it after the documented editable install."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import psycopg2
import pytest
from support.rst import DOCS, ROOT, code_blocks

from flask_pgpool.testing import fresh_database

PAGE = DOCS / "your-project.rst"


def project_files() -> dict[str, str]:
    """The page's files: every Python or SQL sample whose first line names its path."""
    text = PAGE.read_text(encoding="utf-8")
    files = {}
    for block in code_blocks(text, "python") + code_blocks(text, "sql"):
        match = re.match(r"^(?:#|--) ([\w/]+\.(?:py|sql))\n", block)
        if match:
            files[match.group(1)] = block
    return files


def write_project(where: Path) -> Path:
    for name, content in project_files().items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(content, encoding="utf-8")
    return where


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of the suite's database settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGPOOL_", "FLASK_")) and k != "DATABASE_URL"}
    env.update(extra)
    return env


def test_the_page_has_a_whole_project() -> None:
    assert set(project_files()) == {
        "myapp/__init__.py",
        "myapp/db.py",
        "myapp/schema.sql",
        "conftest.py",
        "tests/test_notes.py",
    }


@pytest.mark.no_pgbouncer  # the session's database is created on the server itself
def test_copied_conftest_runs_the_projects_tests(tmp_path: Path, pg_server_dsn: str) -> None:
    project = write_project(tmp_path / "project")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}"],
        cwd=project,
        env=user_env(PGPOOL_TEST_DSN=pg_server_dsn),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout


@pytest.mark.no_pgbouncer
def test_init_db_command_creates_the_tables(tmp_path: Path, pg_server_dsn: str) -> None:
    project = write_project(tmp_path / "project")
    [command] = [
        line.removeprefix("$ ")
        for block in code_blocks(PAGE.read_text(encoding="utf-8"), "console")
        for line in block.splitlines()
        if line.endswith("init-db")
    ]
    argv = shlex.split(command)
    assert argv[0].startswith("DATABASE_URL=") and argv[1:] == ["flask", "--app", "myapp", "init-db"]
    with fresh_database(pg_server_dsn, prefix="docs_initdb_") as dsn:
        for _ in range(2):  # twice: the command may run again
            result = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "myapp", "init-db"],
                cwd=project,
                env=user_env(DATABASE_URL=dsn),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "Initialized the database."
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM notes")
            assert cur.fetchone() == (0,)
        conn.close()


def editable_install_command() -> list[str]:
    [line] = [
        line.removeprefix("$ ")
        for block in code_blocks(PAGE.read_text(encoding="utf-8"), "console")
        for line in block.splitlines()
        if "editable_mode" in line
    ]
    argv = shlex.split(line)
    assert argv[:3] == ["pip", "install", "-e"]
    return argv


@pytest.mark.slow
def test_mypy_strict_finds_the_package_after_the_documented_editable_install(tmp_path: Path) -> None:
    """A new virtualenv outside the checkout, the page's editable install, then mypy on the page's app."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    argv = editable_install_command()
    argv[3] = argv[3].replace("/path/to/flask-pgpool", str(ROOT))
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    install = subprocess.run([*pip, *argv[1:]], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    blocks = code_blocks(PAGE.read_text(encoding="utf-8"), "console")
    [tools] = [b for b in blocks if "install mypy" in b]
    commands = [shlex.split(line.removeprefix("$ ")) for line in tools.splitlines() if line.startswith("$ ")]
    [install_tools, run_mypy] = commands
    [expected] = [line for line in tools.splitlines() if line.startswith("Success:")]
    # mypy checks the tests and conftest.py too, which import pytest: the page's test tools first.
    [install_test_tools] = [shlex.split(b.removeprefix("$ ").strip()) for b in blocks if "install pytest" in b]
    for install_command in (install_test_tools, install_tools):
        install = subprocess.run([*pip, *install_command[1:]], capture_output=True, text=True, timeout=600)
        assert install.returncode == 0, install.stdout + install.stderr
    project = write_project(tmp_path / "project")
    result = subprocess.run(
        [str(env_dir / "bin" / "mypy"), "--no-incremental", *run_mypy[1:]],
        cwd=project,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert run_mypy[1:] == ["--strict", "."]
    assert expected == "Success: no issues found in 4 source files"  # the whole project, tests included
    assert expected in result.stdout
