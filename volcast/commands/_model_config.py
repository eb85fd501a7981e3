"""Model and training settings for the offline verbs (train, backtest, tune).

These verbs need only the ``model`` and ``training`` sections, so they work without a config
file (defaults) and read ``--config`` when it is given or when ./config.yml exists.
"""

from __future__ import annotations

import argparse
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from volcast.commands.common import CONFIG_VARIABLE
from volcast.settings import ModelSettings, TrainingSettings, load_settings

if TYPE_CHECKING:
    from forecaster.frame import BarFrame


def add_model_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help="settings file for the model/training sections (default: $VOLCAST_CONFIG when set, else "
        "./config.yml if present)",
    )


def model_settings(args: argparse.Namespace) -> tuple[ModelSettings, TrainingSettings]:
    path: Path | None = args.config
    if path is None and os.environ.get(CONFIG_VARIABLE):
        path = Path(os.environ[CONFIG_VARIABLE])
    if path is None and Path("config.yml").exists():
        path = Path("config.yml")
    if path is None:
        return ModelSettings(), TrainingSettings()
    settings = load_settings(path)
    return settings.model, settings.training


def frame_key(path: Path) -> str:
    """A symbol key for a bars file: `binance-usdm_FILUSDT_1m_2023-02.csv.gz` -> `binance-usdm_FILUSDT`."""
    parts = path.name.split("_")
    return "_".join(parts[:2]) if len(parts) >= 2 else path.name.split(".")[0]


class BarsFileError(Exception):
    """A bars file that cannot be read; the message names the file and says what was expected."""


BARS_FORMAT = ("a bars CSV (gzip or plain text) with a header timestamp_ms,open,high,low,close,volume, "
               "e.g. from `volcast bars`")


def read_frame(path: Path) -> BarFrame:
    """``BarFrame.from_csv`` with every way a file can be wrong as one BarsFileError."""
    from forecaster.frame import BarFrame, FrameError

    try:
        return BarFrame.from_csv(path)
    except UnicodeDecodeError as exc:
        raise BarsFileError(
            f"{path}: not a bars CSV: binary content (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"give {BARS_FORMAT}") from None
    except (EOFError, zlib.error) as exc:
        raise BarsFileError(f"{path}: not a bars CSV: a damaged gzip file ({exc}); give {BARS_FORMAT}") from None
    except FrameError as exc:
        raise BarsFileError(f"{exc} (expected {BARS_FORMAT})") from None
    except OSError as exc:
        raise BarsFileError(f"{path}: cannot read it as a bars CSV: {exc.strerror or exc}") from None


def read_frames(paths: list[Path]) -> list[tuple[str, BarFrame]]:
    from forecaster.frame import BarFrame

    frames: dict[str, list[BarFrame]] = {}
    for path in paths:
        frames.setdefault(frame_key(path), []).append(read_frame(path))
    out = []
    for key, parts in frames.items():
        parts.sort(key=lambda f: int(f.open_time_ms[0]))
        out.append((key, parts[0] if len(parts) == 1 else BarFrame.concat(parts)))
    return out
