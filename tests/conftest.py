"""Session services for integration tests: a real tansu broker and a real PostgreSQL database.

The broker is started on a free port for this session only. The database server is
``LEADCYCLE_DATABASE_URL``'s server, else the one on 127.0.0.1:5432, else a private cluster
started here; on it a database ``leadcycle_test_<pid>`` is created, migrated, and dropped at the
end, so tests never touch a user's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import db
from infra.broker import start_broker, stop_broker
from infra.postgres import (
    drop_database,
    local_server_dsn,
    start_private_cluster,
    stop_private_cluster,
    with_database,
)
from infra.processes import free_port

#: Comment on the databases tests create; only those are dropped (infra/postgres.py).
TEST_MARKER = "test"


@dataclass(frozen=True)
class RunningServices:
    kafka_url: str
    server_dsn: str  # maintenance database of the server
    database_dsn: str  # this session's migrated test database
    state_dir: Path


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # World-traversable: a private PostgreSQL cluster runs as another user when we are root.
    path = Path(tempfile.mkdtemp(prefix="leadcycle-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_url(state_dir: Path) -> Iterator[str]:
    broker = start_broker(state_dir / "broker", free_port())
    yield broker.url
    stop_broker(broker.pid)


@pytest.fixture(scope="session")
def server_dsn(state_dir: Path) -> Iterator[str]:
    configured = os.environ.get("LEADCYCLE_DATABASE_URL")
    if configured:
        yield with_database(configured, "postgres")
        return
    local = local_server_dsn()
    if local is not None:
        yield local
        return
    cluster = start_private_cluster(state_dir / "pg", free_port())
    yield f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    stop_private_cluster(cluster.data_dir)


@pytest.fixture(scope="session")
async def services(
    kafka_url: str, server_dsn: str, state_dir: Path
) -> AsyncIterator[RunningServices]:
    name = f"leadcycle_test_{os.getpid()}"
    dsn = await db.migrated_database(server_dsn, name, marker=TEST_MARKER, fresh=True)
    yield RunningServices(kafka_url, server_dsn, dsn, state_dir)
    await drop_database(server_dsn, name, marker=TEST_MARKER)
