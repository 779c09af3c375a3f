"""End-to-end LFR runs of the debug config on the shared Ray instance (one and two workers), and a
run whose driver is killed mid-phase and then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lfr_ray.config import load_config
from lfr_ray.coordinator import read_history
from lfr_ray.paths import RunPaths
from lfr_ray.schedule import plan_phases, total_steps
from lfr_ray.stats import BlockStats

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, ray_cluster):
    from lfr_ray.data import prepare

    out = tmp_path_factory.mktemp("debug-data") / "blocks"
    cfg = load_config("debug.yaml", [f"data.output_dir={out}"])
    prepare(cfg.data, config_yaml=cfg.to_yaml(), progress=False)
    return out


def _config(data_dir: Path, root: Path, *overrides: str):
    return load_config("debug.yaml", [f"data.output_dir={data_dir}", f"run.root_dir={root}", *overrides])


def _history(paths: RunPaths, phase_idx: int):
    """Statistics at the end of ``phase_idx`` and every loss recorded up to then."""
    stats = BlockStats.load(paths.stats_snapshot(phase_idx))
    history = read_history(paths.root).to_pandas()
    return stats, history[history.phase_idx <= phase_idx]


def _check_run(cfg, summary):
    paths = RunPaths(cfg.run.run_dir())
    meta = json.loads((Path(cfg.data.output_dir) / "metadata.json").read_text())
    n = meta["train"]["num_blocks"]
    plans = plan_phases(cfg.schedule, n, cfg.train.global_batch_blocks())
    last = len(plans) - 1
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "_COMPLETE", "model/config.json"):
        assert (paths.root / name).exists(), name

    stats, history = _history(paths, last)
    # Every optimizer step trained one global batch, and each trained block's loss was recorded once.
    assert len(history) == total_steps(plans) * cfg.train.global_batch_blocks()
    assert history.groupby("step").size().eq(cfg.train.global_batch_blocks()).all()
    # After the learn phase every block has a recorded loss.
    learn = history[history.phase_idx == 0]
    assert set(learn.block_id) == set(range(n))
    # Every block a focus phase trained on is in that phase's selection, and the selection is the
    # hardest keep_frac by the losses recorded before the phase.
    for plan in plans:
        if plan.kind != "focus":
            continue
        selection = pq.read_table(paths.selection(plan.phase_idx))["block_id"].to_numpy()
        assert len(selection) == plan.num_blocks
        trained = history[history.phase_idx == plan.phase_idx].block_id.unique()
        assert set(trained) == set(selection)
        before, _ = _history(paths, plan.phase_idx - 1)
        latest = before.latest_loss()
        assert latest[selection].min() >= np.delete(latest, selection).max()
    assert stats.summary()["never_recorded"] == 0
    # Metrics: one row per log interval, steps increasing, a validation loss at the end.
    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == total_steps(plans)
    assert summary["final_val_loss"] < meta["unigram_loss"]
    return paths, history


def test_one_worker_run_and_exported_model(data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lfr_ray.pipeline import run

    cfg = _config(data_dir, tmp_path)
    summary = run(cfg)
    paths, _ = _check_run(cfg, summary)
    assert [p["kind"] for p in summary["phases"]] == ["learn", "focus", "review", "focus", "review"]
    out = capsys.readouterr().out
    assert "final validation loss" in out and "forgetting" in out

    tok = AutoTokenizer.from_pretrained(paths.model)
    model = AutoModelForCausalLM.from_pretrained(paths.model)
    generated = model.generate(**tok("def ", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > 1
    assert isinstance(tok.decode(generated[0]), str)

    again = run(cfg)  # a complete run is not retrained
    assert again == summary
    assert "already complete" in capsys.readouterr().out


def test_two_worker_run(data_dir, tmp_path):
    from lfr_ray.pipeline import run

    cfg = _config(data_dir, tmp_path, "train.num_workers=2", "train.micro_batch_size=4")
    _check_run(cfg, run(cfg, verbose=False))


def test_resume_after_driver_is_killed(data_dir, tmp_path, ray_cluster):
    """Kill the driver mid-run (after a checkpoint), start it again: same step, statistics restored,
    and the recorded losses equal those of an uninterrupted run."""
    address = ray_cluster.get_runtime_context().gcs_address
    overrides = [f"data.output_dir={data_dir}", "train.checkpoint_every_steps=20"]
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"), PYTHONUNBUFFERED="1")

    def start(root: Path, name: str):
        cmd = [sys.executable, "-m", "lfr_ray.cli", "run", "--config", "debug", "--address", address,
               *overrides, f"run.root_dir={root}", f"run.name={name}"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    killed = start(tmp_path, "resumed")
    snapshot = tmp_path / "resumed" / "train" / "checkpoint_manager_snapshot.json"

    def registered_step() -> int:
        # Ray Train registers a checkpoint (and so will restore it) once its controller has
        # written it into this snapshot, a little after the checkpoint directory appears.
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return -1
        return max((r["metrics"]["step"] for r in results), default=-1)

    deadline = time.time() + 240
    while registered_step() < 40 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert killed.poll() is None, killed.stdout.read()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "resumed" / "_COMPLETE").exists()

    resumed = start(tmp_path, "resumed")
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    assert "resumed from checkpoint at step " in out, out
    resumed_at = int(out.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 40 and resumed_at % 20 == 0  # the last checkpoint before the kill, not step 0
    assert f"step {resumed_at + 10}/" in out and f"step {resumed_at}/" not in out.split("resumed from")[1]

    reference = start(tmp_path, "reference")
    ref_out, _ = reference.communicate(timeout=400)
    assert reference.returncode == 0, ref_out

    paths_a = RunPaths(tmp_path / "resumed")
    paths_b = RunPaths(tmp_path / "reference")
    a = read_history(paths_a.root).to_pandas()
    b = read_history(paths_b.root).to_pandas()
    key = ["step", "block_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b)  # no recorded loss lost or duplicated by the kill
    assert (a[key].values == b[key].values).all()
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-5, atol=1e-5)
    ma = [json.loads(x)["step"] for x in paths_a.metrics.read_text().splitlines()]
    mb = [json.loads(x)["step"] for x in paths_b.metrics.read_text().splitlines()]
    assert ma == mb  # metrics rows after the checkpoint were dropped, then logged again once
