"""The worker's held bars: the matrix (pure) and its top-up from real Redis, on real bars.

Every history the worker predicts from must equal the bars in Redis, whichever way it was read:
afresh (start, restart, a feed not seen for long), one new bar (the usual boundary), the bars
since the last one held (a gap: another worker had the feed), or a one-off read (an old event).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import MINUTE, NEAR, delete_prefix, feeds_of, settings_for, symbol_bars, write_bars

from forecaster.bar_matrix import COLUMNS, BarMatrix, StoredBatch
from forecaster.bar_reader import BarHistories, Histories
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray, IntArray
from streamer.announce import event_fields
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

LOOK_BACK = 50
FEED = Feed("binance", "NEAR/USDT", MINUTE)
OTHER = Feed("binance", "ALGO/USDT", MINUTE)


def columns_of(frame: BarFrame) -> tuple[IntArray, FloatArray]:
    return frame.open_time_ms, np.stack([getattr(frame, c) for c in COLUMNS])


def assert_same_batch(got: Batch, want: Batch) -> None:
    for name in ("open_time_ms", "high", "low", "close", "volume", "trades", "buy_volume", "log_volume"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.interval_ms == want.interval_ms


# -- the matrix, pure --------------------------------------------------------------------------------


def test_appended_bars_are_a_view_equal_to_the_stacked_frames_across_shifts() -> None:
    near = BarFrame.from_csv(NEAR)
    # A second feed with other values over the same times.
    frames = {FEED: near, OTHER: replace(near, volume=near.volume[::-1].copy(), close=near.close[::-1].copy())}
    matrix = BarMatrix(MINUTE, LOOK_BACK, spare=8)
    start = 10
    for feed, frame in frames.items():
        times, values = columns_of(frame[:start])
        matrix.write(feed, times, values, continues=False)
    for t in range(start, 200):
        stamp = int(near.open_time_ms[t])
        values = np.stack([np.array([getattr(frames[f], c)[t] for f in frames]) for c in COLUMNS])
        matrix.append(list(frames), stamp, values)
        length = min(t + 1, LOOK_BACK)
        assert matrix.available(FEED, stamp) == t + 1 if t < LOOK_BACK else matrix.available(FEED, stamp) >= length
        feeds, batch = matrix.batch([OTHER, FEED], stamp, length)
        assert feeds == [FEED, OTHER]  # row order
        assert np.shares_memory(batch.volume, matrix._planes)  # a view, not a copy
        assert_same_batch(batch, Batch.stack([frames[f][: t + 1] for f in feeds], length))
        matrix.make_room(stamp + MINUTE)
    assert matrix.shifts > 10


def test_stored_log_volume_is_what_batch_computes() -> None:
    # The matrix stores log volume once per bar; features.Batch must compute the same thing.
    frame = BarFrame.from_csv(NEAR)[:300]
    matrix = BarMatrix(MINUTE, 300)
    matrix.write(FEED, *columns_of(frame), continues=False)
    _, batch = matrix.batch([FEED], int(frame.open_time_ms[-1]), 300)
    assert isinstance(batch, StoredBatch)
    plain = Batch.stack([frame])
    np.testing.assert_array_equal(batch.log_volume, plain.log_volume)


def test_holes_are_filled_as_empty_bars_with_the_last_close() -> None:
    frame = BarFrame.from_csv(NEAR)[:40]
    times, values = columns_of(frame)
    keep = np.ones(len(times), dtype=bool)
    keep[[5, 6, 20]] = False  # bars missing from Redis
    matrix = BarMatrix(MINUTE, 60)
    matrix.write(FEED, times[keep][:15], values[:, keep][:, :15], continues=False)
    matrix.write(FEED, times[keep][15:], values[:, keep][:, 15:], continues=True)
    got = matrix.frame(FEED, int(times[-1]))
    np.testing.assert_array_equal(got.open_time_ms, times)
    for i in (5, 6, 20):
        assert got.volume[i] == 0 and got.trades[i] == 0
        assert got.close[i] == got.open[i] == got.high[i] == got.low[i] == frame.close[4 if i < 20 else 19]
    np.testing.assert_array_equal(got.volume[keep], frame.volume[keep])


def test_a_rows_subset_is_copied_in_row_order() -> None:
    frame = BarFrame.from_csv(NEAR)[:100]
    feeds = [Feed("binance", f"S{i}/USDT", MINUTE) for i in range(5)]
    matrix = BarMatrix(MINUTE, 100)
    for i, feed in enumerate(feeds):
        times, values = columns_of(frame)
        matrix.write(feed, times, values * (i + 1), continues=False)
    picked, batch = matrix.batch([feeds[3], feeds[1]], int(frame.open_time_ms[-1]), 30)
    assert picked == [feeds[1], feeds[3]]
    np.testing.assert_array_equal(batch.volume, np.stack([frame.volume[-30:] * 2, frame.volume[-30:] * 4]))


# -- topped up from real Redis -------------------------------------------------------------------


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", redis=redis_config)
    yield s
    await delete_prefix(s)


def redis_frame(bars: Sequence[Bar], end: int, length: int) -> BarFrame:
    """The truth: the last ``length`` bars up to index ``end``, as the worker must see them."""
    return BarFrame.from_bars(bars[max(0, end + 1 - length):end + 1], MINUTE)


def assert_history(histories: Histories, feed: Feed, bars: Sequence[Bar], end: int) -> None:
    want = redis_frame(bars, end, LOOK_BACK)
    assert histories.length(feed) >= len(want)
    (_, batch), = histories.batches([feed], len(want))
    assert_same_batch(batch, Batch.stack([want]))


async def test_histories_read_afresh_then_one_bar_then_the_gap_then_afresh(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)[:2]
    series = {feed: symbol_bars(i)[:400] for i, feed in enumerate(feeds)}
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed])
        bars = BarHistories(redis, keys, MINUTE, LOOK_BACK)
        at = 100
        stamp = series[feeds[0]][at].open_time_ms
        # First sight (a start or a restart): the last look_back bars of each feed, read afresh.
        histories = await bars.at(feeds, stamp)
        assert histories.ready == feeds and bars.full_reads == 2
        for feed in feeds:
            assert_history(histories, feed, series[feed], at)
            assert histories.latest(feed)
        # The usual boundary: one new bar per feed, one XREAD.
        read = bars.bars_read
        for at in range(101, 106):
            histories = await bars.at(feeds, series[feeds[0]][at].open_time_ms)
            for feed in feeds:
                assert_history(histories, feed, series[feed], at)
        assert bars.bars_read - read == 5 * len(feeds) and bars.full_reads == 2
        # A gap: another worker had the next 7 bars; the bars since the last one held are read.
        at = 113
        histories = await bars.at(feeds, series[feeds[0]][at].open_time_ms)
        for feed in feeds:
            assert_history(histories, feed, series[feed], at)
        assert bars.full_reads == 2
        # A gap longer than look_back: read afresh.
        at = 113 + LOOK_BACK + 5
        histories = await bars.at(feeds, series[feeds[0]][at].open_time_ms)
        for feed in feeds:
            assert_history(histories, feed, series[feed], at)
        assert bars.full_reads == 4


def carried_by(feed: Feed, bar: Bar) -> dict[bytes, bytes]:
    """The fields of the bar's event as the streamer writes them (with the bar's values)."""
    fields = event_fields(feed, bar.open_time_ms, bar.status.value, bar=bar.to_fields())
    return {k.encode(): v.encode() for k, v in fields.items()}


async def test_a_bar_carried_by_its_event_is_not_read_and_is_the_bar_read(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)[:3]
    series = {feed: symbol_bars(i)[:200] for i, feed in enumerate(feeds)}
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:150])  # bars 150 on: only in the events
        bars = BarHistories(redis, keys, MINUTE, LOOK_BACK)
        await bars.at(feeds, series[feeds[0]][149].open_time_ms)
        read = bars.bars_read
        for at in range(150, 155):
            stamp = series[feeds[0]][at].open_time_ms
            histories = await bars.at(feeds, stamp, {f: carried_by(f, series[f][at]) for f in feeds})
            assert histories.ready == feeds  # not in Redis: taken from the events
            for feed in feeds:
                assert_history(histories, feed, series[feed], at)
        assert bars.bars_read == read and bars.bars_carried == 5 * len(feeds)
        # Events that carry no values (an older streamer, a restored bar), only some of them, or
        # values that are not numbers: the bar is read from Redis as before.
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][155:160])
        partial = {k: v for k, v in carried_by(feeds[1], series[feeds[1]][155]).items() if k != b"buy_volume"}
        garbage = {**carried_by(feeds[2], series[feeds[2]][155]), b"volume": b"lots"}
        histories = await bars.at(feeds, series[feeds[0]][155].open_time_ms, {feeds[1]: partial})
        for feed in feeds:
            assert_history(histories, feed, series[feed], 155)
        assert bars.bars_read == read + 3 and bars.bars_carried == 15
        histories = await bars.at(feeds, series[feeds[0]][156].open_time_ms,
                                  {feeds[0]: carried_by(feeds[0], series[feeds[0]][156]), feeds[2]: garbage})
        for feed in feeds:
            assert_history(histories, feed, series[feed], 156)
        # One event's values are not numbers: the boundary reads every bar (a rare case, made simple).
        assert bars.bars_read == read + 6 and bars.bars_carried == 15


async def test_an_old_event_is_served_from_its_own_bars_and_leaves_the_held_ones(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feed = feeds_of(settings)[0]
    series = symbol_bars(0)[:400]
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feed, series)
        bars = BarHistories(redis, keys, MINUTE, LOOK_BACK)
        for at in range(200, 251):
            await bars.at([feed], series[at].open_time_ms)
        # Replayed (a restart re-reads its pending events): bar 240, the matrix holds its window.
        old = await bars.at([feed], series[240].open_time_ms)
        assert_history(old, feed, series, 240)
        assert not old.latest(feed) and old.one_off is None
        # An event older than the matrix holds: a one-off read, the held bars untouched.
        older = await bars.at([feed], series[120].open_time_ms)
        assert_history(older, feed, series, 120)
        assert not older.latest(feed) and older.one_off is not None
        assert bars.matrix.last_ms(feed) == series[250].open_time_ms
        # The next boundary goes on from the held bars with one new bar.
        full_reads = bars.full_reads
        histories = await bars.at([feed], series[251].open_time_ms)
        assert_history(histories, feed, series, 251)
        assert histories.latest(feed) and bars.full_reads == full_reads


async def test_a_bar_missing_from_redis_is_not_ready_and_a_hole_is_filled(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feed = feeds_of(settings)[0]
    series = symbol_bars(0)[:300]
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feed, series[:100])
        bars = BarHistories(redis, keys, MINUTE, LOOK_BACK)
        await bars.at([feed], series[99].open_time_ms)
        # An event whose bar never reached Redis (the next bar did): not ready.
        await write_bars(redis, keys, feed, series[101:102])
        histories = await bars.at([feed], series[100].open_time_ms)
        assert histories.ready == []
        # The feed goes on: the hole at 100 becomes an empty bar carrying the last close.
        await write_bars(redis, keys, feed, series[102:104])
        histories = await bars.at([feed], series[103].open_time_ms)
        frame = histories.frame(feed)
        assert frame.volume[-4] == 0 and frame.close[-4] == float(series[99].close)
        np.testing.assert_array_equal(frame.volume[-3:], [float(b.volume) for b in series[101:104]])
        np.testing.assert_array_equal(frame.volume[:-4], [float(b.volume) for b in series[100 - len(frame) + 4:100]])


def test_bars_older_than_the_matrix_are_not_held_and_do_not_fail() -> None:
    near = BarFrame.from_csv(NEAR)
    matrix = BarMatrix(MINUTE, LOOK_BACK, spare=8)
    times, values = columns_of(near[1000:1100])
    matrix.write(FEED, times, values, continues=False)
    old_times, old_values = columns_of(near[:100])  # all before column 0 of the matrix
    matrix.write(OTHER, old_times, old_values, continues=False)
    assert matrix.last_ms(OTHER) is None and matrix.available(OTHER, int(old_times[-1])) == 0
    assert not matrix.fits(int(old_times[-1])) and matrix.fits(int(times[-1]))
    assert matrix.last_ms(FEED) == int(times[-1])


async def test_feeds_days_apart_are_each_served_from_their_own_bars(settings: Settings) -> None:
    """A feed far behind the others (its first bars closing in a burst, or a replay of another
    day) must not be written into the shared columns of the others: the forecaster crashed there
    with ``IndexError: index 0 is out of bounds`` (bar_matrix.write) in a three-feed soak."""
    keys = RedisKeys(settings.redis.key_prefix)
    ahead, behind = feeds_of(settings)[:2]
    near = symbol_bars(0)
    late = [replace(b, open_time_ms=b.open_time_ms + 2 * 86_400_000) for b in near[:2000]]
    early = near[:400]
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, ahead, late)
        await write_bars(redis, keys, behind, early)
        bars = BarHistories(redis, keys, MINUTE, LOOK_BACK)
        for at in (300, 301, 302, 340):
            histories = await bars.at([ahead], late[at].open_time_ms)
            assert_history(histories, ahead, late, at)
            assert histories.latest(ahead)
            behind_at = at - 200
            histories = await bars.at([behind], early[behind_at].open_time_ms)
            assert histories.ready == [behind]
            assert_history(histories, behind, early, behind_at)
            # Its newest bar: the forecast must be published, not treated as a replayed old event.
            assert histories.latest(behind)
        # Each feed was read afresh once, then one new bar (or the few missed) at a time: the one
        # behind is held in a matrix of its own, not read afresh at every bar.
        assert bars.full_reads == 2 and bars.apart == 1
        # Then the feed behind catches up to the others: held with them again.
        caught_up = [replace(b, open_time_ms=late[0].open_time_ms + i * MINUTE) for i, b in enumerate(early)]
        await redis.delete(keys.bars(behind))
        await write_bars(redis, keys, behind, caught_up[:342])
        histories = await bars.at([ahead, behind], late[341].open_time_ms)
        assert set(histories.ready) == {ahead, behind}
        assert_history(histories, behind, caught_up, 341)
        assert histories.latest(behind) and histories.one_off is None and bars.apart == 0
