"""BlockStats: recording, forgetting, duplicates, state round trips, history draining."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lfr_ray import stats as stats_mod
from lfr_ray.stats import (
    BYTES_PER_BLOCK,
    FORGOTTEN,
    HISTORY_SCHEMA,
    LEARNED,
    NEVER,
    ONCE,
    SOURCE_NONE,
    SOURCE_RECORD,
    SOURCE_SCORE,
    BlockStats,
)


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # NaN == NaN here


def test_forgetting_classification_on_hand_made_sequences():
    s = BlockStats(5)
    # block 0: 3 -> 2 -> 4 (learned, then forgotten); block 1: 5 once; block 3: 2 -> 2 (equal = learned);
    # block 4: 1 -> 6 -> 0.5 (forgotten, then learned); block 2 never.
    s.record([0, 1, 3, 4], [3.0, 5.0, 2.0, 1.0], phase_idx=0, step=10)
    s.record([0, 3, 4], [2.0, 2.0, 6.0], phase_idx=1, step=20)
    s.record([0, 4], [4.0, 0.5], phase_idx=2, step=30)

    np.testing.assert_array_equal(s.forgetting_state(), [FORGOTTEN, ONCE, NEVER, LEARNED, LEARNED])
    np.testing.assert_array_equal(s.latest_loss(), np.array([4.0, 5.0, np.nan, 2.0, 0.5], np.float32))
    np.testing.assert_array_equal(s.previous_loss(), np.array([2.0, np.nan, np.nan, 2.0, 6.0], np.float32))
    np.testing.assert_array_equal(s.num_records(), [3, 1, 0, 2, 3])
    np.testing.assert_array_equal(s.times_forgotten(), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(s.times_learned(), [1, 0, 0, 1, 1])
    np.testing.assert_array_equal(s.last_step(), [30, 10, -1, 20, 30])
    np.testing.assert_array_equal(s.last_phase_idx(), [2, 0, -1, 1, 2])

    summary = s.summary()
    assert summary == {
        "num_blocks": 5,
        "recorded": 4,
        "never_recorded": 1,
        "learned": 2,
        "forgotten_now": 1,
        "forgotten_at_least_once": 2,
        "forgotten_more_than_once": 0,
        "total_records": 9,
        "records_in_memory": 9,
        "records_drained": 0,
        "mean_latest_loss": pytest.approx((4.0 + 5.0 + 2.0 + 0.5) / 4),
        "memory_bytes": s.memory_bytes(),
    }


def test_forgotten_more_than_once_and_summary_of_empty_stats():
    s = BlockStats(2)
    assert s.summary()["mean_latest_loss"] is None
    for loss in (1.0, 2.0, 1.0, 3.0):
        s.record([1], [loss], phase_idx=0, step=0)
    assert s.times_forgotten()[1] == 2
    assert s.summary()["forgotten_more_than_once"] == 1


def test_duplicate_ids_in_one_batch_are_records_in_sequence():
    s = BlockStats(3)
    s.record([2], [5.0], phase_idx=0, step=0)
    s.record([2, 0, 2, 2], [4.0, 1.0, 6.0, 3.0], phase_idx=1, step=[1, 2, 3, 4])
    # block 2: 5 -> 4 (learned) -> 6 (forgotten) -> 3 (learned)
    assert s.num_records()[2] == 4
    assert s.times_forgotten()[2] == 1
    assert s.times_learned()[2] == 2
    assert s.latest_loss()[2] == 3.0 and s.previous_loss()[2] == 6.0
    assert s.last_step()[2] == 4
    assert s.history_table().column("loss").to_pylist() == [5.0, 4.0, 1.0, 6.0, 3.0]


def test_batched_record_equals_one_record_at_a_time():
    rng = np.random.default_rng(0)
    batched, single = BlockStats(20), BlockStats(20)
    for phase_idx in range(4):
        ids = rng.integers(0, 20, size=60)  # many duplicates
        losses = rng.integers(0, 5, size=60).astype(np.float32)  # many equal losses
        steps = np.arange(60) + 100 * phase_idx
        source = "score" if phase_idx == 2 else "record"
        batched.record(ids, losses, phase_idx=phase_idx, step=steps, source=source)
        for i, loss, step in zip(ids, losses, steps):
            single.record([i], [loss], phase_idx=phase_idx, step=int(step), source=source)
    assert_state_equal(batched.state_dict(), single.state_dict())
    assert batched.times_forgotten().sum() > 0 and batched.times_learned().sum() > 0


def test_times_trained_counts_training_records_not_scoring():
    s = BlockStats(2)
    s.record([0, 1], [2.0, 2.0], phase_idx=0, step=1)
    s.record([0], [1.0], phase_idx=0, step=2, source="score")
    s.record([0], [1.5], phase_idx=1, step=3)
    np.testing.assert_array_equal(s.times_trained(), [2, 1])
    np.testing.assert_array_equal(s.num_records(), [3, 1])
    np.testing.assert_array_equal(s.last_source(), [SOURCE_RECORD, SOURCE_RECORD])
    s.record([1], [9.0], phase_idx=1, step=4, source="score")
    assert s.last_source()[1] == SOURCE_SCORE
    assert BlockStats(1).last_source()[0] == SOURCE_NONE
    assert s.times_forgotten()[1] == 1  # scoring records are compared too
    assert s.history_table().column("source").to_pylist() == ["record", "record", "score", "record", "score"]


def test_mark_selected_counts_each_entry():
    s = BlockStats(4)
    s.mark_selected(np.array([0, 2, 3]))
    s.mark_selected([3, 0, 3])
    np.testing.assert_array_equal(s.times_selected(), [2, 0, 1, 3])
    s.mark_selected(np.array([], dtype=np.int64))
    np.testing.assert_array_equal(s.times_selected(), [2, 0, 1, 3])


@pytest.mark.parametrize(
    "ids, losses, match",
    [
        ([0, 4], [1.0, 1.0], r"block_ids must be in \[0, 4\), got values from 0 to 4"),
        ([-1], [1.0], r"must be in \[0, 4\)"),
        ([0.0], [1.0], "must be integers"),
        ([[0]], [[1.0]], "1-D"),
        ([0, 1], [1.0], "as long as block_ids"),
        ([0, 1], [1.0, np.nan], r"losses must be finite: 1 are not, e.g. loss \[nan\] for block_ids \[1\]"),
        ([0], [np.inf], "finite"),
        ([0], [1e39], "finite"),  # overflows float32
    ],
)
def test_record_rejects_bad_input_and_changes_nothing(ids, losses, match):
    s = BlockStats(4)
    before = s.state_dict()
    with pytest.raises(ValueError, match=match):
        s.record(ids, losses, phase_idx=0, step=0)
    assert_state_equal(before, s.state_dict())


def test_record_rejects_bad_keywords():
    s = BlockStats(2)
    with pytest.raises(ValueError, match="source must be one of"):
        s.record([0], [1.0], phase_idx=0, step=0, source="eval")
    with pytest.raises(ValueError, match="phase_idx"):
        s.record([0], [1.0], phase_idx=-1, step=0)
    with pytest.raises(ValueError, match="step must be one integer or one per block_id"):
        s.record([0], [1.0], phase_idx=0, step=[1, 2])
    with pytest.raises(ValueError, match="step must be in"):
        s.record([0], [1.0], phase_idx=0, step=-3)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockStats(0)


def test_counters_refuse_to_wrap_around():
    s = BlockStats(2)
    s.record(np.zeros(65_535, np.int64), np.ones(65_535), phase_idx=0, step=0)
    assert s.num_records()[0] == 65_535
    before = s.state_dict()
    with pytest.raises(ValueError, match="exceed 65535 records"):
        s.record([1, 0], [1.0, 1.0], phase_idx=0, step=0)
    assert_state_equal(before, s.state_dict())
    s.mark_selected(np.zeros(65_535, np.int64))
    with pytest.raises(ValueError, match="exceed 65535 selections"):
        s.mark_selected([0])


def test_views_are_read_only():
    s = BlockStats(3)
    with pytest.raises(ValueError):
        s.latest_loss()[0] = 1.0


def _busy_stats() -> BlockStats:
    s = BlockStats(10)
    s.record(np.arange(10), np.linspace(1, 2, 10), phase_idx=0, step=1)
    s.mark_selected([1, 3, 5])
    s.drain_history()
    s.record([1, 3, 3, 5], [0.5, 3.0, 2.0, 1.0], phase_idx=1, step=2, source="score")
    return s


def test_state_dict_round_trip_and_resume_continue_exactly():
    original = _busy_stats()
    restored = BlockStats(10)
    restored.load_state_dict(original.state_dict())
    assert_state_equal(original.state_dict(), restored.state_dict())
    assert restored.summary() == original.summary()
    for s in (original, restored):
        s.record([5, 9], [4.0, 0.1], phase_idx=2, step=3)
    assert_state_equal(original.state_dict(), restored.state_dict())
    assert original.history_table().equals(restored.history_table())


def test_load_state_dict_rejects_mismatches():
    d = _busy_stats().state_dict()
    with pytest.raises(ValueError, match="for 10 blocks, this BlockStats has 11"):
        BlockStats(11).load_state_dict(d)
    with pytest.raises(ValueError, match="missing"):
        BlockStats(10).load_state_dict({k: v for k, v in d.items() if k != "times_selected"})
    with pytest.raises(ValueError, match="latest_loss"):
        BlockStats(10).load_state_dict({**d, "latest_loss": d["latest_loss"].astype(np.float64)})
    with pytest.raises(ValueError, match="inconsistent"):
        BlockStats(10).load_state_dict({**d, "num_records_drained": np.asarray(np.int64(0))})


def test_save_load_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "stats.npz"
    first = _busy_stats()
    first.save(path)
    assert os.listdir(tmp_path) == ["stats.npz"]  # no temp file left behind
    assert_state_equal(BlockStats.load(path).state_dict(), first.state_dict())

    second = _busy_stats()
    second.record([0], [7.0], phase_idx=3, step=9)

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(stats_mod.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        second.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["stats.npz"]
    assert_state_equal(BlockStats.load(path).state_dict(), first.state_dict())  # the old snapshot is intact

    second.save(path)
    assert_state_equal(BlockStats.load(path).state_dict(), second.state_dict())


def test_drain_history_accounting():
    s = BlockStats(4)
    s.record([0, 1, 2], [1.0, 2.0, 3.0], phase_idx=0, step=5)
    drained = s.drain_history()
    assert drained.schema == HISTORY_SCHEMA
    assert drained.column("record_idx").to_pylist() == [0, 1, 2]
    assert drained.column("phase_idx").to_pylist() == [0, 0, 0]
    assert s.history_table().num_rows == 0
    assert s.drain_history().num_rows == 0

    s.record([3, 0], [4.0, 0.5], phase_idx=1, step=[6, 7], source="score")
    table = s.history_table()
    assert table.column("record_idx").to_pylist() == [3, 4]
    assert table.column("step").to_pylist() == [6, 7]
    summary = s.summary()
    assert (summary["total_records"], summary["records_in_memory"], summary["records_drained"]) == (5, 2, 3)
    assert int(s.num_records().sum()) == summary["total_records"]

    restored = BlockStats(4)
    restored.load_state_dict(s.state_dict())
    assert restored.history_table().equals(table)
    assert restored.drain_history().column("record_idx").to_pylist() == [3, 4]
    assert restored.summary()["records_drained"] == 5


def test_history_spans_chunks(monkeypatch):
    s = BlockStats(50)
    s._history = stats_mod._History(chunk_records=7)
    ids = np.arange(50)[::-1]
    s.record(ids[:20], np.arange(20), phase_idx=0, step=0)
    s.record(ids[20:], np.arange(20, 50), phase_idx=0, step=1)
    table = s.history_table()
    assert table.column("block_id").to_pylist() == ids.tolist()
    assert table.column("loss").to_pylist() == list(range(50))
    assert s.memory_bytes() == 50 * BYTES_PER_BLOCK + 8 * 7 * stats_mod.BYTES_PER_RECORD


def test_to_frame_and_memory_bytes():
    s = _busy_stats()
    domains = np.array(["web", "code"] * 5)
    frame = s.to_frame(domains)
    assert len(frame) == 10
    assert frame["domain"].tolist() == domains.tolist()
    assert frame.loc[3, "forgetting_state"] == "learned"
    assert frame.loc[3, "times_forgotten"] == 1 and frame.loc[3, "times_learned"] == 1
    assert frame.loc[5, "last_source"] == "score"
    assert frame["times_selected"].sum() == 3
    with pytest.raises(ValueError, match="one label per block"):
        s.to_frame(domains[:3])
    assert BYTES_PER_BLOCK == 23
    assert BlockStats(1000).memory_bytes() == 23_000


def test_stats_and_selection_import_without_ray_or_torch():
    code = (
        "import sys, lfr_ray.stats, lfr_ray.selection; "
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
