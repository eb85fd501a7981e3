"""Arguments and helpers that several verbs share."""

from __future__ import annotations

import argparse
from pathlib import Path

from volcast.settings import Settings, load_settings


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config.yml"),
        metavar="FILE",
        help="settings file (default: config.yml)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load --config; a bad file raises ConfigError, which the CLI turns into exit code 2."""
    return load_settings(args.config)
