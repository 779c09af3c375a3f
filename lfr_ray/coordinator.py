"""The statistics coordinator: per-block statistics, phase selections and the metrics log.

A plain class (no Ray import) that ``pipeline.py`` runs as a named Ray actor, one per run.
Training workers send it per-block losses in batches without waiting; at a phase boundary rank 0
asks it for the phase's block set; at a checkpoint rank 0 takes its ``state_dict`` into the
checkpoint so statistics and model weights always describe the same step.

Writes, under the run directory: ``selections/phase-NN.parquet`` (+ ``.json``: strategy, quotas, domain mix),
``stats/phase-NN.npz`` (+ ``.json`` summary), ``stats/history-NN.parquet`` (every loss recorded in
phase NN; the in-memory history is drained there at each phase end, so the actor and its
checkpoints hold at most one phase of history) and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lfr_ray.paths import RunPaths, atomic_write_bytes, atomic_write_json, atomic_write_parquet
from lfr_ray.selection import select_diverse, select_forgotten_first, select_hardest, select_sample
from lfr_ray.stats import SOURCE_NAMES, BlockStats


def read_history(run_dir: str | Path):
    """Every loss recorded in a run's finished phases, as one ``pyarrow.Table`` in phase order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(run_dir) / "stats").glob("history-*.parquet"))
    if not files:
        from lfr_ray.stats import HISTORY_SCHEMA

        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])


