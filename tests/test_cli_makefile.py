"""The Makefile's set-up takes torch's CPU build from the CPU index when that index answers, and
from the default index when it does not.

A unit test of the recipe's decision: the real ``make`` runs the real recipe against a real local
HTTP index and an unresolvable one, with ``pip`` replaced by a script that records its arguments
(installing torch for real takes a minute and a gigabyte per case).
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


class _Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path.rstrip("/").endswith("/torch")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"<html><body></body></html>" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def local_index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    finally:
        server.shutdown()
        server.server_close()


def pip_calls(tmp_path: Path, torch_index: str) -> list[str]:
    """Run ``make venv`` with a recording pip; return the pip command lines in order."""
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$*" >> {log}\n', encoding="utf-8")
    # The recipe's own python (the probe, the torch check): this test's interpreter, which has torch.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n', encoding="utf-8")
    for name in ("pip", "python"):
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "-f", str(ROOT / "Makefile"), "-o", "pyproject.toml", "venv",
         f"VENV={venv}", "PYTHON=true", f"TORCH_INDEX={torch_index}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return log.read_text(encoding="utf-8").splitlines()


def torch_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if "torch==" in c]


def test_cpu_index_first_when_it_answers(tmp_path: Path, local_index: str) -> None:
    installs = torch_installs(pip_calls(tmp_path, local_index))
    assert installs == [f"install -q --index-url {local_index} torch==2.13.0"]


def test_default_index_when_the_cpu_index_does_not_answer(tmp_path: Path) -> None:
    installs = torch_installs(pip_calls(tmp_path, "https://cpu-index.invalid/whl/cpu"))
    assert installs == ["install -q torch==2.13.0"]


def test_project_after_torch(tmp_path: Path, local_index: str) -> None:
    calls = pip_calls(tmp_path, local_index)
    torch_at = calls.index(torch_installs(calls)[0])
    project_at = next(i for i, c in enumerate(calls) if "-e .[dev]" in c)
    assert torch_at < project_at
