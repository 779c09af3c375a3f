"""The statistics coordinator as a plain object (no Ray): selections, phase snapshots, resume."""

import json

import numpy as np
import pyarrow.parquet as pq

from lfr_ray.coordinator import Coordinator, read_history
from lfr_ray.paths import RunPaths


def _coordinator(tmp_path, n=10):
    domains = np.array(["a", "b"] * (n // 2))
    return Coordinator(str(tmp_path), n, domains, seed=0)


def test_focus_selection_is_written_once_and_read_back(tmp_path):
    c = _coordinator(tmp_path)
    ids = np.arange(10)
    c.record(ids, ids.astype(np.float32), phase_idx=0, step=0)
    assert np.array_equal(c.phase_blocks(1, "learn", 1.0), ids)
    sel = c.phase_blocks(1, "focus", 0.3)
    assert sel.tolist() == [7, 8, 9]
    info = json.loads((tmp_path / "selections" / "phase-01.json").read_text())
    assert info["composition"] == {"a": 1, "b": 2} and info["num_blocks"] == 3
    assert pq.read_table(RunPaths(tmp_path).selection(1))["block_id"].to_pylist() == [7, 8, 9]
    # New losses inside the phase must not change the phase's selection when asked again (resume).
    c.record(np.array([0, 1, 2]), np.array([50.0, 60.0, 70.0], dtype=np.float32), phase_idx=1, step=1)
    assert c.phase_blocks(1, "focus", 0.3).tolist() == [7, 8, 9]
    assert c.stats.times_selected()[[7, 8, 9]].tolist() == [1, 1, 1]  # marked once, not per ask


def test_end_phase_spills_history_and_state_round_trips(tmp_path):
    c = _coordinator(tmp_path)
    c.record(np.arange(10), np.ones(10, dtype=np.float32), phase_idx=0, step=0)
    summary = c.end_phase(0, step=1)
    assert summary["recorded"] == 10
    c.record(np.arange(5), np.zeros(5, dtype=np.float32), phase_idx=1, step=1)
    c.end_phase(1, step=2)
    history = read_history(tmp_path).to_pandas()
    assert len(history) == 15 and history.phase_idx.tolist() == [0] * 10 + [1] * 5

    other = _coordinator(tmp_path)
    other.load_state_dict(c.state_dict(), step=2)
    assert np.array_equal(other.stats.latest_loss(), c.stats.latest_loss())
    assert other.summary() == c.summary()


def test_resume_truncates_metrics_logged_after_the_checkpoint(tmp_path):
    c = _coordinator(tmp_path)
    for step in (10, 20, 30):
        c.log_metrics({"step": step, "train_loss": 1.0})
    state = c.state_dict()
    c.load_state_dict(state, step=20)
    rows = [json.loads(x) for x in RunPaths(tmp_path).metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]
    c.reset()
    assert not RunPaths(tmp_path).metrics.exists()
