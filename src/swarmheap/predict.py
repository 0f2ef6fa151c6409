"""Usage prediction per agent kind, shared by every process of a heap.

The model of a kind, after the Kubernetes VPA recommender: decayed
histograms with exponential buckets 5 % apart, of each completed agent's
peak bytes per partition and of its lifetime, and its block-size mix: the
decayed mean, over agents, of the share of each size class in the live
bytes the agent held when it completed. Decay is by weight: the n-th
sample of a kind weighs 2^(n / half_life), so a sample half_life agents old
counts half as much as the newest (half_life default 100); the weights are
rescaled before they overflow. Quantiles come from the cumulative weights.

Where it lives: one block per kind in `system`, named in the heap's registry
(the shared default's index, see registry.py), so every process reads and
updates the same model; an update is a copy and a compare-and-swap of the
registry entry, retried on a race, with no lock. Each process batches the
samples of its completions and folds them in once a kind's waiting samples
reach 1/STALE_SHARE of its model's count (each one until 16 samples, every
FLUSH_EVERY from 2048 on), every FLUSH_EVERY agents of all kinds, on full
sweeps, at predict() and at close, so the hot paths seldom touch the model
and another process reads a kind an eighth behind at most. At most
MAX_KINDS kinds are kept; beyond that the least recently updated goes.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import struct
import sys
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from swarmheap._core import CLASS_SLOTS, PARTITIONS, USAGE_ROW
from swarmheap.errors import PartitionFull, SwarmHeapError
from swarmheap.registry import Registry
from swarmheap.sizes import format_size, mix_label

if TYPE_CHECKING:
    from swarmheap.heap import Heap

log = logging.getLogger("swarmheap")

__all__ = ["Model", "Prediction", "Predictor"]

NBUCKETS = 400
RATIO = 1.05
BYTES_BASE = 256.0  # bucket 1: up to 256 bytes (bucket 0: none at all)
SECONDS_BASE = 0.001  # bucket 1: up to a millisecond
HALF_LIFE = 100.0  # agents; heap.set_prediction(half_life=...) sets another for the heap
MIN_HALF_LIFE, MAX_HALF_LIFE = 1.0, 1e6
_HALF_LIFE_NAME = "predict/half_life"  # registry: the heap's half-life, if one was set
CONFIDENT = 20  # samples before a prediction is trusted
MAX_KINDS = 128
FLUSH_EVERY = 256  # a flush is a registry swap (tens of microseconds): amortised over this many agents
# samples of a kind kept (the newest) while flushes find no room in `system`
# for the model's new block: a full partition must not grow them without end
MAX_PENDING = 4 * FLUSH_EVERY
# A kind's samples wait in their process for at most 1/STALE_SHARE of its
# model's count (FLUSH_EVERY at most): another process's read of a young
# model is a few samples behind, not 255 (a flush per completion until 16
# samples, about 8 more per doubling after, one per FLUSH_EVERY from 2048).
STALE_SHARE = 8
_MODEL_COUNT = "models/count"  # the kinds' models made (see Predictor._count_created); not under "model/"
# magic, version, nbuckets, half_life, weight base, total weight, count, updated, last peak (context)
_HEADER = struct.Struct("<4sHHdddQdd")
_MAGIC = b"SHPM"
_ROWS = len(PARTITIONS) + 1  # peak bytes per partition, then lifetime
_LN_RATIO = math.log(RATIO)
_ROW_BASES = np.array([BYTES_BASE] * len(PARTITIONS) + [SECONDS_BASE])  # a sample row's bucket bases
_ROW_BASES_LIST = _ROW_BASES.tolist()
_ROW_OFFSETS = np.arange(_ROWS) * NBUCKETS  # where each row's buckets start in the flattened histogram
_FIXED = 2 * len(PARTITIONS) + 1  # a USAGE_ROW's fields before its class bytes
# 1 had no block-size mix (read as a model without one); 2 wrote each row's
# 400 buckets whole (16.5 KB a kind, in `system`); 3 writes each row's run
# from its first weighted bucket to its last (_RUN), a few dozen for a kind
# whose agents are alike
_VERSION = 3
_RUN = struct.Struct("<HH")  # a row's first weighted bucket, and how many follow from it
_FEW = 4  # samples that Model.add folds one at a time (below, the array path)
_RESCALE_AT = 300  # weights are 2**((count - base) / half_life): rescaled past 2**300
_MAX_DECAY_EXPONENT = 2 * _RESCALE_AT  # a stored model's exponent past this is damage (2**600 is finite)


def _bucket(value: float, base: float) -> int:
    """Bucket 0 holds nothing at all (an agent that never used the
    partition); a value up to ``base`` is bucket 1, whose upper bound a
    quantile reports: a kind of 112-byte agents predicted 0 B when bucket 0
    also held everything under the base."""
    if value <= 0:
        return 0
    if value < base:
        return 1
    return min(NBUCKETS - 1, 1 + int(math.log(value / base) / _LN_RATIO))


def _buckets(values: np.ndarray, base: float | np.ndarray) -> np.ndarray:
    """_bucket for an array. A value under its base lands below bucket 1
    before the clip (log(value / base) < 0); zero, at log(1e-300), far
    below: the clip takes the first to 1 and the mask keeps zero at 0. Each
    numpy call here costs more than its arithmetic on a flush's rows."""
    b: np.ndarray = np.log(np.maximum(values, 1e-300) / base)
    b /= _LN_RATIO
    np.floor(b, out=b)
    b += 1
    np.clip(b, 1, NBUCKETS - 1, out=b)
    b[values <= 0] = 0
    return b.astype(np.intp)


