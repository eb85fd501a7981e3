"""The soak's processes: start, watch (exit codes, RSS, the tail of stderr), restart, stop.

Each service is a real process (``python -m volcast.cli <verb> ...``) whose stdout and stderr go
to one log file per start, so nothing blocks on a full pipe and the last lines of a crash stay
readable after the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process (not its children), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class Crash:
    service: str
    exit_code: int
    at_s: float
    """Seconds after the soak started."""
    log: str
    stderr_tail: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "exit_code": self.exit_code, "at_s": round(self.at_s, 1),
                "log": self.log, "stderr_tail": self.stderr_tail}


@dataclass(slots=True)
class Service:
    name: str
    command: list[str]
    log_dir: Path
    env: dict[str, str]
    cwd: Path
    restartable: bool = True
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path | None = None
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_peak_mb: float = 0.0
    cpu_done_s: float = 0.0
    """CPU seconds of the earlier starts (a crashed process's last reading)."""
    cpu_now_s: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    shutdown_code: int | None = None

    def start(self) -> None:
        self.starts += 1
        self.log = self.log_dir / f"{self.name}.{self.starts}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> float | None:
        if self.process is None or self.process.poll() is not None:
            return None
        value = rss_mb(self.process.pid)
        if value is not None:
            self.rss_peak_mb = max(self.rss_peak_mb, value)
        self.cpu_now_s = cpu_s(self.process.pid) or self.cpu_now_s
        return value

    def exited(self, now_s: float) -> Crash | None:
        """A crash if the process has exited (it is never meant to before the end)."""
        if self.process is None or self.process.poll() is None:
            return None
        assert self.log is not None
        crash = Crash(self.name, self.process.returncode, now_s, str(self.log), tail(self.log))
        self.crashes.append(crash)
        self.process = None
        self.cpu_done_s += self.cpu_now_s
        self.cpu_now_s = 0.0
        return crash

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the services' clean shutdown), SIGKILL after ``timeout_s``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.shutdown_code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.shutdown_code = -int(signal.SIGKILL)
        return self.shutdown_code

    def summary(self) -> dict[str, Any]:
        growth = None
        if self.rss_start_mb and self.rss_end_mb is not None:
            growth = round(100.0 * (self.rss_end_mb - self.rss_start_mb) / self.rss_start_mb, 2)
        return {
            "rss_start_mb": None if self.rss_start_mb is None else round(self.rss_start_mb, 1),
            "rss_end_mb": None if self.rss_end_mb is None else round(self.rss_end_mb, 1),
            "rss_growth_pct": growth,
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "cpu_s": round(self.cpu_done_s + self.cpu_now_s, 1),
            "starts": self.starts,
            "crashes": len(self.crashes),
            "shutdown_exit_code": self.shutdown_code,
        }


def wait_for_port(port: int, service: Service, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process is None or service.process.poll() is not None:
            lines = tail(service.log) if service.log else []
            raise RuntimeError(f"{service.name} exited before listening on {port}: " + "\n".join(lines))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{service.name}: nothing listens on port {port} after {timeout_s:.0f} s")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without volcast's overrides (a VOLCAST_REDIS_URL would point the services
    at another Redis than the soak's), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLCAST_")}
    env.update(extra)
    return env
