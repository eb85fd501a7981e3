"""A local exchange that speaks Binance spot's public API and replays recorded trades (see server.py)."""

from streamer.simulator.client_options import binance_client_options, deep_merge
from streamer.simulator.faults import FaultSpec, FaultSpecError, parse_faults
from streamer.simulator.flood import synthetic_tape
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import Tape, TapeTrade, load_tape, load_tapes, symbol_from_filename

__all__ = [
    "FaultSpec",
    "FaultSpecError",
    "ReplayServer",
    "Tape",
    "TapeTrade",
    "binance_client_options",
    "deep_merge",
    "load_tape",
    "load_tapes",
    "parse_faults",
    "symbol_from_filename",
    "synthetic_tape",
]
