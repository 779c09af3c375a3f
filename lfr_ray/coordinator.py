"""The statistics coordinator: per-block statistics, phase selections and the metrics log.

A plain class (no Ray import) that ``pipeline.py`` runs as a named Ray actor, one per run.
Training workers send it per-block losses in batches without waiting; at a phase boundary rank 0
asks it for the phase's block set; at a checkpoint rank 0 takes its ``state_dict`` into the
checkpoint so statistics and model weights always describe the same step.

Writes, under the run directory: ``selections/phase-NN.parquet`` (+ ``.json`` domain mix),
``stats/phase-NN.npz`` (+ ``.json`` summary), ``stats/history-NN.parquet`` (every loss recorded in
phase NN; the in-memory history is drained there at each phase end, so the actor and its
checkpoints hold at most one phase of history) and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lfr_ray.paths import RunPaths, atomic_write_bytes, atomic_write_json
from lfr_ray.selection import composition, select_hardest
from lfr_ray.stats import BlockStats


def read_history(run_dir: str | Path):
    """Every loss recorded in a run's finished phases, as one ``pyarrow.Table`` in phase order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(run_dir) / "stats").glob("history-*.parquet"))
    if not files:
        from lfr_ray.stats import HISTORY_SCHEMA

        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])


class Coordinator:
    """Holds ``BlockStats`` for every training block of one run."""

    def __init__(self, run_dir: str, num_blocks: int, domains: np.ndarray, seed: int = 0):
        self.paths = RunPaths(Path(run_dir))
        self.domains = np.asarray(domains)
        self.seed = seed
        self.stats = BlockStats(num_blocks)
        self.selected_phases: set[int] = set()

    # -- recording ---------------------------------------------------------------------------

    def record(self, block_ids: np.ndarray, losses: np.ndarray, phase_idx: int, step: int,
               source: str = "record") -> int:
        """Record a batch of losses; one call per flush interval per worker (never per block)."""
        self.stats.record(block_ids, losses, phase_idx=phase_idx, step=step, source=source)
        return len(block_ids)

    def record_many(self, batches: list[tuple[np.ndarray, np.ndarray, int, int]], source: str = "record") -> int:
        """Record several ``(block_ids, losses, phase_idx, step)`` batches in one actor call."""
        for block_ids, losses, phase_idx, step in batches:
            self.stats.record(block_ids, losses, phase_idx=phase_idx, step=step, source=source)
        return sum(len(b[0]) for b in batches)

    # -- selection ---------------------------------------------------------------------------

    def phase_blocks(self, phase_idx: int, kind: str, keep_frac: float) -> np.ndarray:
        """Block ids of a phase's set: all blocks, or a focus phase's selection.

        A focus selection is computed once, from the statistics at the phase's start, and written
        atomically; asked again (a resumed run) it is read back, never recomputed from statistics
        that already hold losses recorded inside the phase.
        """
        if kind != "focus":
            return np.arange(self.stats.num_blocks, dtype=np.int64)
        path = self.paths.selection(phase_idx)
        if path.exists():
            import pyarrow.parquet as pq

            ids = pq.read_table(path, columns=["block_id"])["block_id"].to_numpy()
        else:
            ids = select_hardest(self.stats.latest_loss(), keep_frac, seed=self.seed)
            self._write_selection(phase_idx, ids, keep_frac)
        if phase_idx not in self.selected_phases:
            self.stats.mark_selected(ids)
            self.selected_phases.add(phase_idx)
        return ids

    def _write_selection(self, phase_idx: int, ids: np.ndarray, keep_frac: float) -> None:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        loss = self.stats.latest_loss()[ids]
        table = pa.table({"block_id": ids, "source": self.domains[ids].astype(str), "latest_loss": loss})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_json(
            self.paths.selection(phase_idx).with_suffix(".json"),
            {
                "phase_idx": phase_idx,
                "strategy": "hardest",
                "keep_frac": keep_frac,
                "num_blocks": len(ids),
                "composition": composition(ids, self.domains),
                "composition_all": composition(np.arange(len(self.domains)), self.domains),
            },
        )
        atomic_write_bytes(self.paths.selection(phase_idx), buf.getvalue())

    # -- phases, snapshots and resume ----------------------------------------------------------

    def end_phase(self, phase_idx: int, step: int) -> dict[str, Any]:
        """Spill the phase's history to Parquet and snapshot the statistics at the end of a phase.

        Idempotent: a phase replayed after a resume writes the same files again.
        """
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(self.stats.drain_history(), buf)
        atomic_write_bytes(self.paths.history(phase_idx), buf.getvalue())
        path = self.paths.stats_snapshot(phase_idx)
        self.stats.save(path)
        summary = {"phase_idx": phase_idx, "step": step, **self.stats.summary()}
        atomic_write_json(path.with_suffix(".json"), summary)
        return summary

    def state_dict(self) -> dict[str, np.ndarray]:
        state = self.stats.state_dict()
        state["coordinator_selected_phases"] = np.array(sorted(self.selected_phases), dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], step: int) -> None:
        """Restore statistics as of checkpoint ``step`` and drop metrics rows logged after it."""
        state = dict(state)
        self.selected_phases = set(state.pop("coordinator_selected_phases", np.array([], dtype=np.int64)).tolist())
        self.stats.load_state_dict(state)
        self._truncate_metrics(step)

    def reset(self) -> None:
        """A fresh run: empty statistics and metrics log."""
        self.stats = BlockStats(self.stats.num_blocks)
        self.selected_phases = set()
        if self.paths.metrics.exists():
            self.paths.metrics.unlink()

    def sync(self) -> int:
        """Returns once every call sent before it by the same caller has been applied."""
        return self.stats.num_records_total()

    def summary(self) -> dict[str, Any]:
        return self.stats.summary()

    def frame(self):
        """Per-block statistics as a pandas DataFrame (for notebooks and reports)."""
        return self.stats.to_frame(self.domains)

    # -- metrics log -------------------------------------------------------------------------

    def log_metrics(self, row: dict[str, Any]) -> None:
        self.paths.metrics.parent.mkdir(parents=True, exist_ok=True)
        with open(self.paths.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        if not self.paths.metrics.exists():
            return
        kept = [
            line for line in self.paths.metrics.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_bytes(self.paths.metrics, ("\n".join(kept) + "\n" if kept else "").encode())
