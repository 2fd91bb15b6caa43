"""The embedded broker and the database launchers, and that configured services start nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from infra import services as svc
from infra.broker import metadata_ok, start_broker, stop_broker
from infra.postgres import server_bindir, start_private_cluster, stop_private_cluster
from infra.processes import alive, free_port
from infra.settings import Settings
from tests.conftest import RunningServices

pytestmark = pytest.mark.integration


def test_broker_starts_answers_metadata_and_stops_by_pid(state_dir: Path) -> None:
    port = free_port()
    broker = start_broker(state_dir / "b1", port)
    try:
        assert metadata_ok("127.0.0.1", port)
        assert alive(broker.pid, expect="tansu")
    finally:
        assert stop_broker(broker.pid)
    assert not metadata_ok("127.0.0.1", port)
    assert not alive(broker.pid, expect="tansu")


def test_configured_services_are_used_and_nothing_is_started(
    services: RunningServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADCYCLE_KAFKA_URL", services.kafka_url)
    monkeypatch.setenv("LEADCYCLE_DATABASE_URL", services.database_dsn)
    monkeypatch.setenv("LEADCYCLE_STATE_DIR", str(tmp_path))
    settings = Settings()
    before = _tansu_pids()
    found = svc.up(settings)
    assert found == svc.Endpoints(services.kafka_url, services.database_dsn)
    assert _tansu_pids() == before, "a broker was started although LEADCYCLE_KAFKA_URL is set"
    state = svc.load_state(settings)
    assert state.broker_pid is None
    assert state.postgres_pid is None
    assert svc.down(settings) == []
    assert "LEADCYCLE_KAFKA_URL" in svc.status(settings)["broker"]


def _tansu_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"tansu" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(server_bindir() is None, reason="no PostgreSQL server binaries on this machine")
def test_private_cluster_starts_serves_and_stops() -> None:
    base = Path(f"/tmp/leadcycle-pgtest-{os.getpid()}")
    base.mkdir(mode=0o755)
    port = free_port()
    try:
        cluster = start_private_cluster(base, port)

        async def query() -> int:
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
            try:
                return int(await conn.fetchval("SELECT 41 + 1"))
            finally:
                await conn.close()

        assert asyncio.run(query()) == 42
        assert stop_private_cluster(cluster.data_dir)
        assert not alive(cluster.pid, expect="postgres")
    finally:
        shutil.rmtree(base, ignore_errors=True)
