"""Mistakes a user makes end in one line saying what is wrong and what to do, with the documented
exit code, and never in a traceback unless ``-v`` asks for it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import HAS_REDIS, free_port, start_server, stop_server

DATA = Path(__file__).parent / "data"
NEAR = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
BTC_TRADES = DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
EXIT_FAILED, EXIT_USAGE, EXIT_PIPE = 1, 2, 141


def volcast(*argv: str, cwd: Path, env: dict[str, str] | None = None, stdout: int | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOLCAST_")}
    return subprocess.run(
        [sys.executable, "-m", "volcast.cli", *argv], cwd=cwd, text=True, timeout=timeout, check=False,
        stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE, env={**clean, **(env or {})},
    )


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def write_config(tmp_path: Path, redis_url: str, name: str = "config.yml") -> Path:
    config = tmp_path / name
    config.write_text(
        "exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
        f"redis: {{url: '{redis_url}', key_prefix: test-cli-errors}}\n"
        f"refit: {{model_dir: '{tmp_path / 'models'}'}}\n"
        "model: {look_back: 16, hidden: 8}\n"
        "training: {epochs: 1, batch_size: 256, patience: 0}\n",
        encoding="utf-8",
    )
    return config


@pytest.fixture(scope="module")
def binary_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("binary")
    raw = folder / "image.png"
    raw.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    zipped = folder / "zipped.csv.gz"
    zipped.write_bytes(gzip.compress(bytes(range(256)) * 40))
    return {"raw": raw, "gzip": zipped}


@pytest.mark.parametrize("kind", ["raw", "gzip"])
@pytest.mark.parametrize("verb", ["backtest", "train", "tune"])
def test_binary_bars_file(verb: str, kind: str, binary_files: dict[str, Path], tmp_path: Path) -> None:
    path = binary_files[kind]
    argv = {
        "backtest": ["backtest", str(path)],
        "train": ["train", "--bars", str(path), "--out", str(tmp_path / "m")],
        "tune": ["tune", str(path), "--trials", "1"],
    }[verb]
    done = volcast(*argv, cwd=tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED
    assert path.name in line and "bars CSV" in line, line


def two_bars(tmp_path: Path) -> Path:
    with gzip.open(NEAR, "rt", encoding="utf-8") as source:
        head = [next(source) for _ in range(3)]
    path = tmp_path / "binance-usdm_NEARUSDT_two.csv"
    path.write_text("".join(head), encoding="utf-8")
    return path


def test_backtest_on_two_bars(tmp_path: Path) -> None:
    path = two_bars(tmp_path)
    done = volcast("backtest", str(path), cwd=tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED
    assert "2 bars" in line and "too few" in line, line


def test_unexpected_error_is_one_line_and_verbose_raises_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A pure unit test of the CLI's last resort: a verb that fails in a way nobody foresaw."""
    from volcast import cli
    from volcast.commands import train

    def broken(_args: object) -> int:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(train, "main", broken)
    argv = ["train", "--bars", "x.csv", "--out", str(tmp_path)]
    assert cli.main(argv) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert "RuntimeError: something nobody foresaw" in line and "-v" in line
    with pytest.raises(RuntimeError):
        cli.main(["-v", *argv])


@pytest.fixture()
def closed_stdout() -> Iterator[int]:
    """A pipe whose reading end is closed before the command writes: every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "argv",
    [
        ["bars", "--trades", str(BTC_TRADES)],
        ["replay", "--trades", str(BTC_TRADES), "--port", "0", "--speed", "1"],
        ["status", "--json", "--config", "{config}"],
    ],
    ids=["bars", "replay", "status"],
)
def test_closed_stdout_is_no_error(argv: list[str], closed_stdout: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, "redis://127.0.0.1:6379/0")
    argv = [a.replace("{config}", str(config)) for a in argv]
    done = volcast(*argv, cwd=tmp_path, stdout=closed_stdout, timeout=60)
    assert done.returncode == EXIT_PIPE, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-3000:]


def test_refit_once_without_redis(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    done = volcast("refit", "--once", "--config", str(config), cwd=tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED
    assert "cannot reach Redis" in line and "VOLCAST_REDIS_URL" in line, line


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    if not HAS_REDIS:
        pytest.skip("needs redis-server")
    port = free_port()
    server = start_server(["redis-server", "--port", str(port), "--save", "", "--requirepass", "pw-cli"], port)
    try:
        yield port
    finally:
        stop_server(server)


@pytest.mark.parametrize("order", ["config-first", "config-after"])
def test_model_list_without_the_password(order: str, redis_with_password: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, f"redis://127.0.0.1:{redis_with_password}/0")
    argv = ["model", "--config", str(config), "list"] if order == "config-first" else [
        "model", "list", "--config", str(config)]
    done = volcast(*argv, cwd=tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED
    assert "requires a password" in line and "VOLCAST_REDIS_PASSWORD" in line, line
    allowed = volcast(*argv, cwd=tmp_path, env={"VOLCAST_REDIS_PASSWORD": "pw-cli"})
    assert allowed.returncode == 0, allowed.stderr
    assert "model store" in allowed.stdout


def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    done = volcast("--help", cwd=tmp_path)
    assert done.returncode == 0
    text = done.stdout
    assert "exit codes" in text.lower()
    for code in ("0", "1", "2", "3", "130", "141"):
        assert f"  {code} " in text, code
