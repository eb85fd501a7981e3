"""The recorder's payloads go to its Redis script as arguments of their own (not escaped into the
script's JSON): byte-exact in the stream entry and the hash, once per call for both, across
calls, on one node and on the cluster."""

from __future__ import annotations

import uuid
from typing import Any, cast

import orjson
from stream_harness import StreamEntries

from forecaster import recorder as recorder_module
from forecaster.recorder import CHUNK, Recorder, Write
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

MINUTE = 60_000
# What JSON escaping would touch: quotes, a backslash, control characters, non-ASCII text; and a
# text that looks like a number (as payload it must stay text).
AWKWARD = ('{"note": "a \\"quoted\\" \\\\ back\\u0000slash", "text": "Zürich \u2603", "n": 1}'.encode(),
           b"12", b"")


def test_a_payload_shared_by_two_writes_is_one_argument_named_by_its_place() -> None:
    shared, other = b'{"a": "\\"x\\""}', b"[1]"
    writes: list[Write] = [["x", "k1", "1-0", "v", "1", "json", shared], ["h", "k2", "v", "1", "json", shared],
                           ["h", "k3", "json", other], ["i", "k4", "guarded", "1"]]
    args = recorder_module._script_args(writes)
    assert args[1:] == [shared, other]  # ARGV[3] and ARGV[4]
    assert orjson.loads(args[0]) == [["x", "k1", "1-0", "v", "1", "json", 3], ["h", "k2", "v", "1", "json", 3],
                                     ["h", "k3", "json", 4], ["i", "k4", "guarded", "1"]]
    assert writes[0][-1] is shared  # the writes are left as they were (a retry encodes them again)


async def test_payloads_are_written_byte_exact_across_calls(redis_config: dict[str, Any]) -> None:
    settings = RedisSettings(**redis_config)
    keys = RedisKeys(f"test-rec-{uuid.uuid4().hex[:8]}")
    feeds = [Feed("binance", f"S{i}/USDT", MINUTE) for i in range(CHUNK // 2 + 30)]  # > CHUNK writes
    payloads = {f: AWKWARD[i % len(AWKWARD)] + str(i).encode() for i, f in enumerate(feeds)}
    writes: list[Write] = []
    for i, feed in enumerate(feeds):
        payload = bytes(payloads[feed])  # an object of its own per feed, shared by its two writes
        writes.append(["x", keys.predictions(feed), "1000-0", "volume", str(i), "json", payload])
        writes.append(["h", keys.prediction(feed), "volume", str(i), "json", payload])
    writes.append(["i", keys.scores(feeds[0]), "guarded", "3"])
    async with redis_client(settings) as redis:
        recorder = Recorder(redis, keys, kept=100, score_window=10)
        try:
            assert await recorder.apply(writes) == recorder_module.Recorded(len(writes), 0)
            for i, feed in enumerate(feeds):
                written = {b"volume": str(i).encode(), b"json": payloads[feed]}
                [(_, entry)] = cast(StreamEntries, await redis.xrange(keys.predictions(feed)))
                assert entry == written
                assert await redis.hgetall(keys.prediction(feed)) == written
            assert await redis.hget(keys.scores(feeds[0]), "guarded") == b"3"
            # The same writes again: the stream entries are there (replayed), the hashes the same.
            again = await recorder.apply(writes)
            assert again.replayed == len(feeds)
            assert await redis.hget(keys.prediction(feeds[-1]), "json") == payloads[feeds[-1]]
        finally:
            for feed in feeds:
                await redis.delete(keys.predictions(feed), keys.prediction(feed), keys.scores(feed))
