"""``leadcycle services up|down|status``: the embedded broker and database, and where to find them.

What ``up`` starts is recorded in ``<state_dir>/services.json`` (PIDs, ports) so that ``down``
stops exactly that, by PID, and nothing else. Services the user configured
(``LEADCYCLE_KAFKA_URL`` / ``LEADCYCLE_DATABASE_URL``) are used as they are and never started.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.broker import metadata_ok, start_broker, stop_broker
from infra.postgres import (
    ensure_database,
    local_server_dsn,
    start_private_cluster,
    stop_private_cluster,
    with_database,
)
from infra.processes import ServiceError, alive
from infra.settings import Settings


@dataclass(frozen=True)
class Endpoints:
    """Where the worker connects: Kafka bootstrap servers and the leadcycle database."""

    kafka_url: str
    database_dsn: str


@dataclass
class ServiceState:
    broker_url: str | None = None
    broker_pid: int | None = None
    postgres_dsn: str | None = None  # server DSN (maintenance db) of a server we use
    postgres_pid: int | None = None  # set only when we started a private cluster
    postgres_data_dir: str | None = None
    notes: list[str] = field(default_factory=list)


def _state_file(settings: Settings) -> Path:
    return settings.state_dir / "services.json"


def load_state(settings: Settings) -> ServiceState:
    path = _state_file(settings)
    if not path.exists():
        return ServiceState()
    return ServiceState(**json.loads(path.read_text()))


def _save_state(settings: Settings, state: ServiceState) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    _state_file(settings).write_text(json.dumps(asdict(state), indent=2))


def _broker_running(state: ServiceState) -> bool:
    if state.broker_pid is None or state.broker_url is None:
        return False
    host, port = state.broker_url.rsplit(":", 1)
    return alive(state.broker_pid, expect="tansu") and metadata_ok(host, int(port))


def _cluster_running(state: ServiceState) -> bool:
    return state.postgres_pid is not None and alive(state.postgres_pid, expect="postgres")


def up(settings: Settings, *, database: str | None = None) -> Endpoints:
    """Make sure a broker and a database are reachable, starting embedded ones where needed."""
    state = load_state(settings)
    if settings.kafka_url:
        kafka_url = settings.kafka_url
    elif _broker_running(state):
        assert state.broker_url is not None
        kafka_url = state.broker_url
    else:
        broker = start_broker(settings.state_dir, settings.broker_port)
        state.broker_url, state.broker_pid = broker.url, broker.pid
        _save_state(settings, state)
        kafka_url = broker.url

    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        server = _database_server(settings, state)
        dsn = asyncio.run(ensure_database(server, database or settings.database_name))
    _save_state(settings, state)
    return Endpoints(kafka_url=kafka_url, database_dsn=dsn)


def _database_server(settings: Settings, state: ServiceState) -> str:
    if _cluster_running(state):
        assert state.postgres_dsn is not None
        return state.postgres_dsn
    local = local_server_dsn()
    if local is not None:
        state.postgres_dsn, state.postgres_pid, state.postgres_data_dir = local, None, None
        return local
    cluster = start_private_cluster(settings.state_dir / "pg", settings.postgres_port)
    state.postgres_dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    state.postgres_pid, state.postgres_data_dir = cluster.pid, str(cluster.data_dir)
    _save_state(settings, state)
    return state.postgres_dsn


def kafka_url(settings: Settings) -> str:
    """The broker to use, without starting anything (the worker's view)."""
    if settings.kafka_url:
        return settings.kafka_url
    state = load_state(settings)
    if _broker_running(state):
        assert state.broker_url is not None
        return state.broker_url
    raise ServiceError(
        "no broker: set LEADCYCLE_KAFKA_URL, or run `leadcycle services up` to start the "
        "embedded one"
    )


def database_dsn(settings: Settings, *, database: str | None = None) -> str:
    """The leadcycle database to use, without starting anything."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    state = load_state(settings)
    server = state.postgres_dsn if _cluster_running(state) else local_server_dsn()
    if server is None:
        raise ServiceError(
            "no database: set LEADCYCLE_DATABASE_URL, or run `leadcycle services up`"
        )
    return with_database(server, database or settings.database_name)


def endpoints(settings: Settings) -> Endpoints:
    return Endpoints(kafka_url(settings), database_dsn(settings))


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started (by PID) and forget it. Returns what was stopped."""
    state = load_state(settings)
    stopped: list[str] = []
    if state.broker_pid is not None and stop_broker(state.broker_pid):
        stopped.append(f"broker (pid {state.broker_pid})")
    if state.postgres_pid is not None and state.postgres_data_dir is not None:
        if stop_private_cluster(Path(state.postgres_data_dir)):
            stopped.append(f"postgresql (pid {state.postgres_pid})")
    _save_state(settings, ServiceState())
    return stopped


def status(settings: Settings) -> dict[str, str]:
    state = load_state(settings)
    report: dict[str, str] = {}
    if settings.kafka_url:
        report["broker"] = f"external {settings.kafka_url} (LEADCYCLE_KAFKA_URL)"
    elif _broker_running(state):
        report["broker"] = f"embedded {state.broker_url} (pid {state.broker_pid})"
    else:
        report["broker"] = "not running"
    if settings.database_url is not None:
        report["database"] = "external (LEADCYCLE_DATABASE_URL)"
    elif _cluster_running(state):
        report["database"] = f"private cluster {state.postgres_dsn} (pid {state.postgres_pid})"
    elif local_server_dsn() is not None:
        report["database"] = f"local server 127.0.0.1:5432, database {settings.database_name}"
    else:
        report["database"] = "not running"
    return report


__all__ = ["Endpoints", "ServiceError", "down", "endpoints", "status", "up"]