def _upper(bucket: int, base: float) -> float:
    return base * RATIO**bucket


class Model:
    """One kind's decayed histograms."""

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        self.half_life = half_life
        self.base = 0.0  # the sample number whose weight is 1
        self.total = 0.0
        self.count = 0
        self.updated = 0.0
        self.last_peak = 0.0  # the newest sample's context peak, for the stats table
        self.hist = np.zeros((_ROWS, NBUCKETS), dtype=np.float64)
        # decayed sums of each class's share of an agent's live bytes, and of
        # the weights of the agents that held any
        self.classes = np.zeros(CLASS_SLOTS, dtype=np.float64)
        self.class_weight = 0.0
        # each row's weighted buckets [first, end), as encode writes them; None:
        # not known, read from hist at the next encode. A bound may hold a
        # bucket a rescale took to 0: its run then carries a zero, as decoded
        self.spans: list[tuple[int, int]] | None = [(0, 0)] * _ROWS

    def add(
        self,
        peaks: np.ndarray,
        lifetimes: np.ndarray,
        last_peak: float,
        class_bytes: np.ndarray | None = None,
    ) -> None:
        """Fold in n samples at once: ``peaks`` (n, partitions) bytes,
        ``lifetimes`` (n,) seconds, ``class_bytes`` (n, CLASS_SLOTS) live
        bytes by size class, oldest first."""
        n = len(lifetimes)
        if n == 0:
            return
        first = (self.count - self.base) / self.half_life
        if first + (n - 1) / self.half_life > _RESCALE_AT:  # rescale before the weights overflow
            shift = first
            self.hist /= 2.0**shift
            self.total /= 2.0**shift
            self.classes /= 2.0**shift
            self.class_weight /= 2.0**shift
            self.base += shift * self.half_life
        if n <= _FEW:
            few = [2.0 ** ((self.count + i - self.base) / self.half_life) for i in range(n)]
            self._add_few(peaks.tolist(), lifetimes.tolist(), few, class_bytes)
            self.total += sum(few)
        else:
            weights = 2.0 ** ((self.count + np.arange(n) - self.base) / self.half_life)
            self._add_many(peaks, lifetimes, weights, class_bytes)
            self.total += float(weights.sum())
        self.count += n
        self.last_peak = last_peak
        self.updated = time.time()

    def _add_few(
        self,
        peaks: list[list[float]],
        lifetimes: list[float],
        weights: list[float],
        class_bytes: np.ndarray | None,
    ) -> None:
        """add() of a few rows, one bucket at a time: a young kind flushes
        at each completion, and the array path's dozen numpy calls on one
        row cost 20-23 us (this: 5; 2026-12-07)."""
        hist, bases, spans = self.hist, _ROW_BASES_LIST, self.spans
        for row_peaks, lifetime, weight in zip(peaks, lifetimes, weights):
            for row, value in enumerate([*row_peaks, lifetime]):
                bucket = _bucket(value, bases[row])
                hist[row, bucket] += weight
                if spans is not None:
                    first, end = spans[row]
                    if first == end:
                        spans[row] = (bucket, bucket + 1)
                    elif bucket < first:
                        spans[row] = (bucket, end)
                    elif bucket >= end:
                        spans[row] = (first, bucket + 1)
        if class_bytes is not None:
            classes = self.classes
            for mix, weight in zip(class_bytes.tolist(), weights):
                held = sum(mix)
                if held > 0:  # an agent that held nothing at the end says nothing of its mix
                    share = weight / held
                    for slot, nbytes in enumerate(mix):
                        if nbytes:
                            classes[slot] += nbytes * share
                    self.class_weight += weight

    def _add_many(
        self,
        peaks: np.ndarray,
        lifetimes: np.ndarray,
        weights: np.ndarray,
        class_bytes: np.ndarray | None,
    ) -> None:
        if class_bytes is not None:
            held = class_bytes.sum(axis=1)
            some = held > 0  # an agent that held nothing at the end says nothing of its mix
            if some.any():
                shares = class_bytes[some] / held[some, None]
                self.classes += weights[some] @ shares
                self.class_weight += float(weights[some].sum())
        # every row's buckets in one pass and one weighted bincount (np.add.at
        # per row cost ten times more: a flush runs every FLUSH_EVERY agents)
        values = np.concatenate([peaks, lifetimes[:, None]], axis=1)
        flat = _buckets(values, _ROW_BASES) + _ROW_OFFSETS
        self.hist += np.bincount(flat.ravel(), np.repeat(weights, _ROWS), _ROWS * NBUCKETS).reshape(
            _ROWS, NBUCKETS
        )
        self.spans = None

    def quantile(self, row: int, q: float, base: float) -> float:
        if self.total <= 0:
            return 0.0
        cum = np.cumsum(self.hist[row])
        bucket = int(np.searchsorted(cum, q * cum[-1], side="left"))
        return 0.0 if bucket == 0 else _upper(bucket, base)

    def rehalve(self, half_life: float) -> None:
        """Decay from the next sample on with ``half_life``: the weights so
        far are scaled so that the newest sample's stays where it was next to
        the next one's (1), and the base moves to the next sample."""
        if half_life == self.half_life:
            return
        scale = 2.0 ** -((self.count - self.base) / self.half_life)
        self.hist *= scale
        self.total *= scale
        self.classes *= scale
        self.class_weight *= scale
        self.base = float(self.count)
        self.half_life = half_life

    def copy(self) -> Model:
        twin = Model(self.half_life)
        twin.base, twin.total, twin.count = self.base, self.total, self.count
        twin.updated, twin.last_peak, twin.class_weight = self.updated, self.last_peak, self.class_weight
        twin.hist, twin.classes = self.hist.copy(), self.classes.copy()
        twin.spans = None if self.spans is None else self.spans[:]
        return twin

    def mix(self) -> np.ndarray:
        """Each class slot's decayed mean share of an agent's live bytes."""
        if self.class_weight <= 0:
            return np.zeros(CLASS_SLOTS)
        return self.classes / self.class_weight

    def encode(self) -> bytes:
        head = _HEADER.pack(
            _MAGIC,
            _VERSION,
            NBUCKETS,
            self.half_life,
            self.base,
            self.total,
            self.count,
            self.updated,
            self.last_peak,
        )
        if self.spans is None:
            weighted = self.hist != 0
            any_weight = weighted.any(axis=1)
            firsts = np.where(any_weight, weighted.argmax(axis=1), 0).tolist()
            ends = np.where(any_weight, NBUCKETS - weighted[:, ::-1].argmax(axis=1), 0).tolist()
            self.spans = list(zip(firsts, ends))
        rows = self.hist.astype("<f8", copy=False)
        parts = [head]
        for row, (first, end) in zip(rows, self.spans):
            parts += (_RUN.pack(first, end - first), row[first:end].tobytes())
        parts.append(np.append(self.classes, self.class_weight).astype("<f8", copy=False).tobytes())
        return b"".join(parts)

    @staticmethod
    def _runs(data: bytes, at: int) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
        """The rows of a version-3 encoding from ``at``, where they end, and
        each row's run [first, end) (ValueError for a run that reaches past
        its row or the data)."""
        hist = np.zeros((_ROWS, NBUCKETS), dtype=np.float64)
        spans = []
        for row in hist:
            first, n = _RUN.unpack_from(data, at)
            at += _RUN.size
            if first + n > NBUCKETS or at + 8 * n > len(data):
                raise ValueError("a usage model's run of buckets is out of range")
            row[first : first + n] = np.frombuffer(data, dtype="<f8", offset=at, count=n)
            spans.append((first, first + n) if n else (0, 0))
            at += 8 * n
        return hist, at, spans

    @classmethod
    def decode(cls, data: bytes) -> Model:
        magic, version, nbuckets, half_life, base, total, count, updated, last = _HEADER.unpack_from(data, 0)
        if magic != _MAGIC or nbuckets != NBUCKETS or version not in (1, 2, _VERSION):
            raise ValueError("not a usage model")
        spans = None
        if version == _VERSION:
            hist, hist_end, spans = cls._runs(data, _HEADER.size)
        else:  # the whole rows of versions 1 and 2
            hist_end = _HEADER.size + _ROWS * NBUCKETS * 8
            if len(data) < hist_end:
                raise ValueError("not a usage model")
            hist = np.frombuffer(data, dtype="<f8", offset=_HEADER.size, count=_ROWS * NBUCKETS)
            hist = hist.reshape(_ROWS, NBUCKETS).copy()
        if len(data) != hist_end + (0 if version == 1 else (CLASS_SLOTS + 1) * 8):
            raise ValueError("not a usage model")
        # figures any process may have damaged: a NaN, an infinity or a
        # negative weight would make every prediction NaN, and a count past
        # 2**53 or a decay base far from it overflow the next fold
        scalars = (half_life, base, total, updated, last)
        if (
            not all(map(math.isfinite, scalars))
            or half_life <= 0
            or total < 0
            or count > 1 << 53
            or not -1.0 <= (count - base) / half_life <= _MAX_DECAY_EXPONENT
        ):
            raise ValueError("a usage model's figures are out of range")
        m = cls(half_life)
        m.base, m.total, m.count, m.updated, m.last_peak = base, total, count, updated, last
        m.hist, m.spans = hist, spans
        if version != 1:
            mix = np.frombuffer(data, dtype="<f8", offset=hist_end).copy()
            m.classes, m.class_weight = mix[:CLASS_SLOTS], float(mix[CLASS_SLOTS])
        weights = (m.hist, m.classes, np.array([m.class_weight]))
        if not all(np.isfinite(w).all() and (w >= 0).all() for w in weights):
            raise ValueError("a usage model's weights are out of range")
        return m


