"""Per-block training statistics: the memory of which blocks are hard and which were forgotten.

``BlockStats`` holds dense numpy arrays indexed by ``block_id`` (blocks have contiguous ids
``0..num_blocks-1``) and an append-only history of every recorded loss. Training workers send
batches of ``(block_id, loss)`` pairs (``record``); a scoring pass sends them with
``source="score"``; the pipeline marks focus subsets (``mark_selected``), snapshots the state
(``save``/``load``, atomic) and spills the history to Parquet per phase (``drain_history``).
It reads and writes nothing by itself except in ``save``/``load``. Plain numpy: no Ray, no torch;
the Ray actor is a thin wrapper around it.

Forgetting (LFR, Prakriya et al. 2024): a record whose loss is higher than the block's previous
record counts as a *forgetting* event; lower or equal counts as *learned*. Any two consecutive
records are compared, whatever their source, so a pipeline that mixes training-pass losses
(dropout, the model moves during the pass) with scoring-pass losses compares unlike things;
``last_source`` says which kind the latest is.

Sizing (the dense state, per block):

    latest_loss      float32   4   NaN = never recorded
    previous_loss    float32   4   NaN = fewer than two records
    last_step        int32     4   -1 = never recorded
    last_phase_idx   int16     2   -1 = never recorded
    last_source      int8      1   SOURCE_NONE / SOURCE_RECORD / SOURCE_SCORE
    num_records      uint16    2
    times_trained    uint16    2   records with source "record"
    times_selected   uint16    2
    times_forgotten  uint16    2
                              --
                              23 bytes/block: 10 M blocks = 230 MB; 306 M blocks = 7.0 GB

``times_learned`` is not stored: every record after a block's first is either learned or
forgotten, so ``times_learned = max(num_records - 1, 0) - times_forgotten``. Counters are uint16
(65,535 records per block, far above any LFR schedule); ``record``/``mark_selected`` raise
rather than wrap around. History costs 15 bytes per record (block_id int32, loss float32, step
int32, phase_idx int16, source int8), allocated in chunks of ``HISTORY_CHUNK_RECORDS``: one pass
over 10 M blocks adds 150 MB until ``drain_history`` hands it to the caller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

# Codes of ``forgetting_state()``.
NEVER = np.int8(0)
"""No record yet."""
ONCE = np.int8(1)
"""One record: nothing to compare with."""
LEARNED = np.int8(2)
"""Latest loss <= previous loss."""
FORGOTTEN = np.int8(3)
"""Latest loss > previous loss."""
FORGETTING_STATE_NAMES = ("never", "once", "learned", "forgotten")

# Codes of ``last_source`` and of the history's ``source`` column.
SOURCE_NONE = np.int8(-1)
SOURCE_RECORD = np.int8(0)
"""A loss from the training forward pass (also counts in ``times_trained``)."""
SOURCE_SCORE = np.int8(1)
"""A loss from a separate scoring pass (no training happened)."""
SOURCE_NAMES = ("record", "score")
_SOURCE_CODES = {"record": SOURCE_RECORD, "score": SOURCE_SCORE}

HISTORY_CHUNK_RECORDS = 1 << 20
"""Records per history chunk (15 MiB); memory grows by whole chunks."""

HISTORY_SCHEMA = pa.schema(
    [
        ("record_idx", pa.int64()),  # position in the run's sequence of records; survives drains
        ("block_id", pa.int64()),
        ("loss", pa.float32()),
        ("step", pa.int64()),
        ("phase_idx", pa.int32()),
        ("source", pa.dictionary(pa.int8(), pa.string())),
    ]
)

_STATE_VERSION = 1
_COUNTER_MAX = np.iinfo(np.uint16).max
_STEP_MAX = np.iinfo(np.int32).max
_PHASE_MAX = np.iinfo(np.int16).max

# name -> (dtype, initial value) of the dense per-block arrays
_DENSE = {
    "latest_loss": (np.float32, np.nan),
    "previous_loss": (np.float32, np.nan),
    "last_step": (np.int32, -1),
    "last_phase_idx": (np.int16, -1),
    "last_source": (np.int8, SOURCE_NONE),
    "num_records": (np.uint16, 0),
    "times_trained": (np.uint16, 0),
    "times_selected": (np.uint16, 0),
    "times_forgotten": (np.uint16, 0),
}
BYTES_PER_BLOCK = sum(np.dtype(dt).itemsize for dt, _ in _DENSE.values())  # 23

# name -> dtype of the history columns as stored in memory and in ``state_dict``
_HISTORY = {
    "block_id": np.int32,
    "loss": np.float32,
    "step": np.int32,
    "phase_idx": np.int16,
    "source": np.int8,
}
BYTES_PER_RECORD = sum(np.dtype(dt).itemsize for dt in _HISTORY.values())  # 15


class _History:
    """Append-only columns in fixed-size chunks, so appending never copies what is already stored."""

    def __init__(self, chunk_records: int = HISTORY_CHUNK_RECORDS) -> None:
        self.chunk_records = chunk_records
        self.chunks: list[dict[str, np.ndarray]] = []
        self.num_in_last = 0  # filled rows of the last chunk

    def __len__(self) -> int:
        if not self.chunks:
            return 0
        return (len(self.chunks) - 1) * self.chunk_records + self.num_in_last

    def nbytes(self) -> int:
        return len(self.chunks) * self.chunk_records * BYTES_PER_RECORD

    def append(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["block_id"])
        done = 0
        while done < n:
            if not self.chunks or self.num_in_last == self.chunk_records:
                self.chunks.append({k: np.empty(self.chunk_records, dt) for k, dt in _HISTORY.items()})
                self.num_in_last = 0
            take = min(n - done, self.chunk_records - self.num_in_last)
            chunk = self.chunks[-1]
            for k, values in columns.items():
                chunk[k][self.num_in_last : self.num_in_last + take] = values[done : done + take]
            self.num_in_last += take
            done += take

    def columns(self) -> dict[str, np.ndarray]:
        """All rows, concatenated into one array per column (a copy)."""
        parts = [
            {k: v[: self.chunk_records if i < len(self.chunks) - 1 else self.num_in_last] for k, v in c.items()}
            for i, c in enumerate(self.chunks)
        ]
        return {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0, dt) for k, dt in _HISTORY.items()}

    def clear(self) -> None:
        self.chunks = []
        self.num_in_last = 0


class BlockStats:
    """Dense per-block loss statistics plus the history of every record; see the module docstring."""

    def __init__(self, num_blocks: int) -> None:
        if int(num_blocks) != num_blocks or not 0 < num_blocks <= np.iinfo(np.int32).max:
            raise ValueError(
                f"num_blocks must be an integer in [1, 2**31 - 1], got {num_blocks!r}; "
                "beyond that, shard the statistics by block_id range"
            )
        self.num_blocks = int(num_blocks)
        self._a = {name: np.full(self.num_blocks, init, dtype=dt) for name, (dt, init) in _DENSE.items()}
        self._history = _History()
        self._num_records_drained = 0

    # ---------------------------------------------------------------- updates

    def record(
        self,
        block_ids: Any,
        losses: Any,
        *,
        phase_idx: int,
        step: int | np.ndarray,
        source: str = "record",
    ) -> None:
        """Record one loss per entry of ``block_ids``, in array order.

        ``step`` is one step for the whole batch or one per entry (a worker that buffers several
        steps before flushing sends them per entry). A block may appear more than once: that is
        several records in sequence, each compared with the one before it. Done by a stable sort
        on block_id, so each block's records sit together in their original order; the previous
        loss of a record is then its left neighbour (or the stored latest loss for the block's
        first record in the batch), and per-block counts are segment sums (``np.add.reduceat``).
        This costs one sort of the batch (a few ms for 64 k records) and is exact with
        duplicates, unlike ``arr[ids] = x`` (last write wins, no sequence) or ``np.add.at``
        (counts, but no comparison with the previous record).
        """
        code = _SOURCE_CODES.get(source)
        if code is None:
            raise ValueError(f"source must be one of {sorted(_SOURCE_CODES)}, got {source!r}")
        if not isinstance(phase_idx, (int, np.integer)) or not 0 <= phase_idx <= _PHASE_MAX:
            raise ValueError(f"phase_idx must be in [0, {_PHASE_MAX}], got {phase_idx!r}")
        ids = self._check_ids(block_ids)
        with np.errstate(over="ignore"):  # a float64 beyond float32 range becomes inf, reported below
            loss = np.asarray(losses, dtype=np.float32)
        if loss.shape != ids.shape:
            raise ValueError(f"losses must be a 1-D array as long as block_ids ({ids.size}), got shape {np.shape(losses)}")
        bad = ~np.isfinite(loss)
        if bad.any():
            where = np.flatnonzero(bad)[:5]
            raise ValueError(
                f"losses must be finite: {int(bad.sum())} are not, e.g. loss {loss[where].tolist()} "
                f"for block_ids {ids[where].tolist()}"
            )
        steps = self._check_steps(step, ids.size)
        n = ids.size
        if n == 0:
            return

        order = np.argsort(ids, kind="stable")
        ids_sorted, loss_sorted, steps_sorted = ids[order], loss[order], steps[order]
        is_first = np.empty(n, dtype=bool)
        is_first[0] = True
        np.not_equal(ids_sorted[1:], ids_sorted[:-1], out=is_first[1:])
        starts = np.flatnonzero(is_first)
        ends = np.append(starts[1:], n) - 1
        block = ids_sorted[starts]
        counts = ends - starts + 1

        a = self._a
        if int((a["num_records"][block].astype(np.int64) + counts).max()) > _COUNTER_MAX:
            raise ValueError(f"a block would exceed {_COUNTER_MAX} records (uint16 counters)")

        prev = np.empty(n, dtype=np.float32)
        prev[1:] = loss_sorted[:-1]
        prev[starts] = a["latest_loss"][block]
        rose = loss_sorted > prev  # False where prev is NaN: a first-ever record compares with nothing
        forgot = np.add.reduceat(rose.view(np.uint8), starts, dtype=np.int64)

        a["previous_loss"][block] = prev[ends]
        a["latest_loss"][block] = loss_sorted[ends]
        a["last_step"][block] = steps_sorted[ends]
        a["last_phase_idx"][block] = phase_idx
        a["last_source"][block] = code
        a["num_records"][block] += counts.astype(np.uint16)
        a["times_forgotten"][block] += forgot.astype(np.uint16)
        if code == SOURCE_RECORD:
            a["times_trained"][block] += counts.astype(np.uint16)

        self._history.append(
            {
                "block_id": ids,
                "loss": loss,
                "step": steps,
                "phase_idx": np.full(n, phase_idx, np.int16),
                "source": np.full(n, code, np.int8),
            }
        )

    def mark_selected(self, block_ids: Any) -> None:
        """Count one selection (into a focus subset) per entry; a repeated id counts each time."""
        ids = self._check_ids(block_ids)
        if ids.size == 0:
            return
        if ids.size == 1 or bool((ids[1:] > ids[:-1]).all()):  # what selection.* returns: no sort needed
            block, counts = ids, np.ones(ids.size, np.int64)
        else:
            block, counts = np.unique(ids, return_counts=True)
        selected = self._a["times_selected"]
        if int((selected[block].astype(np.int64) + counts).max()) > _COUNTER_MAX:
            raise ValueError(f"a block would exceed {_COUNTER_MAX} selections (uint16 counters)")
        selected[block] += counts.astype(np.uint16)

    def _check_ids(self, block_ids: Any) -> np.ndarray:
        ids = np.asarray(block_ids)
        if ids.ndim != 1:
            raise ValueError(f"block_ids must be a 1-D array, got shape {ids.shape}")
        if ids.size == 0:
            return ids.astype(np.int64)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"block_ids must be integers, got dtype {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_blocks:
            raise ValueError(
                f"block_ids must be in [0, {self.num_blocks}), got values from {low} to {high}"
            )
        return ids.astype(np.int64, copy=False)

    @staticmethod
    def _check_steps(step: Any, n: int) -> np.ndarray:
        steps = np.asarray(step)
        if not np.issubdtype(steps.dtype, np.integer):
            raise ValueError(f"step must be an integer or an integer array, got dtype {steps.dtype}")
        if steps.ndim == 0:
            steps = np.full(n, steps, dtype=np.int64)
        elif steps.shape != (n,):
            raise ValueError(f"step must be one integer or one per block_id ({n}), got shape {steps.shape}")
        if steps.size and (int(steps.min()) < 0 or int(steps.max()) > _STEP_MAX):
            raise ValueError(f"step must be in [0, {_STEP_MAX}], got values from {steps.min()} to {steps.max()}")
        return steps.astype(np.int32)

    # ---------------------------------------------------------------- per-block views (read-only)

    def _view(self, name: str) -> np.ndarray:
        view = self._a[name].view()
        view.flags.writeable = False
        return view

    def latest_loss(self) -> np.ndarray:
        """float32 per block, NaN where never recorded (a read-only view, no copy)."""
        return self._view("latest_loss")

    def previous_loss(self) -> np.ndarray:
        """float32 per block: the record before the latest, NaN with fewer than two records."""
        return self._view("previous_loss")

    def last_step(self) -> np.ndarray:
        return self._view("last_step")

    def last_phase_idx(self) -> np.ndarray:
        return self._view("last_phase_idx")

    def last_source(self) -> np.ndarray:
        """int8 per block: SOURCE_NONE, SOURCE_RECORD or SOURCE_SCORE."""
        return self._view("last_source")

    def num_records(self) -> np.ndarray:
        return self._view("num_records")

    def times_trained(self) -> np.ndarray:
        return self._view("times_trained")

    def times_selected(self) -> np.ndarray:
        return self._view("times_selected")

    def times_forgotten(self) -> np.ndarray:
        return self._view("times_forgotten")

    def times_learned(self) -> np.ndarray:
        """uint16 per block: records whose loss fell or stayed vs the record before (derived)."""
        compared = np.maximum(self._a["num_records"].astype(np.int32) - 1, 0)
        return (compared - self._a["times_forgotten"]).astype(np.uint16)

    def forgetting_state(self) -> np.ndarray:
        """int8 per block: NEVER, ONCE, LEARNED or FORGOTTEN (latest vs previous record)."""
        num = self._a["num_records"]
        state = np.where(num == 0, NEVER, ONCE).astype(np.int8)
        compared = num >= 2
        rose = self._a["latest_loss"] > self._a["previous_loss"]
        state[compared & rose] = FORGOTTEN
        state[compared & ~rose] = LEARNED
        return state

    # ---------------------------------------------------------------- summaries

    def num_records_total(self) -> int:
        """Records ever made, drained or not."""
        return self._num_records_drained + len(self._history)

    def memory_bytes(self) -> int:
        """Bytes held: the dense per-block arrays plus the allocated history chunks."""
        return sum(v.nbytes for v in self._a.values()) + self._history.nbytes()

    def summary(self) -> dict[str, Any]:
        """Plain-Python counts for logs and ``summary.json``."""
        state = self.forgetting_state()
        forgotten = self._a["times_forgotten"]
        recorded = state != NEVER
        num_recorded = int(recorded.sum())
        mean = float(self._a["latest_loss"][recorded].mean(dtype=np.float64)) if num_recorded else None
        return {
            "num_blocks": self.num_blocks,
            "recorded": num_recorded,
            "never_recorded": self.num_blocks - num_recorded,
            "learned": int((state == LEARNED).sum()),
            "forgotten_now": int((state == FORGOTTEN).sum()),
            "forgotten_at_least_once": int((forgotten >= 1).sum()),
            "forgotten_more_than_once": int((forgotten >= 2).sum()),
            "total_records": self.num_records_total(),
            "records_in_memory": len(self._history),
            "records_drained": self._num_records_drained,
            "mean_latest_loss": mean,
            "memory_bytes": self.memory_bytes(),
        }

    def to_frame(self, domains: np.ndarray | None = None) -> pd.DataFrame:
        """One row per block (for notebooks); ``domains`` (one label per block) adds a ``domain`` column."""
        a = self._a
        frame = pd.DataFrame(
            {
                "block_id": np.arange(self.num_blocks, dtype=np.int64),
                "latest_loss": a["latest_loss"],
                "previous_loss": a["previous_loss"],
                "last_step": a["last_step"],
                "last_phase_idx": a["last_phase_idx"],
                "last_source": pd.Categorical.from_codes(a["last_source"], SOURCE_NAMES),
                "num_records": a["num_records"],
                "times_trained": a["times_trained"],
                "times_selected": a["times_selected"],
                "times_forgotten": a["times_forgotten"],
                "times_learned": self.times_learned(),
                "forgetting_state": pd.Categorical.from_codes(self.forgetting_state(), FORGETTING_STATE_NAMES),
            }
        )
        if domains is not None:
            domains = np.asarray(domains)
            if domains.shape != (self.num_blocks,):
                raise ValueError(f"domains must hold one label per block ({self.num_blocks}), got shape {domains.shape}")
            frame["domain"] = domains
        return frame

    # ---------------------------------------------------------------- history

    def history_table(self) -> pa.Table:
        """The records not yet drained, in the order they were made (schema ``HISTORY_SCHEMA``)."""
        cols = self._history.columns()
        n = cols["block_id"].size
        source = pa.DictionaryArray.from_arrays(pa.array(cols["source"], pa.int8()), pa.array(SOURCE_NAMES))
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(self._num_records_drained, self._num_records_drained + n, dtype=np.int64)),
                pa.array(cols["block_id"].astype(np.int64)),
                pa.array(cols["loss"]),
                pa.array(cols["step"].astype(np.int64)),
                pa.array(cols["phase_idx"].astype(np.int32)),
                source,
            ],
            schema=HISTORY_SCHEMA,
        )

    def drain_history(self) -> pa.Table:
        """Return the in-memory history and forget it, so memory stays bounded.

        The caller writes the table (e.g. one Parquet file per phase) and then snapshots the
        stats; ``record_idx`` keeps counting across drains, so a spill written twice after a crash
        between the two can be de-duplicated on read.
        """
        table = self.history_table()
        self._num_records_drained += table.num_rows
        self._history.clear()
        return table

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything, as numpy arrays (``np.savez``-ready); the undrained history is included."""
        d = {"version": np.int64(_STATE_VERSION), "num_blocks": np.int64(self.num_blocks),
             "num_records_drained": np.int64(self._num_records_drained)}
        d = {k: np.asarray(v) for k, v in d.items()}
        d.update({name: arr.copy() for name, arr in self._a.items()})
        d.update({f"history_{k}": v for k, v in self._history.columns().items()})
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore from ``state_dict()`` output; checks keys, shapes, dtypes and record totals."""
        expected = {"version", "num_blocks", "num_records_drained", *_DENSE, *(f"history_{k}" for k in _HISTORY)}
        missing, extra = expected - set(d), set(d) - expected
        if missing or extra:
            raise ValueError(f"state_dict keys do not match: missing {sorted(missing)}, unexpected {sorted(extra)}")
        if int(d["version"]) != _STATE_VERSION:
            raise ValueError(f"state_dict version {int(d['version'])} is not the supported {_STATE_VERSION}")
        if int(d["num_blocks"]) != self.num_blocks:
            raise ValueError(f"state_dict is for {int(d['num_blocks'])} blocks, this BlockStats has {self.num_blocks}")
        for name, (dt, _) in _DENSE.items():
            if d[name].dtype != dt or d[name].shape != (self.num_blocks,):
                raise ValueError(f"state_dict['{name}'] must be {np.dtype(dt)} of shape ({self.num_blocks},), "
                                 f"got {d[name].dtype} {d[name].shape}")
        n_hist = d["history_block_id"].shape
        for k, dt in _HISTORY.items():
            if d[f"history_{k}"].dtype != dt or d[f"history_{k}"].shape != n_hist or len(n_hist) != 1:
                raise ValueError(f"state_dict['history_{k}'] must be 1-D {np.dtype(dt)} like history_block_id")
        drained = int(d["num_records_drained"])
        if int(d["num_records"].sum(dtype=np.int64)) != drained + n_hist[0]:
            raise ValueError("state_dict is inconsistent: sum(num_records) != num_records_drained + len(history)")
        self._a = {name: np.array(d[name], copy=True) for name in _DENSE}
        self._history = _History()
        self._history.append({k: d[f"history_{k}"] for k in _HISTORY})
        self._num_records_drained = drained

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` as an uncompressed ``.npz``, atomically (temp file, fsync, rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **self.state_dict())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BlockStats":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        stats = cls(int(d["num_blocks"]))
        stats.load_state_dict(d)
        return stats
