"""Private Redis and Mosquitto servers for the tests that configure or stop one: free ports,
start, wait until the port answers, stop."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAS_MOSQUITTO = Path(MOSQUITTO).exists()
HAS_REDIS = shutil.which("redis-server") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Return once ``port`` accepts connections; a server that exits first fails with its output."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pipe = process.stderr or process.stdout
            output = pipe.read().decode(errors="replace") if pipe else ""
            raise RuntimeError(f"the server exited with {process.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def start_server(command: list[str], port: int, *, merge_output: bool = False) -> subprocess.Popen[bytes]:
    """Start a server and wait for its port; with ``merge_output`` its log is on stdout."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE if merge_output else subprocess.DEVNULL,
                               stderr=subprocess.STDOUT if merge_output else subprocess.PIPE)
    try:
        wait_for_port(port, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop_server(process: subprocess.Popen[bytes]) -> str:
    """Terminate (kill after 5 s) and return what the server printed."""
    process.terminate()
    try:
        output = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()
    return b"".join(part for part in output if part).decode(errors="replace")
