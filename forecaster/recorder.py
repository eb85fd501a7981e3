"""Predictions, realised errors and live scores into Redis, after the predictions are published.

Per feed and boundary that is four writes (the predictions stream, the latest-prediction hash,
the realised stream and the scores hash) of about ten fields each. Queued through a redis-py
pipeline, 1000 feeds cost 100-300 ms of the worker's CPU, mostly redis-py packing 4000
commands argument by argument. Here the writes of a boundary go to Redis as a few JSON documents
(orjson, a few ms) that one Lua script (``WRITE_SCRIPT``) unpacks and applies: the same keys,
ids and fields as before, written by Redis itself. The large values (payloads, packed calibration
states) are not in those documents but script arguments of their own (``_script_args``).

On one Redis node a call holds writes of any keys (they are not passed as KEYS). On a Redis
Cluster a call runs on one node and may touch only keys that node holds: the writes are grouped
by the node that holds their slot, and the script (``CLUSTER_WRITE_SCRIPT``, flagged
``allow-cross-slot-keys``) is sent there by naming one of its keys (Redis refuses KEYS of several
slots, but lets a flagged script write undeclared keys of its node's slots): one call per master,
not one per feed (a 1000-feed boundary: 151 -> 71 ms, benchmarks/cluster.py). Should a slot move between the
grouping and the call (a resharding, a failover), the node refuses the key and the writes are
sent again one call per slot, each naming its keys; a HINCRBY that ran before the refusal then
counts twice (the ``guarded`` counter of a feed: for people, not for forecasts).

With a ``demoter`` (forecaster/demotion_store.py), every recorded prediction and realised error
also feeds its ``DemotionWatch``, and a demotion it decides is written before the next writes.
With a ``calibration`` (forecaster/calibration_store.py), each realised bar also teaches the
feed's band calibrator, whose new state is written with the rest; the realised entry then
records the band that was published and whether the bar fell inside it (live coverage).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from forecaster.calibration_store import Calibration
from forecaster.demotion_store import Demoter
from forecaster.live_scores import LiveScores, Realised
from forecaster.payload import Prediction
from volcast.connections import is_cluster
from volcast.keys import Feed, RedisKeys, slot_tag
from volcast.redis_text import as_text

log = logging.getLogger(__name__)

WRITE_SCRIPT = """
-- ARGV[1]: MAXLEN (approximate) of the streams; ARGV[2]: a JSON array of writes, each one of
--   ["x", key, id, field, value, ...]   XADD key MAXLEN ~ ARGV[1] id field value ...
--   ["h", key, field, value, ...]       HSET key field value ...
--   ["i", key, field, n]                HINCRBY key field n
-- Every value is a string, except that the last one of a write may be a number n: the value is
-- then ARGV[n] (a payload passed as an argument of its own, not escaped into the JSON).
-- Returns how many XADDs were refused as not newer than the stream's last entry (a replayed
-- event: that entry is already written); any other error ends the script with that error.
local maxlen = ARGV[1]
local replayed = 0
for _, w in ipairs(cjson.decode(ARGV[2])) do
  local reply
  local last = w[#w]
  if type(last) == 'number' then
    w[#w] = ARGV[last]
  end
  if w[1] == 'x' then
    reply = redis.pcall('XADD', w[2], 'MAXLEN', '~', maxlen, unpack(w, 3))
  elseif w[1] == 'h' then
    reply = redis.pcall('HSET', unpack(w, 2))
  else
    reply = redis.pcall('HINCRBY', w[2], w[3], w[4])
  end
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'equal or smaller', 1, true) then
      replayed = replayed + 1
    else
      return redis.error_reply(reply.err)
    end
  end
end
return replayed
"""

_Earlier = tuple[float, float, str, Mapping[float, float], Mapping[float, float] | None]
"""A prediction of a bar that closed: volume, last volume, model version, the band published,
the model's own band (the calibrator learns from it; None: no band)."""


def _raw_band(prediction: Prediction) -> Mapping[float, float] | None:
    raw = prediction.raw_quantiles if prediction.raw_quantiles is not None else prediction.quantiles
    return raw or None


CLUSTER_WRITE_SCRIPT = "#!lua flags=allow-cross-slot-keys\n" + WRITE_SCRIPT
"""The same script for a Redis Cluster node: its writes span the slots that node holds."""

CHUNK = 1000
"""Writes per script call: Redis serves other clients between two calls."""
SLICE = 100
"""Predictions turned into writes between two pauses (about 1-2 ms of CPU)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one boundary's record wrote."""

    writes: int
    replayed: int


Write = list[str | bytes]
"""One write of the script: [kind, key, ...]. Only the last value may be bytes (a payload)."""


def _flat(kind: str, key: str, fields: Mapping[str, str], *head: str) -> Write:
    out: Write = [kind, key, *head]
    for name, value in fields.items():
        out.append(name)
        out.append(value)
    return out


def _script_args(chunk: Sequence[Write]) -> list[bytes]:
    """The ARGV of one script call after MAXLEN: the JSON of the writes, then each bytes value a
    write ends with, which the JSON names by its place in ARGV.

    A payload (2-3 kB with the horizons) thus goes to Redis once, as it is, for both the stream
    entry and the hash that hold it, rather than twice and escaped into the JSON: at 1000 feeds
    that was 5 MB of JSON a boundary for orjson to write and the script's cjson to read.
    """
    extra: list[bytes] = []
    place: dict[int, int] = {}  # id of a payload -> its ARGV index (the chunk keeps it alive)
    doc: list[Sequence[str | bytes | int]] = []
    for write in chunk:
        last = write[-1]
        if last.__class__ is bytes:
            at = place.get(id(last))
            if at is None:
                extra.append(last)
                at = place[id(last)] = len(extra) + 2  # after ARGV[1] (MAXLEN) and ARGV[2] (this JSON)
            doc.append([*write[:-1], at])
        else:
            doc.append(write)
    return [orjson.dumps(doc), *extra]


class Recorder:
    """Turns each boundary's predictions into Redis writes; holds what the next boundary needs."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, *, kept: int, score_window: int) -> None:
        self.redis = redis
        self.keys = keys
        self.kept = kept
        self.scores = LiveScores(score_window)
        self._predicted: dict[Feed, Prediction] = {}
        self._sha: str | None = None
        self.demoter: Demoter | None = None  # set by the worker when self-demotion is on
        self.calibration: Calibration | None = None  # set by the worker: calibrated bands

    def forget(self, feed: Feed) -> None:
        self._predicted.pop(feed, None)

    async def writes(self, predictions: Sequence[Prediction], payloads: Sequence[bytes],
                     latest: Sequence[bool], last_volumes: Sequence[float],
                     pause: Callable[[], Awaitable[None]] | None = None) -> list[Write]:
        """The writes of one boundary's predictions (reads what this process does not hold).

        ``pause`` is awaited every SLICE predictions: the worker lets a boundary that is being
        predicted go first.
        """
        keys = self.keys
        earlier = await self._earlier(predictions)
        watch = self.demoter.watch if self.demoter is not None else None
        # For the watch, grouped: (version, bar, guarded) -> forecasts; (version, bar) -> realised.
        served: dict[tuple[str, int, bool], int] = {}
        errors: dict[tuple[str, int], tuple[list[float], list[float], list[float]]] = {}
        out: list[Write] = []
        for i, (p, payload, newest, actual) in enumerate(zip(predictions, payloads, latest, last_volumes, strict=True)):
            if pause is not None and i and not i % SLICE:
                await pause()
            fields = p.flat_fields(payload)  # its payload last: one script argument for both writes
            out.append(["x", keys.predictions(p.feed), f"{p.open_time_ms}-0", *fields])
            if newest:
                out.append(["h", keys.prediction(p.feed), *fields])
                self._predicted[p.feed] = p
            if p.guard is not None:
                # Per feed, beside its live scores (``volcast status`` shows them): how many of its
                # forecasts the output guard replaced, and the last reason.
                out.append(["i", keys.scores(p.feed), "guarded", "1"])
                out.append(["h", keys.scores(p.feed), "last_guard_reason", p.guard.reason,
                            "last_guard_ms", str(p.created_ms)])
            if watch is not None:
                made_by = p.guard.model_version if p.guard is not None else p.model_version
                if made_by != "baseline":
                    key = (made_by, p.open_time_ms, p.guard is not None)
                    served[key] = served.get(key, 0) + 1
            # A forecast made again from a revised bar (late_events.py): bar last_bar_ms was realised
            # (and taught the calibrators) with the first one; not a second time.
            if self.calibration is not None and not p.revision:
                self.calibration.closed(p.feed, p.last_bar_ms, actual)
            before = earlier.get(p.feed) if not p.revision else None
            if before is not None:
                band = before[3]
                realised = Realised(p.last_bar_ms, before[0], actual, before[1], before[2],
                                    band.get(0.1, math.nan), band.get(0.9, math.nan))
                if not realised.finite:
                    # An entry written before values were checked (NaN read back from Redis):
                    # it would turn the feed's running scores into NaN for good.
                    log.warning("%s: realised error of bar %d not recorded, a value is not finite: %r",
                                p.feed, p.last_bar_ms, realised)
                    continue
                out.append(_flat("x", keys.realised(p.feed), realised.to_fields(), f"{p.last_bar_ms}-0"))
                if watch is not None and realised.model_version != "baseline":
                    group = errors.get((realised.model_version, p.last_bar_ms))
                    if group is None:
                        group = errors[(realised.model_version, p.last_bar_ms)] = ([], [], [])
                    group[0].append(realised.predicted)
                    group[1].append(realised.actual)
                    group[2].append(realised.naive)
                if self.calibration is not None:
                    self.calibration.realised(p.feed, p.last_bar_ms, before[4], actual)
                scores = self.scores.add(p.feed, realised)
                scores["updated_ms"] = str(p.created_ms)
                out.append(_flat("h", keys.scores(p.feed), scores))
        if self.calibration is not None:
            out += self.calibration.writes()
        if self.demoter is not None:
            for (version, open_ms, guarded), count in served.items():
                self.demoter.watch.served(version, open_ms, guarded=guarded, count=count)
            for (version, open_ms), (forecasts, actuals, naives) in errors.items():
                self.demoter.watch.realised_many(version, open_ms, forecasts, actuals, naives)
            self.demoter.decide()
        return out

    async def _earlier(self, predictions: Sequence[Prediction]) -> dict[Feed, _Earlier]:
        """(volume, last_volume, version, published band, raw band) of each feed's prediction of
        the bar that just closed.

        Read back from Redis when this process did not make it (another worker of the group did,
        or this one restarted), together with the feed's window of realised errors and the state
        of its band calibrator.
        """
        earlier: dict[Feed, _Earlier] = {}
        calibration = self.calibration
        lookups: list[tuple[str, Feed]] = []
        reads = self.redis.pipeline(transaction=False)
        for p in predictions:
            closed = p.last_bar_ms
            mine = self._predicted.get(p.feed)
            if mine is not None and mine.open_time_ms == closed:
                earlier[p.feed] = (mine.volume, mine.last_volume, mine.model_version, mine.quantiles,
                                   _raw_band(mine))
            else:
                reads.xrange(self.keys.predictions(p.feed), min=f"{closed}-0", max=f"{closed}-0")
                lookups.append(("prediction", p.feed))
            if not self.scores.follows(p.feed, closed):
                reads.xrevrange(self.keys.realised(p.feed), max=f"{closed - 1}", count=self.scores.window - 1)
                lookups.append(("scores", p.feed))
            if calibration is not None and calibration.stale(p.feed, closed):
                reads.hgetall(self.keys.calibration(p.feed))
                lookups.append(("calibration", p.feed))
        if not lookups:
            return earlier
        replies: list[Any] = await reads.execute()
        for (kind, feed), reply in zip(lookups, replies, strict=True):
            if kind == "prediction" and reply:
                fields = reply[0][1]
                try:
                    band: Mapping[float, float] = {}
                    raw: Mapping[float, float] | None = None
                    if b"json" in fields:
                        made = Prediction.from_json(fields[b"json"])
                        band, raw = made.quantiles, _raw_band(made)
                    earlier[feed] = (float(fields[b"volume"]), float(fields[b"last_volume"]),
                                     fields.get(b"model_version", b"").decode(), band, raw)
                except (KeyError, ValueError):
                    log.warning("unreadable prediction entry for %s at %s", feed, reply[0][0])
            elif kind == "calibration":
                assert calibration is not None
                calibration.load_fields(feed, reply)
            elif kind == "scores":
                records = []
                for _, entry in reversed(reply):
                    try:
                        records.append(Realised.from_fields(entry))
                    except ValueError:
                        continue
                self.scores.load(feed, records)
        return earlier

    async def apply(self, writes: Sequence[Write]) -> Recorded:
        """Run the writes in Redis: one pipeline of script calls, CHUNK writes each.

        A pending demotion is written first: a Redis outage then retries both, and the writes
        are not applied twice. A demotion Redis refuses (a key of the wrong type) is logged and
        dropped rather than holding back the predictions' records.
        """
        if self.demoter is not None and self.demoter.pending is not None:
            try:
                await self.demoter.apply()
            except ResponseError as exc:
                log.error("demotion of model version %s not written: %s", self.demoter.pending.version, exc)
                self.demoter.pending = None
        if not writes:
            return Recorded(0, 0)
        cluster = is_cluster(self.redis)
        chunks = _by_node(self.redis, writes) if cluster else [
            ([], _script_args(writes[lo:lo + CHUNK])) for lo in range(0, len(writes), CHUNK)]
        reloaded = regrouped = False
        while True:
            sha = self._sha or await self._load()
            pipe = self.redis.pipeline(transaction=False)
            for keys, chunk in chunks:
                pipe.evalsha(sha, len(keys), *keys, str(self.kept), *chunk)
            try:
                replies: list[Any] = await pipe.execute()
            except NoScriptError:
                # Redis restarted (or SCRIPT FLUSH) since the script was loaded: load it again.
                if reloaded:
                    raise
                reloaded, self._sha = True, None
                continue
            except ResponseError as exc:
                if not cluster or regrouped or not _moved(exc):
                    raise
                log.info("a slot moved while recording (%s): writing slot by slot", exc)
                regrouped, chunks = True, _by_slot(writes)
                continue
            return Recorded(len(writes), sum(int(r) for r in replies))

    async def _load(self) -> str:  # on a cluster: on every master
        script = CLUSTER_WRITE_SCRIPT if is_cluster(self.redis) else WRITE_SCRIPT
        sha: Any = await self.redis.script_load(script)
        self._sha = as_text(sha)
        return self._sha


def _moved(error: ResponseError) -> bool:
    """A node refused a key it does not hold (now): the slot map changed."""
    text = str(error)
    return any(sign in text for sign in ("non local key", "MOVED", "ASK", "TRYAGAIN", "CROSSSLOT",
                                         "don't hash to the same slot"))


def _by_node(redis: Any, writes: Sequence[Write]) -> list[tuple[list[str], list[bytes]]]:
    """Script calls of a cluster: the writes of the keys one node holds (in order), CHUNK at most,
    each naming one of its keys, which routes it to that node."""
    groups: dict[str, list[Write]] = {}
    nodes: dict[str, str] = {}  # slot tag -> node: a feed's keys share one
    for write in writes:
        key = cast(str, write[1])
        tag = slot_tag(key)
        node = nodes.get(tag)
        if node is None:
            node = nodes[tag] = redis.get_node_from_key(key).name
        groups.setdefault(node, []).append(write)
    return [([cast(str, chunk[0][1])], _script_args(chunk))
            for group in groups.values() for chunk in (group[lo:lo + CHUNK] for lo in range(0, len(group), CHUNK))]


def _by_slot(writes: Sequence[Write]) -> list[tuple[list[str], list[bytes]]]:
    """Script calls of a cluster: the writes of one hash slot each (in order within the slot),
    CHUNK at most, with the keys they write."""
    groups: dict[str, list[Write]] = {}
    for write in writes:
        groups.setdefault(slot_tag(cast(str, write[1])), []).append(write)
    calls = []
    for group in groups.values():
        for lo in range(0, len(group), CHUNK):
            chunk = group[lo:lo + CHUNK]
            calls.append((list(dict.fromkeys(cast(str, w[1]) for w in chunk)), _script_args(chunk)))
    return calls
