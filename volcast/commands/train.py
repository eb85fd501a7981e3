"""``volcast train``: train a model on bars files and write its artifact."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from volcast.commands._model_config import BarsFileError, add_model_config_argument, model_settings, read_frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bars", type=Path, nargs="+", required=True, metavar="FILE",
                        help="bars CSV files (gzip or plain); files of one symbol are joined in time")
    parser.add_argument("--model", choices=("seed", "lstm", "ensemble"), default=None,
                        help="model to train (default: model.name from the config)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    parser.add_argument("--version", default=None, help="artifact version (default: UTC timestamp)")
    add_model_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    from forecaster.market import attach_configured, describe
    from forecaster.training import train_model

    model, training = model_settings(args)
    if args.model:
        model = model.model_copy(update={"name": args.model})
    if args.epochs:
        training = training.model_copy(update={"epochs": args.epochs})
    try:
        frames = read_frames(args.bars)
    except BarsFileError as exc:
        print(f"volcast train: {exc}", file=sys.stderr)
        return 1
    frames, coverage = attach_configured(frames, model.features)
    for line in describe(coverage or {}):
        print(line, file=sys.stderr)
    bars = sum(len(f) for _, f in frames)
    print(f"training {model.name} on {len(frames)} symbol(s), {bars} bars", file=sys.stderr)
    try:
        trained = train_model(frames, model, training)
    except ValueError as exc:
        print(f"volcast train: {exc}", file=sys.stderr)
        return 1
    version = args.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    trained.save(args.out, version)
    print(f"wrote {args.out} (version {version}, {trained.scores['train_seconds']:.1f}s)", file=sys.stderr)
    return 0