def _domain_codes(domains: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct domain names and each block's index into them."""
    import pyarrow as pa

    if isinstance(domains, (pa.Array, pa.ChunkedArray)):
        arr = domains.combine_chunks() if isinstance(domains, pa.ChunkedArray) else domains
        if not pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_encode()
        dictionary = np.array(arr.dictionary.to_pylist(), dtype=str)
        order = np.argsort(dictionary, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return dictionary[order], rank[arr.indices.to_numpy()]
    names, codes = np.unique(np.asarray(domains), return_inverse=True)
    return names.astype(str), codes


class Coordinator:
    """Holds ``BlockStats`` for every training block of one run.

    Domains are kept as codes into their sorted names (1 byte per block for up to 256 domains, instead of a
    Python string per block): with the 23-byte statistics, 24 bytes per block plus the history. ``domains``
    is one label per block: a numpy array, or an Arrow array (ideally dictionary-encoded, as the driver
    sends it: 4 bytes per block through the object store rather than a pickled string each).
    """

    def __init__(self, run_dir: str, num_blocks: int, domains: np.ndarray, seed: int = 0):
        self.paths = RunPaths(Path(run_dir))
        names, codes = _domain_codes(domains)
        self.domain_names = names
        self.domain_codes = codes.astype(np.uint8 if len(names) <= 256 else np.int32)
        self.seed = seed
        self.stats = BlockStats(num_blocks)
        self.selected_phases: set[int] = set()

    @property
    def domains(self) -> np.ndarray:
        """Each block's domain name (built on demand)."""
        return self.domain_names[self.domain_codes]

    def _composition(self, ids: np.ndarray | None) -> dict[str, int]:
        """Blocks per domain among ``ids`` (None: all blocks), for the domains present, sorted by domain."""
        codes = self.domain_codes if ids is None else self.domain_codes[ids]
        counts = np.bincount(codes, minlength=len(self.domain_names))
        return {str(d): int(c) for d, c in zip(self.domain_names, counts) if c}

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

    def phase_blocks(self, phase_idx: int, kind: str, keep_frac: float, *, strategy: str = "hardest",
                     temperature: float = 1.0, group_by: str = "domain",
                     groups: np.ndarray | None = None) -> np.ndarray:
        """Block ids of a phase's set: all blocks, or a focus phase's selection by ``strategy``.

        A focus selection is computed once, from the statistics at the phase's start, and written
        atomically; asked again (a resumed run) it is read back, never recomputed from statistics
        that already hold losses recorded inside the phase. ``groups`` (one int label per block) are
        the clusters for ``diverse`` with ``group_by="cluster"``; only needed the first time.
        """
        if kind != "focus":
            return np.arange(self.stats.num_blocks, dtype=np.int64)
        path = self.paths.selection(phase_idx)
        if path.exists():
            import pyarrow.parquet as pq

            ids = pq.read_table(path, columns=["block_id"])["block_id"].to_numpy()
        else:
            ids, info = self._select(phase_idx, keep_frac, strategy, temperature, group_by, groups)
            self._write_selection(phase_idx, ids, keep_frac, info, groups if group_by == "cluster" else None)
        if phase_idx not in self.selected_phases:
            self.stats.mark_selected(ids)
            self.selected_phases.add(phase_idx)
        return ids

    def _select(self, phase_idx: int, keep_frac: float, strategy: str, temperature: float, group_by: str,
                groups: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Dispatch to the pure strategy (``selection.py``); returns the ids and what the json records about it."""
        latest = self.stats.latest_loss()
        # One seed per phase, so two sampled phases of a run draw differently.
        seed = int(np.random.SeedSequence([self.seed, phase_idx]).generate_state(1)[0])
        info: dict[str, Any] = {"strategy": strategy}
        if strategy == "hardest":
            ids = select_hardest(latest, keep_frac, seed=seed)
        elif strategy == "sample":
            ids = select_sample(latest, keep_frac, temperature=temperature, seed=seed)
            info.update(temperature=temperature, seed=seed)
        elif strategy == "forgotten-first":
            ids = select_forgotten_first(latest, self.stats.previous_loss(), keep_frac, seed=seed)
            forgotten = latest > self.stats.previous_loss()
            info.update(forgotten_available=int(forgotten.sum()), forgotten_selected=int(forgotten[ids].sum()))
        elif strategy == "diverse":
            if group_by == "cluster":
                if groups is None or len(groups) != self.stats.num_blocks:
                    raise ValueError(f"phase {phase_idx}: diverse by cluster needs one cluster label per block")
                ids, quotas = select_diverse(latest, keep_frac, np.asarray(groups), seed=seed)
                quotas = {str(g): q for g, q in quotas.items()}
                info["cluster_sizes"] = {str(g): int(c) for g, c in enumerate(np.bincount(groups)) if c}
            else:
                ids, quotas = select_diverse(latest, keep_frac, self.domain_codes, seed=seed)
                quotas = {str(self.domain_names[g]): q for g, q in quotas.items()}
            info.update(group_by=group_by, quotas=quotas)
        else:
            raise ValueError(f"unknown selection strategy {strategy!r}")
        return ids, info

    def _write_selection(self, phase_idx: int, ids: np.ndarray, keep_frac: float, info: dict[str, Any],
                         clusters: np.ndarray | None) -> None:
        import pyarrow as pa

        loss = self.stats.latest_loss()[ids]
        # Domain strings decoded from codes by Arrow (a numpy string array of millions of rows is slow to build).
        source = pa.DictionaryArray.from_arrays(pa.array(self.domain_codes[ids].astype(np.int32)),
                                                pa.array(self.domain_names.tolist())).cast(pa.string())
        columns = {"block_id": ids, "source": source, "latest_loss": loss}
        if clusters is not None:
            columns["cluster"] = np.asarray(clusters)[ids]
        table = pa.table(columns)
        sources = self.stats.last_source()[ids]
        atomic_write_json(
            self.paths.selection(phase_idx).with_suffix(".json"),
            {
                "phase_idx": phase_idx,
                **info,
                "keep_frac": keep_frac,
                "num_blocks": len(ids),
                "composition": self._composition(ids),
                "composition_all": self._composition(None),
                # which kind of loss the selection was made from, and how old (steps) the losses were
                "latest_loss_source": {name: int((sources == code).sum()) for code, name in enumerate(SOURCE_NAMES)},
                "latest_loss_step_range": [int(self.stats.last_step()[ids].min()), int(self.stats.last_step()[ids].max())],
            },
        )
        atomic_write_parquet(self.paths.selection(phase_idx), table)

    # -- phases, snapshots and resume ----------------------------------------------------------

    def end_phase(self, phase_idx: int, step: int) -> dict[str, Any]:
        """Spill the phase's history to Parquet and snapshot the statistics at the end of a phase.

        Idempotent: a phase replayed after a resume writes the same files again.
        """
        atomic_write_parquet(self.paths.history(phase_idx), self.stats.drain_history())
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
