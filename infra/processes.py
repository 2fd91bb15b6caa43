"""Start and stop local service processes by PID, and wait for ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: Processes this process spawned, kept so they are waited for (no zombie, no ResourceWarning).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: Sequence[str], log: Path) -> int:
    """Start ``argv`` detached in its own session (it outlives this process); return its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _SPAWNED[proc.pid] = proc
    return proc.pid


def alive(pid: int, *, expect: str | None = None) -> bool:
    """Whether ``pid`` runs (and, with ``expect``, its command line contains that word)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if expect is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc: trust the signal check
    if b"<defunct>" in cmdline or not cmdline:
        return False
    return expect.encode() in cmdline


def running(pid: int) -> bool:
    """Whether our child ``pid`` still runs (reaping it if it exited)."""
    _reap(pid)
    return alive(pid)


def stop_pid(pid: int, *, expect: str | None, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid`` if it is still the process we started, SIGKILL after ``timeout``.

    Returns whether a process was stopped. The ``expect`` check guards against PID reuse.
    """
    if not alive(pid, expect=expect):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid, expect=expect):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    # A child of ours would stay a zombie (and look alive) until waited for.
    proc = _SPAWNED.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _SPAWNED[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(check: object, *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check()`` until it is true or raise :class:`ServiceError` after ``timeout`` s."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f} s")
