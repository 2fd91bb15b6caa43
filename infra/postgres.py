"""Find or start a PostgreSQL server, and create databases on it.

Order: an explicit ``LEADCYCLE_DATABASE_URL``; else a server already listening on
127.0.0.1:5432; else a private cluster under the state dir, started with the server binaries on
this machine (initdb/pg_ctl). PostgreSQL refuses to run as root, so as root the private cluster
runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from infra.processes import ServiceError, port_open

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432
INSTALL_HINT = (
    "no PostgreSQL found: set LEADCYCLE_DATABASE_URL=postgresql://user@host:port/db, start a "
    "server on 127.0.0.1:5432, or install the server binaries (Debian/Ubuntu: "
    "apt-get install postgresql) so leadcycle can start a private cluster"
)


@dataclass(frozen=True)
class PrivateCluster:
    data_dir: Path
    port: int
    pid: int


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def local_server_dsn() -> str | None:
    """A DSN for the server on 127.0.0.1:5432 (maintenance db ``postgres``) if it is up."""
    if not port_open(LOCAL_HOST, LOCAL_PORT):
        return None
    user = os.environ.get("PGUSER", "postgres")
    return f"postgresql://{user}@{LOCAL_HOST}:{LOCAL_PORT}/postgres"


def server_bindir() -> Path | None:
    """Where initdb and pg_ctl live, newest version first."""
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name.split(".")[0]),
        reverse=True,
    )
    return Path(candidates[0]).parent if candidates else None


def _as_service_user() -> tuple[list[str], str | None]:
    """Command prefix and owner for running the server binaries (root may not run them)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceError(
            "running as root and there is no 'postgres' system user to run PostgreSQL as; "
            "create one (useradd -r postgres) or set LEADCYCLE_DATABASE_URL"
        ) from exc
    runner = shutil.which("runuser") or shutil.which("su")
    if runner is None or not runner.endswith("runuser"):
        raise ServiceError("running as root needs runuser (util-linux) to start PostgreSQL")
    return [runner, "-u", "postgres", "--"], "postgres"


def start_private_cluster(base_dir: Path, port: int) -> PrivateCluster:
    """initdb (once) and start a private cluster on 127.0.0.1:``port``."""
    bindir = server_bindir()
    if bindir is None:
        raise ServiceError(INSTALL_HINT)
    prefix, owner = _as_service_user()
    base_dir = base_dir.resolve()
    data_dir, sock_dir, log = base_dir / "data", base_dir / "sock", base_dir / "postgres.log"
    base_dir.mkdir(parents=True, exist_ok=True)
    sock_dir.mkdir(exist_ok=True)
    if owner is not None:
        for path in (base_dir, sock_dir, *([data_dir] if data_dir.exists() else [])):
            shutil.chown(path, owner, owner)
        _check_reachable(prefix, base_dir)
    if not (data_dir / "PG_VERSION").exists():
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
        )
    _run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            "30",
            "-o",
            f"-h {LOCAL_HOST} -p {port} -k {sock_dir} -c fsync=off",
            "start",
        ],
        "pg_ctl start",
    )
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    return PrivateCluster(data_dir=data_dir, port=port, pid=pid)


def stop_private_cluster(data_dir: Path) -> bool:
    bindir = server_bindir()
    if bindir is None or not (data_dir / "postmaster.pid").exists():
        return False
    prefix, _ = _as_service_user()
    _run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
        "pg_ctl stop",
    )
    return True


def _check_reachable(prefix: list[str], path: Path) -> None:
    probe = subprocess.run([*prefix, "test", "-w", str(path)], capture_output=True)
    if probe.returncode != 0:
        raise ServiceError(
            f"the postgres user cannot write {path} (a parent directory is not traversable); "
            "set LEADCYCLE_STATE_DIR to a directory it can reach, e.g. under /tmp"
        )


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"{what} failed: {result.stderr.strip() or result.stdout.strip()}")


#: Comment leadcycle puts on a database it created for its own use (``leadcycle:<kind>``, kind
#: e.g. ``demo``, ``bench``, ``test``, ``drill``); only a database carrying it may be dropped.
MARKER_PREFIX = "leadcycle:"


class NotOurDatabase(ServiceError):
    """A database to be dropped exists but was not created by leadcycle for this purpose."""


def marker_comment(marker: str) -> str:
    """The database comment that marks a database as created by leadcycle's ``marker``."""
    if not marker.replace("_", "").isalnum():
        raise ValueError(f"marker {marker!r} must be letters, digits and underscores")
    return f"{MARKER_PREFIX}{marker}"


async def ensure_database(server_dsn: str, name: str, *, marker: str | None = None) -> str:
    """Create database ``name`` on the server if missing; return a DSN for it.

    With ``marker``, a database this call creates is marked as leadcycle's (see
    :func:`drop_database`); an existing database is used as it is and never marked.
    """
    comment = marker_comment(marker) if marker is not None else None
    conn = await asyncpg.connect(server_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{_ident(name)}"')
            if comment is not None:
                # Marked after it exists: a crash in between leaves a database nothing will
                # drop, which is the safe way round.
                await conn.execute(f"COMMENT ON DATABASE \"{_ident(name)}\" IS '{comment}'")
    finally:
        await conn.close()
    return with_database(server_dsn, name)


async def database_marker(server_dsn: str, name: str) -> str | None:
    """The comment on database ``name`` ('' when it has none), None when there is no such
    database."""
    conn = await asyncpg.connect(server_dsn)
    try:
        return await _comment(conn, name)
    finally:
        await conn.close()


async def _comment(conn: asyncpg.Connection, name: str) -> str | None:
    row = await conn.fetchrow(
        """SELECT coalesce(shobj_description(oid, 'pg_database'), '') AS comment
             FROM pg_database WHERE datname = $1""",
        name,
    )
    return None if row is None else str(row["comment"])


async def drop_database(server_dsn: str, name: str, *, marker: str) -> bool:
    """Drop database ``name`` if it exists and carries ``marker`` (``leadcycle:<marker>``);
    return whether one was dropped.

    A database of that name without the marker (a user's own, or another leadcycle tool's)
    is never dropped: :class:`NotOurDatabase` is raised instead, naming it.
    """
    wanted = marker_comment(marker)
    conn = await asyncpg.connect(server_dsn)
    try:
        found = await _comment(conn, _ident(name))
        if found is None:
            return False
        if found != wanted:
            seen = f"its comment is {found!r}" if found else "it has no comment"
            raise NotOurDatabase(
                f"refusing to drop database {name!r}: it exists but was not created by "
                f"leadcycle for this purpose ({seen}; leadcycle's mark would be {wanted!r}). "
                "Drop or rename it yourself if it is disposable, or set "
                "LEADCYCLE_DATABASE_NAME so leadcycle derives other names"
            )
        # DROP DATABASE cannot run in a transaction with the check; the same session right
        # after it is as close as PostgreSQL allows.
        await conn.execute(f'DROP DATABASE IF EXISTS "{_ident(name)}" WITH (FORCE)')
    finally:
        await conn.close()
    return True


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r} must be letters, digits and underscores")
    return name
