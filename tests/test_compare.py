"""``lfr-ray compare`` end to end on the debug data: two runs, a report, and a rerun that trains nothing.

Also evaluates the exported model with ``lfr-ray eval`` (plain transformers, no Ray)."""

from __future__ import annotations

import json

import pytest

from lfr_ray.config import load_config
from lfr_ray.paths import RunPaths
from lfr_ray.schedule import plan_phases, total_steps

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_run_comparison_then_rerun_reuses_runs(tmp_path, ray_cluster, capsys):
    from lfr_ray.compare import compare, compare_dir, planned_runs
    from lfr_ray.evaluate import main_eval, perplexity
    from lfr_ray.pipeline import run

    cfg = load_config("debug.yaml", [
        f"data.output_dir={tmp_path / 'data'}", f"compare.root_dir={tmp_path}", "compare.name=tiny",
        "compare.methods=[lfr,random]", "compare.seeds=[3]",
        "schedule.phases=[{kind: learn, passes: 1}, {kind: focus, keep_frac: 0.5, passes: 1}]",
        "train.eval_every_steps=20", "train.checkpoint_every_steps=1000",
    ])
    calls = []

    def counting_run(run_cfg, **kwargs):
        calls.append(run_cfg.run.name)
        return run(run_cfg, **kwargs)

    summary = compare(cfg, verbose=False, run_fn=counting_run)
    assert calls == ["lfr-s3", "random-s3"]
    out = compare_dir(cfg)
    for name in ("report.md", "summary.json", "compare.json", "plots/val_loss_vs_tokens.png"):
        assert (out / name).exists(), name

    # Same budget and seed: random is one learn phase of 1.5 passes with the LFR run's total steps.
    meta = json.loads((tmp_path / "data" / "metadata.json").read_text())
    runs = {m: rc for m, _, rc in planned_runs(cfg, meta["train"]["num_blocks"])}
    batch = cfg.train.global_batch_blocks()
    assert total_steps(plan_phases(runs["random"].schedule, meta["train"]["num_blocks"], batch)) == \
        total_steps(plan_phases(runs["lfr"].schedule, meta["train"]["num_blocks"], batch))
    assert runs["random"].train.seed == runs["lfr"].train.seed == 3
    m = summary["methods"]
    assert m["random"]["training_tokens"]["mean"] == m["lfr"]["training_tokens"]["mean"]
    assert m["random"]["reached_target"] == 1 and m["random"]["tokens_to_target_frac"]["mean"] <= 1.0
    assert m["lfr"]["focus_mix"] and m["random"]["focus_mix"] == []
    assert m["lfr"]["position_loss_spearman_learn"]["n"] == 1

    # Rerun: nothing is retrained and the runs' files are untouched.
    lfr_summary = RunPaths(runs["lfr"].run.run_dir()).summary
    mtime = lfr_summary.stat().st_mtime_ns
    again = compare(cfg, verbose=True, run_fn=counting_run)
    assert calls == ["lfr-s3", "random-s3"]
    assert lfr_summary.stat().st_mtime_ns == mtime
    assert "complete, reused" in capsys.readouterr().out
    assert again["methods"]["lfr"]["final_val_loss"] == m["lfr"]["final_val_loss"]

    # The exported model's perplexity on a text file, through plain transformers.
    model_dir = RunPaths(runs["lfr"].run.run_dir()).model
    text = tmp_path / "held_out.txt"
    text.write_text("def main():\n    return 0\n" * 60)
    full = perplexity(model_dir, text)
    half = perplexity(model_dir, text, stride=full["context"] // 2)
    assert full["num_predicted"] == half["num_predicted"] == full["num_tokens"] - 1
    assert full["num_tokens"] > full["context"]  # more than one window
    assert 1 < full["perplexity"] < meta["tokenizer"]["vocab_size"]
    assert main_eval(str(model_dir), str(text), None) == 0
    assert "perplexity" in capsys.readouterr().out
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        assert main_eval(str(model_dir), None, "hellaswag") == 1
        assert "pip install lm-eval" in capsys.readouterr().err
