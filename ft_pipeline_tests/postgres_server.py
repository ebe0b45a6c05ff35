"""A real PostgreSQL server for tests: the one named by ``FT_PIPELINE_TEST_POSTGRES_URL``, or a
throwaway cluster started from the locally installed server binaries.

The throwaway cluster lives in a temporary directory: ``initdb`` with a generated password,
listening only on 127.0.0.1 on a free port (its Unix socket inside the temporary directory, so it
never collides with a system server), ``fsync=off`` for speed. It is stopped with
``pg_ctl stop -m immediate`` and deleted afterwards. ``initdb`` and ``postgres`` refuse to run as
root, so under root they run as the ``postgres`` system user (created by the Debian/Ubuntu
``postgresql`` package), owning the temporary directory.

Outcomes, and why they differ:

- neither the variable nor server binaries: :class:`PostgresUnavailable` (the tests skip: the
  machine simply has no PostgreSQL);
- binaries found but the server does not come up: :class:`PostgresStartFailed` with the server
  log (the tests fail: a broken installation must not pass as "skipped").
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ENV_URL = "FT_PIPELINE_TEST_POSTGRES_URL"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_USER = "ft_test"
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it


class PostgresUnavailable(Exception):
    """No PostgreSQL for tests on this machine (the reason is the message)."""


class PostgresStartFailed(RuntimeError):
    """Server binaries exist but the throwaway cluster did not start; the message has its log."""


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in SERVER_PROGRAMS)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))


def find_server_bindir() -> Path | None:
    """The directory with ``initdb``/``pg_ctl``/``postgres``: ``pg_config --bindir`` if it has
    them (on Debian it can belong to libpq-dev alone), else the newest /usr/lib/postgresql/*/bin,
    else wherever ``initdb`` is on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if _has_server(c)), None)


def admin_url() -> str | None:
    """The server URL from ``FT_PIPELINE_TEST_POSTGRES_URL`` (its user must be allowed to create
    databases), as a plain ``postgresql://`` URL; None when the variable is unset."""
    url = os.environ.get(ENV_URL, "").strip()
    return plain_url(url) if url else None


def unavailable_reason() -> str | None:
    """Why no PostgreSQL can be had for tests, or None when one can."""
    if admin_url() or find_server_bindir():
        return None
    return f"no PostgreSQL server binaries found (apt-get install postgresql) and {ENV_URL} not set"


def plain_url(url: str) -> str:
    """``postgresql+psycopg2://…`` -> ``postgresql://…`` (what libpq and Dagster's postgres_url take)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy with the psycopg2 driver (what dagster-postgres installs)."""
    return "postgresql+psycopg2" + plain_url(url)[len("postgresql") :]


def with_database(url: str, db_name: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(plain_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + db_name, parts.query, ""))


def _connect(url: str):
    import psycopg2

    conn = psycopg2.connect(plain_url(url), connect_timeout=10)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


def create_database(url: str, prefix: str = "ft_test") -> str:
    """Create a fresh, uniquely named database on the server of ``url``; return its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return with_database(url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of ``url`` (connected through ``server_url``), closing any connections
    still open to it."""
    name = urlsplit(url).path.lstrip("/")
    conn = _connect(server_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Throwaway cluster
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Runner:
    """Runs the server programs as the current user, or as ``postgres`` when that is root."""

    def __init__(self) -> None:
        self.account = None
        if os.geteuid() == 0:
            try:
                self.account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresStartFailed(
                    "running as root, and PostgreSQL refuses to run as root, but there is no 'postgres' "
                    "system user to run it as (the postgresql package creates one)"
                ) from None

    def own(self, path: Path) -> None:
        if self.account:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def run(self, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        extra = {}
        if self.account:
            extra = dict(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if self.account:
            env["HOME"] = str(cwd)
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **extra)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return "(no log)"


@contextmanager
def throwaway_cluster(bindir: Path | None = None) -> Iterator[str]:
    """Start a private PostgreSQL server; yield the URL of its ``postgres`` database
    (``postgresql://ft_test:<password>@127.0.0.1:<port>/postgres``)."""
    bindir = bindir or find_server_bindir()
    if bindir is None:
        raise PostgresUnavailable(unavailable_reason() or "no PostgreSQL server binaries found")
    runner = _Runner()
    root = Path(tempfile.mkdtemp(prefix="ft-pg-"))
    data, sock, log = root / "data", root / "socket", root / "server.log"
    password = secrets.token_hex(16)
    try:
        sock.mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        for path in (root, sock, pwfile):
            runner.own(path)
        init = runner.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=root,
            timeout=120,
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise PostgresStartFailed(
                f"initdb ({bindir}) failed with exit code {init.returncode}:\n{init.stdout}\n{init.stderr}"
            )

        port = 0
        for attempt in range(_START_ATTEMPTS):
            port = _free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{sock}'",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "200",
                "log_min_messages": "warning",
            }
            # postgresql.auto.conf is read last and overrides postgresql.conf.
            (data / "postgresql.auto.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
            start = runner.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
                cwd=root,
                timeout=90,
            )
            if start.returncode == 0:
                break
            server_log = _read(log)
            if "could not bind" in server_log and attempt + 1 < _START_ATTEMPTS:
                log.unlink(missing_ok=True)
                continue
            raise PostgresStartFailed(
                f"PostgreSQL ({bindir}) did not start (pg_ctl exit code {start.returncode}):\n"
                f"{start.stdout}\n{start.stderr}\n--- server log {log} ---\n{server_log}"
            )
        yield f"postgresql://{_USER}:{quote(password)}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            stop = runner.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=root, timeout=60
            )
            if stop.returncode != 0 and (data / "postmaster.pid").exists():
                try:
                    os.kill(int(_read(data / "postmaster.pid").split()[0]), signal.SIGKILL)
                except (ValueError, IndexError, OSError):
                    pass
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server the caller may create databases on: the one named by
    ``FT_PIPELINE_TEST_POSTGRES_URL``, else a throwaway cluster for the duration of the block.

    Raises :class:`PostgresUnavailable` when there is neither, :class:`PostgresStartFailed` when
    the binaries are there but the server does not start."""
    url = admin_url()
    if url:
        yield url
        return
    with throwaway_cluster() as url:
        yield url