@dataclass(frozen=True)
class Prediction:
    """What a kind's agents needed: ``peak(partition, q)`` bytes and
    ``lifetime(q)`` seconds at quantile q, and ``mix``, their block-size mix;
    without samples it predicts nothing: None, None and {}."""

    kind: str
    samples: int
    confident: bool
    _model: Model | None
    _sizes: tuple[int, ...] = ()  # the heap's block size per class slot (0: runs of whole pages)
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def peak(self, partition: str = "context", q: float = 0.9) -> int | None:
        """Bytes at ``partition``'s peak that a q of the kind's agents stayed
        at or under (None without samples)."""
        if partition not in PARTITIONS:
            raise ValueError(f"unknown partition {partition!r}: use one of {', '.join(PARTITIONS)}")
        _check_q(q)
        if self._model is None:
            return None
        key = (partition, q)
        got: int | None = self._memo.get(
            key
        )  # spawn asks the same quantile of a cached prediction every time
        if got is None:
            got = self._memo[key] = math.ceil(
                self._model.quantile(PARTITIONS.index(partition), q, BYTES_BASE)
            )
        return got

    def lifetime(self, q: float = 0.9) -> float | None:
        """Seconds from spawn to end that a q of the kind's agents lived
        within (None without samples)."""
        _check_q(q)
        if self._model is None:
            return None
        return self._model.quantile(_ROWS - 1, q, SECONDS_BASE)

    @property
    def last_peak(self) -> int:
        """The newest sample's peak in `context`."""
        return 0 if self._model is None else int(self._model.last_peak)

    @property
    def mix(self) -> dict[int, float]:
        """The kind's block-size mix: block size (0: runs of whole pages) ->
        its mean share of the live bytes an agent held when it completed,
        largest first; classes under 1 % left out, {} without samples."""
        got: dict[int, float] | None = self._memo.get("mix")
        if got is None:
            got = {}
            if self._model is not None:
                shares = self._model.mix()
                for slot in np.argsort(-shares, kind="stable"):
                    if shares[slot] < 0.01 or slot >= len(self._sizes):
                        break
                    got[self._sizes[slot]] = float(shares[slot])
            self._memo["mix"] = got
        return dict(got)

    @property
    def class_mix(self) -> dict[int, float]:
        """``mix`` under the issue's name for it ("the class mix")."""
        return self.mix

    def __repr__(self) -> str:
        p50, p90, lifetime = self.peak("context", 0.5), self.peak("context", 0.9), self.lifetime(0.9)
        if p50 is None or p90 is None or lifetime is None:
            return f"<Prediction {self.kind!r}: no samples yet, predicts nothing>"
        mix = mix_label(self.mix)
        return (
            f"<Prediction {self.kind!r}: {self.samples} samples{', confident' if self.confident else ''}; "
            f"context peak P50 {format_size(p50)}, P90 {format_size(p90)}; lifetime P90 {lifetime:.3g} s"
            f"{'; mix ' + mix if mix else ''}>"
        )

    def top_classes(self, n: int = 3) -> list[int]:
        """The block sizes of the kind's ``n`` largest classes by share."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n is a count >= 1, not {n!r}")
        return list(self.mix)[:n]


def _check_q(q: float) -> None:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"q is a quantile in (0, 1], not {q!r}")


class Predictor:
    """A heap's models as this process sees them, and its unflushed samples."""

    def __init__(self, heap: Heap) -> None:
        self.heap = heap
        self.pending: dict[str, list[bytes]] = defaultdict(list)  # completed agents' USAGE_ROWs
        self.npending = 0
        # a note and a flush's taking of the samples, between this process's threads
        self.pending_lock = threading.Lock()
        self.cache: dict[str, Prediction] = {}  # what spawn() consults; refreshed by flushes (flush)
        self.plans: dict[str, tuple[int, bool]] = {}  # spawn's (reservation, own pages) per kind, as cache
        self.full_reported = False  # a full `system` is logged once, not at every completion
        self.steps: dict[str, int] = {}  # per kind: the waiting samples that flush (_flush_step)
        # per kind: the model this process wrote last, and its bytes: while
        # the registry holds those bytes, the next flush folds into a copy
        # of it instead of decoding them
        self.written: dict[str, tuple[bytes, Model]] = {}
        self.since_refresh = 0  # samples flushed since the cache was last emptied whole
        # completions to go before note() tries a flush again after one found
        # no room: each try decodes and encodes the models, on every complete()
        self.backoff = 0
        _LIVE.add(self)
        _flush_at_exit()

    def flush_quietly(self) -> None:
        """flush(), for when no caller is there to hear of a damaged registry
        (close, a finalizer, the process's exit): the samples are lost then."""
        if self.npending:
            try:
                self.flush()
            except SwarmHeapError:
                pass

    def flush_unless_full(self) -> None:
        """flush(), for completions and sweeps: with no room in `system` for
        a model's new block, the model stays as it was and the samples wait
        for the next flush (the newest MAX_PENDING of a kind). A complete()
        raised PartitionFull after its agent had been recycled, and a full
        sweep, the way out of a full heap, failed for want of room."""
        try:
            self.flush()
        except PartitionFull as exc:
            if not self.full_reported:
                log.warning("swarmheap: the usage models wait for room in 'system' to be updated: %s", exc)
                self.full_reported = True
            self.backoff = FLUSH_EVERY
            return
        self.full_reported = False
        self.backoff = 0

    def forget_pending(self) -> None:
        """Drop the unflushed samples: a forked child's copy of its parent's."""
        with self.pending_lock:
            self.pending = defaultdict(list)
            self.npending = 0

    def note(self, kind: str, final: dict[str, Any], row: bytes | None = None) -> None:
        """A completed (recycled, swept) agent's figures, as the binding's
        USAGE_ROW (``row``, from _owner_complete_row) or read from its final
        dict: a complete pays one append, and a flush one frombuffer."""
        if row is None:
            row = _row(final, self.heap._class_sizes)
        with self.pending_lock:
            pending = self.pending[kind]
            pending.append(row)
            self.npending += 1
            waiting = len(pending)
        if self.backoff:
            self.backoff -= 1
            return
        # every FLUSH_EVERY agents of all kinds, and once a kind's waiting
        # samples are its step (STALE_SHARE): a kind first noted here reads
        # its model once for it (it may be old already, in other processes)
        if self.npending >= FLUSH_EVERY:
            self.flush_unless_full()
            return
        step = self.steps.get(kind)
        if step is None:
            step = self.steps[kind] = _flush_step(self.cached(kind).samples)
        if waiting >= step:
            self.flush_unless_full()

    def set_half_life(self, half_life: float) -> None:
        """The heap's half-life, in agents, for every process's next fold."""
        Registry(self.heap).put(_HALF_LIFE_NAME, repr(float(half_life)).encode())
        self.cache.clear()

    def half_life(self, registry: Registry | None = None) -> float:
        """The half-life set for the heap (HALF_LIFE if none, or if damaged)."""
        data = (registry or Registry(self.heap)).get(_HALF_LIFE_NAME)
        try:
            value = float(data) if data else HALF_LIFE
        except ValueError:
            return HALF_LIFE
        return value if MIN_HALF_LIFE <= value <= MAX_HALF_LIFE else HALF_LIFE

    def flush(self) -> None:
        if not self.npending or self.heap.read_only or self.heap.closed:
            return
        with self.pending_lock:  # the samples are this flush's; notes from here on go to the next
            taken, self.pending = self.pending, defaultdict(list)
            self.npending = 0
        registry = Registry(self.heap)
        half_life = self.half_life(registry)  # once per flush: any process may have set it
        if len(self.steps) > 4 * MAX_KINDS:  # kinds long evicted: read again when noted
            self.steps.clear()
            self.written.clear()
        folded: dict[str, Model] = {}  # kind -> its model as this flush wrote it
        created = 0
        try:
            for kind, samples in taken.items():
                name = f"model/{kind}"
                while True:  # copy, update, compare-and-swap: retried if another process got there first
                    ref, data = registry.get_ref(name)
                    mine = self.written.get(kind)
                    if mine is not None and data is not None and data == mine[0]:
                        model = mine[1].copy()  # the one cached for spawn stays as it was
                    else:
                        model = _decoded(data, half_life)
                    model.rehalve(half_life)
                    peaks, lifetimes, class_bytes = _samples(samples)
                    model.add(peaks, lifetimes, float(peaks[-1, 0]), class_bytes)
                    encoded = model.encode()
                    if registry.swap(name, ref, encoded):
                        created += not data
                        self.written[kind] = (encoded, model)
                        break
                folded[kind] = model
                self.steps[kind] = _flush_step(model.count)
        finally:
            if len(folded) < len(taken):  # a flush that failed keeps what it did not fold for the next
                with self.pending_lock:
                    for kind, samples in taken.items():
                        if kind not in folded:
                            kept = self.pending[kind]
                            kept[:0] = samples
                            dropped = max(len(kept) - MAX_PENDING, 0)
                            del kept[:dropped]  # the oldest go: the model follows the newest
                            self.npending += len(samples) - dropped
        # what spawn cached: the kinds folded here at every flush, the rest
        # (other processes' folds) once per FLUSH_EVERY samples, as before
        # flushes followed each kind's step
        self.since_refresh += sum(len(samples) for samples in taken.values())
        if self.since_refresh >= FLUSH_EVERY:
            self.since_refresh = 0
            self.cache.clear()
            self.plans.clear()
        for kind in taken:  # a folded kind's model is the one just written: no read again at its next spawn
            written = folded.get(kind)
            if written is None:
                self.cache.pop(kind, None)
            else:
                self.cache[kind] = self._prediction(kind, written)
            self.plans.pop(kind, None)
        if created:
            self._count_created(registry, created)

    def _count_created(self, registry: Registry, created: int) -> None:
        """Count kinds' first models in the registry's _MODEL_COUNT, and past
        MAX_KINDS evict: a scan of the registry's names (which grow with
        the offloaded agents) then, not at every flush. The count is a
        trigger: a race or a kill between a model and its count leaves it
        off by a few, and each eviction writes the true one."""
        while True:
            ref, data = registry.get_ref(_MODEL_COUNT)
            count = int.from_bytes(data, "little") if data is not None and len(data) == 4 else 0
            count = min(count + created, 0xFFFFFFFF)
            if registry.swap(_MODEL_COUNT, ref, count.to_bytes(4, "little")):
                break
        if count > MAX_KINDS:
            registry.put(_MODEL_COUNT, self._evict(registry).to_bytes(4, "little"))

    def _evict(self, registry: Registry) -> int:
        """Evict the least recently updated kinds past MAX_KINDS; the kinds left."""
        names = registry.names("model/")
        if len(names) <= MAX_KINDS:
            return len(names)
        ages = []
        for name in names:
            _, data = registry.get_ref(name)
            ages.append((_decoded(data, HALF_LIFE).updated, name))
        for _, name in sorted(ages)[: len(names) - MAX_KINDS]:
            registry.remove(name)
        return MAX_KINDS

    def predict(self, kind: str) -> Prediction:
        """The kind's model as the heap holds it, this process's samples
        folded in first (if `system` has room for them: a read never fails for want of it)."""
        self.flush_unless_full()
        return self._read(kind)

    def _read(self, kind: str) -> Prediction:
        _, data = Registry(self.heap).get_ref(f"model/{kind}")
        model = _decoded(data, HALF_LIFE)  # the half-life of a model there is its own
        return self._prediction(kind, model)

    def _prediction(self, kind: str, model: Model) -> Prediction:
        if not model.count:  # none there, or a damaged one started again: no samples, no model
            return Prediction(kind, 0, False, None)
        return Prediction(kind, model.count, model.count >= CONFIDENT, model, self.heap._class_sizes)

    def cached(self, kind: str) -> Prediction:
        """predict(), remembered until this process flushes the kind, or
        FLUSH_EVERY samples of any kind: spawn's hot path reads the registry
        once per kind and refresh, not per spawn."""
        got = self.cache.get(kind)
        if got is None:
            got = self.cache[kind] = self._read(kind)  # no flush here: spawn must not write the registry
        return got

    def table(self) -> list[dict[str, Any]]:
        """Per kind: samples, predicted P50/P90 context peak, P90 lifetime, last actual peak, class mix."""
        out = []
        for kind in self.kinds():
            p = self._read(kind)
            out.append(
                {
                    "kind": kind,
                    "samples": p.samples,
                    "confident": p.confident,
                    "p50": p.peak("context", 0.5),
                    "p90": p.peak("context", 0.9),
                    "lifetime_p90": p.lifetime(0.9),
                    "last_peak": p.last_peak,
                    "mix": p.mix,
                }
            )
        return out

    def kinds(self) -> list[str]:
        return [n.split("/", 1)[1] for n in Registry(self.heap).names("model/")]


