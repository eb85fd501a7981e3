"""Recorded trades as the simulator replays them: one tape per symbol, strings kept exactly.

A tape is read from the shared trades CSV format ``timestamp_ms,trade_id,price,amount,side``
(gzip or plain), where ``side`` is the taker side. Price and amount stay the text of the file so
that the frames the simulator sends carry exactly the recorded digits.

Rows go through the streamer's own trade check (streamer/trade_validation.py). The simulator is an
exchange, possibly a faulty one: a price or amount that is a number but cannot be real (negative,
zero, NaN, Infinity, absurdly large) is replayed as written, because that is what a faulty
exchange sends and what the streamer must withstand. A row it cannot replay at all (a timestamp
or id that is not an integer in range: the replay orders and pages by them; a side that is not
buy or sell; a price or amount that is not a number, such as ``abc``) is skipped at load,
counted in ``Tape.skipped`` and reported in one warning. Without it, REST answered 500 for
every range that held such a row.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamer.trade_validation import Refusal, unreadable

log = logging.getLogger(__name__)

# Longest first, so that ...USDT is not read as ...USD + T.
QUOTE_ASSETS: tuple[str, ...] = ("USDT", "USDC", "BUSD", "USD", "BTC", "ETH", "BNB", "EUR")

_PAIR = re.compile(r"^[A-Z0-9]{4,20}$")


@dataclass(frozen=True, slots=True)
class TapeTrade:
    """One trade as recorded; ``buyer_maker`` is Binance's ``m`` (taker side ``sell``)."""

    timestamp_ms: int
    trade_id: int
    price: str
    amount: str
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class Tape:
    """The trades of one symbol, sorted by (timestamp, id). ``symbol`` is ccxt's unified form."""

    symbol: str
    trades: tuple[TapeTrade, ...]
    skipped: tuple[str, ...] = ()
    """``file:line: why`` of each row that could not be replayed."""

    def __post_init__(self) -> None:
        if not self.trades:
            raise ValueError(f"tape for {self.symbol} has no trades")

    @property
    def market_id(self) -> str:
        """Binance's id of the symbol: ``BTC/USDT`` -> ``BTCUSDT``."""
        return market_id(self.symbol)

    @property
    def id_span(self) -> int:
        """How far ids move per loop so that they stay unique (and consecutive if the file's are)."""
        return self.trades[-1].trade_id - self.trades[0].trade_id + 1


def market_id(symbol: str) -> str:
    return symbol.replace("/", "").upper()


def split_pair(pair: str) -> str:
    """``XRPETH`` -> ``XRP/ETH`` using the known quote assets; ValueError if none fits."""
    pair = pair.upper()
    for quote in QUOTE_ASSETS:
        if pair.endswith(quote) and len(pair) > len(quote):
            return f"{pair[: -len(quote)]}/{quote}"
    raise ValueError(f"cannot split {pair!r} into base/quote (known quotes: {', '.join(QUOTE_ASSETS)})")


def symbol_from_filename(path: str | Path) -> str:
    """The unified symbol named in a trades file name, e.g. ``binance_XRPETH_trades_...`` -> ``XRP/ETH``.

    The name is cut at ``_``; the first part that is an upper-case pair ending in a known quote
    asset names the symbol. Pass ``--symbol`` when a file is named otherwise.
    """
    name = Path(path).name
    for part in name.split("_"):
        if _PAIR.match(part):
            try:
                return split_pair(part)
            except ValueError:
                continue
    raise ValueError(f"no symbol in file name {name!r}: name it like binance_BTCUSDT_trades.csv.gz or pass --symbol")


def normalise_symbol(text: str) -> str:
    """Accept ``BTC/USDT``, ``btc/usdt`` or ``BTCUSDT``."""
    text = text.strip().upper()
    if "/" in text:
        base, _, quote = text.partition("/")
        if not base or not quote:
            raise ValueError(f"bad symbol {text!r}")
        return f"{base}/{quote}"
    return split_pair(text)


def _open_text(path: Path) -> io.TextIOBase:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="")


def _rows(path: Path, skipped: list[str]) -> Iterator[TapeTrade]:
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["timestamp_ms", "trade_id", "price", "amount", "side"]:
            raise ValueError(f"{path}: expected header timestamp_ms,trade_id,price,amount,side, got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            ts, trade_id, price, amount, side = (row + [""] * 5)[:5]
            # Integer ids and times outside the streamer's ranges are replayed too: tests replay
            # synthetic times such as 1000 ms.
            refusal = unreadable(ts, trade_id, price, amount, side)
            if refusal is None and side not in ("buy", "sell"):  # the frame's "m" needs a taker side
                refusal = Refusal("side", "missing", "is missing: the replay needs buy or sell")
            if refusal is not None:
                skipped.append(f"{path}:{line_no}: {refusal}")
                continue
            yield TapeTrade(int(ts), int(trade_id), price, amount, side == "sell")


def load_tape(path: str | Path, symbol: str | None = None) -> Tape:
    """Read a trades file; the symbol comes from ``symbol`` or else the file name."""
    path = Path(path)
    unified = normalise_symbol(symbol) if symbol else symbol_from_filename(path)
    skipped: list[str] = []
    trades = sorted(_rows(path, skipped), key=lambda t: (t.timestamp_ms, t.trade_id))
    if skipped:
        log.warning(
            "%s: %d rows cannot be replayed and are skipped (first: %s)", path, len(skipped), "; ".join(skipped[:3])
        )
    ids = [t.trade_id for t in trades]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate trade ids")
    if ids != sorted(ids):
        raise ValueError(f"{path}: trade ids do not increase with time")
    return Tape(unified, tuple(trades), tuple(skipped))


def load_tapes(paths: Sequence[str | Path], symbols: Sequence[str] = ()) -> list[Tape]:
    """One tape per file; ``symbols`` (if given) names each file's symbol in order."""
    if symbols and len(symbols) != len(paths):
        raise ValueError(f"{len(symbols)} --symbol for {len(paths)} --trades: give one per file or none")
    tapes = [load_tape(p, symbols[i] if symbols else None) for i, p in enumerate(paths)]
    seen = [t.symbol for t in tapes]
    if len(set(seen)) != len(seen):
        raise ValueError(f"two files replay the same symbol: {seen}")
    return tapes
