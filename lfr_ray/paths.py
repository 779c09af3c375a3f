"""The one place that knows the run-directory layout, and atomic writes.

A run directory (``<run.root_dir>/<run.name>``) holds::

    config.yaml                 the resolved config of the run
    metrics.jsonl               one JSON row per log interval (written by the statistics actor)
    selections/phase-NN.parquet the block ids a focus phase trained on (+ .json with its domain mix)
    stats/phase-NN.npz          the per-block statistics at the end of phase NN (+ .json summary)
    stats/history-NN.parquet    every loss recorded in phase NN: block_id, loss, step, phase_idx, source
    train/checkpoint_*          Ray Train checkpoints (model, optimizer, step, statistics)
    scores/<name>/              a scoring pass (part-NNNNN.parquet, _COMPLETE): phase-NN for a phase's
                                pass, the checkpoint's name for ``lfr-ray score``
    model/                      the final model and tokenizer (``save_pretrained``)
    summary.json                the end-of-run summary
    _COMPLETE                   written last, when the whole schedule has run
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def selections(self) -> Path:
        return self.root / "selections"

    def selection(self, phase_idx: int) -> Path:
        return self.selections / f"phase-{phase_idx:02d}.parquet"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    def stats_snapshot(self, phase_idx: int) -> Path:
        return self.stats / f"phase-{phase_idx:02d}.npz"

    def history(self, phase_idx: int) -> Path:
        return self.stats / f"history-{phase_idx:02d}.parquet"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def phase_scores(self, phase_idx: int) -> Path:
        """The scoring pass at the start of phase ``phase_idx`` (``stats_source`` score or both)."""
        return self.scores / f"phase-{phase_idx:02d}"

    @property
    def train_storage(self) -> Path:
        """Ray Train's ``RunConfig(storage_path=root, name='train')`` writes checkpoints here."""
        return self.root / "train"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def complete(self) -> Path:
        return self.root / "_COMPLETE"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_parquet(path: Path, table) -> None:
    """Write a ``pyarrow.Table`` as Parquet, atomically (see ``atomic_write_bytes``)."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