def _flush_step(count: int) -> int:
    """How many of a kind's samples wait before a flush, for a model of ``count``."""
    return min(FLUSH_EVERY, max(1, count // STALE_SHARE))


_ROW = struct.Struct(f"={len(USAGE_ROW)}d")


def _row(final: dict[str, Any], sizes: tuple[int, ...]) -> bytes:
    """A final dict's USAGE_ROW (what _owner_complete_row gives directly);
    ``sizes`` is the heap's block size per class slot."""
    held, peak = final["bytes"], final["peak"]
    slots = [0.0] * CLASS_SLOTS
    for size, nbytes in final.get("classes", {}).items():
        if size in sizes:
            slots[sizes.index(size)] = nbytes
    return _ROW.pack(
        *[held[p] for p in PARTITIONS], *[peak[p] for p in PARTITIONS], final["created_ns"], *slots
    )


def _samples(rows: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peak bytes per partition (what each held at the end, or its page peak
    if that was more), lifetimes and live bytes by class slot, from agents'
    USAGE_ROWs."""
    table = np.frombuffer(b"".join(rows), dtype=np.float64).reshape(len(rows), len(USAGE_ROW))
    parts = len(PARTITIONS)
    created = table[:, _FIXED - 1] / 1e9
    lifetimes = np.where(created > 0, np.maximum(time.time() - created, 0.0), 0.0)
    return np.maximum(table[:, :parts], table[:, parts : 2 * parts]), lifetimes, table[:, _FIXED:]


def _decoded(data: bytes | None, half_life: float) -> Model:
    if data is None:
        return Model(half_life)
    try:
        return Model.decode(data)
    except (ValueError, struct.error):
        return Model(half_life)  # a damaged model is started again, not trusted


# Samples are folded into the shared model in batches (a fold is a registry
# swap). A process that ended without close() folded in none of its last
# batch: a worker that completed 7 agents of a kind taught the model nothing.
# Now its heaps' samples go when it exits: atexit, and multiprocessing's own
# exit finalizers, which a forked or forkserver worker runs instead (it ends
# in os._exit, past atexit; and its start empties the finalizers it
# inherited, so they are set again after it). A heap dropped without close()
# folds its samples in when it is collected (Heap.__del__). A pool's workers
# that are terminated (SIGTERM) still lose their last batch: close the heap
# (or use it as a context manager) in the task.
_LIVE: weakref.WeakSet[Predictor] = weakref.WeakSet()
_exit_flush: tuple[int, Any] | None = None  # (pid, multiprocessing finalizer) once multiprocessing is loaded


def _flush_all() -> None:
    for predictor in list(_LIVE):
        predictor.flush_quietly()


def _flush_at_exit() -> None:
    global _exit_flush
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    if _exit_flush is None:  # once per process tree: the after-fork hooks are inherited
        util.register_after_fork(_flush_all, lambda _: _flush_at_exit())
    if _exit_flush is None or _exit_flush[0] != os.getpid() or not _exit_flush[1].still_active():
        _exit_flush = (os.getpid(), util.Finalize(None, _flush_all, exitpriority=0))


def _after_fork_in_child() -> None:
    for predictor in list(_LIVE):
        predictor.forget_pending()  # the parent's samples: the parent folds them in
    _flush_at_exit()


atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
