"""The comparison report's numbers (pure) and the report built from synthetic run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfr_ray.baselines import BaselineError, method_schedule, random_schedule, static_prune_schedule
from lfr_ray.config import ConfigError, Config, DataConfig, PhaseConfig, ScheduleConfig, TrainConfig, load_config
from lfr_ray.report import (
    build_report, compute_curve, compute_tokens, mean_spread, position_in_pass, spearman, summarize,
    time_to_fraction_of_drop, tokens_to_target,
)
from lfr_ray.schedule import plan_phases, total_steps

# -- tokens to target ------------------------------------------------------------------------


def test_tokens_to_target_interpolates_between_evaluations():
    tokens, losses = [100, 200, 300, 400], [5.0, 4.0, 3.0, 2.0]
    assert tokens_to_target(tokens, losses, 3.5) == pytest.approx(250)
    assert tokens_to_target(tokens, losses, 3.0) == pytest.approx(300)  # reached exactly at an evaluation
    assert tokens_to_target(tokens, losses, 2.0) == pytest.approx(400)


def test_tokens_to_target_never_reached_is_none():
    assert tokens_to_target([100, 200, 300], [5.0, 4.0, 3.1], 3.0) is None
    assert tokens_to_target([], [], 3.0) is None


def test_tokens_to_target_takes_the_first_crossing_of_a_noisy_curve():
    # Dips below at 200, rises, dips again: the first crossing counts.
    assert tokens_to_target([100, 200, 300, 400], [4.0, 2.0, 3.5, 1.0], 3.0) == pytest.approx(150)


def test_tokens_to_target_below_at_first_evaluation_is_that_evaluation():
    assert tokens_to_target([100, 200], [2.0, 1.0], 3.0) == 100


def test_time_to_fraction_of_drop():
    assert time_to_fraction_of_drop([0, 10, 20], [6.0, 4.0, 2.0], 0.5) == pytest.approx(10)
    assert time_to_fraction_of_drop([0, 10], [3.0, 3.5], 0.5) is None  # no drop


# -- compute accounting -----------------------------------------------------------------------


def test_compute_counts_scoring_at_a_third():
    assert compute_tokens(900, 0) == 900
    assert compute_tokens(900, 300) == pytest.approx(1000)
    assert compute_tokens(900, 300, scoring_cost_frac=1.0) == 1200


def test_compute_curve_adds_scoring_from_the_step_it_happened():
    # 10 tokens per step; 6 blocks of 4 tokens scored at step 5.
    curve = compute_curve(np.array([4, 5, 10]), 10, np.full(6, 5), block_len=4, scoring_cost_frac=0.5)
    assert curve.tolist() == [40, 50 + 12, 100 + 12]


def test_spearman_and_mean_spread():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    s = mean_spread([1.0, 3.0, None])
    assert s["mean"] == 2 and s["n"] == 2 and s["std"] == pytest.approx(math.sqrt(2))
    assert mean_spread([None])["mean"] is None


# -- baselines: same budget, fractional passes -------------------------------------------------


@pytest.mark.parametrize("num_blocks, batch", [(1000, 10), (1005, 10), (4123, 16), (777, 64)])
def test_baselines_match_the_lfr_token_budget(num_blocks, batch):
    lfr = ScheduleConfig()
    budget = total_steps(plan_phases(lfr, num_blocks, batch))
    rand = random_schedule(lfr, num_blocks, batch)
    assert [p.kind for p in rand.phases] == ["learn"]
    assert total_steps(plan_phases(rand, num_blocks, batch)) == budget
    sp = static_prune_schedule(lfr, num_blocks, batch, learn_passes=0.25, keep_frac=0.5)
    plans = plan_phases(sp, num_blocks, batch)
    assert [p.kind for p in plans] == ["learn", "focus"]
    assert total_steps(plans) == budget
    assert plans[0].num_steps == round(0.25 * -(-num_blocks // batch))


def test_paper_budget_is_3_1_epochs_for_random():
    rand = random_schedule(ScheduleConfig(), 1000, 10)
    assert rand.phases[0].passes == pytest.approx(3.1)


def test_static_prune_needs_room_for_its_focus_phase():
    with pytest.raises(BaselineError, match="static_prune_learn_passes"):
        static_prune_schedule(ScheduleConfig(), 1000, 10, learn_passes=3.1, keep_frac=0.5)
    with pytest.raises(BaselineError, match="unknown method"):
        method_schedule("bogus", ScheduleConfig(), 1000, 10, learn_passes=0.25, keep_frac=0.5)


def test_compare_config_validation():
    assert load_config(None, ["compare.methods=[lfr,random]"]).compare.methods == ("lfr", "random")
    with pytest.raises(ConfigError, match="compare.methods"):
        load_config(None, ["compare.methods=[lfr,lfr]"])
    with pytest.raises(ConfigError, match="compare.seeds"):
        load_config(None, ["compare.seeds=[]"])
    with pytest.raises(ConfigError, match="compare.static_prune_keep_frac"):
        load_config(None, ["compare.static_prune_keep_frac=1.5"])


def _scored(schedule: ScheduleConfig) -> ScheduleConfig:
    """The same schedule with its focus phases selecting from a fresh scoring pass."""
    return ScheduleConfig(tuple(PhaseConfig(p.kind, p.passes, p.keep_frac, stats_source="score")
                                if p.kind == "focus" else p for p in schedule.phases))


def test_a_variant_with_the_same_budget_runs_unchanged():
    lfr, scored = ScheduleConfig(), _scored(ScheduleConfig())
    sched = method_schedule("lfr-scored", lfr, 1005, 10, learn_passes=0.25, keep_frac=0.5,
                            variants={"lfr-scored": scored})
    assert sched == scored


def test_a_variant_with_another_budget_is_refused_with_the_passes_that_would_match():
    lfr = ScheduleConfig()
    longer = ScheduleConfig((PhaseConfig("learn", 1), PhaseConfig("focus", 3, 0.4)))
    with pytest.raises(BaselineError, match=r"'long' trains \d+ steps .* passes=([\d.]+) on its last phase") as err:
        method_schedule("long", lfr, 1000, 10, learn_passes=0.25, keep_frac=0.5, variants={"long": longer})
    passes = float(str(err.value).split("passes=")[1].split()[0])
    fixed = ScheduleConfig((PhaseConfig("learn", 1), PhaseConfig("focus", passes, 0.4)))
    budget = total_steps(plan_phases(lfr, 1000, 10))
    assert total_steps(plan_phases(fixed, 1000, 10)) == budget
    with pytest.raises(BaselineError, match="shorten its earlier phases"):
        method_schedule("long", lfr, 1000, 10, learn_passes=0.25, keep_frac=0.5,
                        variants={"long": ScheduleConfig((PhaseConfig("learn", 4), PhaseConfig("focus", 1, 0.5)))})


def test_compare_variants_config():
    phases = "[{kind: learn}, {kind: focus, keep_frac: 0.5, stats_source: score}]"
    cfg = load_config(None, ["compare.methods=[lfr,random,scored]", f"compare.variants=[{{name: scored, phases: {phases}}}]"])
    assert cfg.compare.variant_schedules()["scored"].phases[1].stats_source == "score"
    with pytest.raises(ConfigError, match="compare.variants.0.name.*not in compare.methods"):
        load_config(None, [f"compare.variants=[{{name: scored, phases: {phases}}}]"])
    with pytest.raises(ConfigError, match="compare.methods.*lfr, random, static-prune"):
        load_config(None, ["compare.methods=[lfr,typo]"])
    with pytest.raises(ConfigError, match="compare.variants.0.name.*built-in"):
        load_config(None, ["compare.methods=[lfr,random]", f"compare.variants=[{{name: random, phases: {phases}}}]"])
    with pytest.raises(ConfigError, match="compare.variants.1.name.*twice"):
        load_config(None, ["compare.methods=[lfr,a]",
                           f"compare.variants=[{{name: a, phases: {phases}}}, {{name: a, phases: {phases}}}]"])
    with pytest.raises(ConfigError, match="compare.variants.0.phases.0.kind"):
        load_config(None, ["compare.methods=[lfr,a]", "compare.variants=[{name: a, phases: [{kind: focus}]}]"])
    with pytest.raises(ConfigError, match="compare.variants.0.phases.1.keep_frac"):
        load_config(None, ["compare.methods=[lfr,a]",
                           "compare.variants=[{name: a, phases: [{kind: learn}, {kind: focus, keep_frac: 2}]}]"])


# -- the report from synthetic run directories ---------------------------------------------------

NUM_BLOCKS, BLOCK_LEN, BATCH = 40, 8, 4
DOMAINS = ["chat", "code"]


def _write_data(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    per_domain = {d: {"docs": 1, "tokens": 20 * (BLOCK_LEN + 1), "blocks": 20} for d in DOMAINS}
    (data / "metadata.json").write_text(json.dumps({"train": {"num_blocks": NUM_BLOCKS, "per_domain": per_domain}}))
    return data


def _write_run(run_dir: Path, data: Path, method: str, seed: int, schedule: ScheduleConfig, final: float,
               scored: bool = False) -> None:
    """A complete run directory as pipeline.run leaves it, with a loss curve ending at ``final``."""
    cfg = Config(data=DataConfig(output_dir=str(data), block_len=BLOCK_LEN), schedule=schedule,
                 train=TrainConfig(micro_batch_size=BATCH, seed=seed))
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    plans = plan_phases(schedule, NUM_BLOCKS, BATCH)
    total = total_steps(plans)
    rows = []
    for step in [*range(5, total, 5), total]:
        loss = final + 3.0 * (1 - step / total)
        rows.append({"step": step, "tokens_seen": step * BATCH * BLOCK_LEN, "val_loss": loss,
                     "val_loss_by_domain": {"chat": loss - 0.5, "code": loss + 0.5}, "interval_s": 1.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(seed)
    (run_dir / "stats").mkdir()
    record_idx = 0
    for p in plans:
        steps = np.repeat(np.arange(p.start_step, p.end_step), BATCH)
        ids = rng.integers(0, NUM_BLOCKS, len(steps))
        losses = 5.0 - (steps - p.start_step) / p.num_steps  # later in the pass: lower (position bias)
        source = ["record"] * len(steps)
        if scored and p.kind == "focus":
            steps = np.concatenate([np.full(NUM_BLOCKS, p.start_step), steps])
            ids = np.concatenate([np.arange(NUM_BLOCKS), ids])
            losses = np.concatenate([rng.random(NUM_BLOCKS) + 4, losses])
            source = ["score"] * NUM_BLOCKS + source
        n = len(steps)
        table = pa.table({
            "record_idx": np.arange(record_idx, record_idx + n, dtype=np.int64), "block_id": ids.astype(np.int64),
            "loss": losses.astype(np.float32), "step": steps.astype(np.int64),
            "phase_idx": np.full(n, p.phase_idx, dtype=np.int32),
            "source": pa.array(source).dictionary_encode(),
        })
        record_idx += n
        pq.write_table(table, run_dir / "stats" / f"history-{p.phase_idx:02d}.parquet")
        if p.kind == "focus":
            (run_dir / "selections").mkdir(exist_ok=True)
            sel = np.arange(p.num_blocks)
            pq.write_table(pa.table({"block_id": sel}), run_dir / "selections" / f"phase-{p.phase_idx:02d}.parquet")
            (run_dir / "selections" / f"phase-{p.phase_idx:02d}.json").write_text(
                json.dumps({"composition": {"chat": int(p.num_blocks * 0.25), "code": p.num_blocks - int(p.num_blocks * 0.25)}}))
    summary = {"num_blocks": NUM_BLOCKS, "tokens_trained": total * BATCH * BLOCK_LEN, "final_val_loss": final,
               "final_val_loss_by_domain": {"chat": final - 0.5, "code": final + 0.5}, "wall_s": 10.0 + seed,
               "train_s": 8.0, "stats": {"forgotten_at_least_once": 7 + seed, "forgotten_more_than_once": 2}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "_COMPLETE").write_text("")


def _write_comparison(tmp_path: Path, *, scored: bool = False, missing: tuple[str, ...] = ()) -> Path:
    data = _write_data(tmp_path)
    out = tmp_path / "cmp"
    lfr = ScheduleConfig()
    entries = []
    for seed in (0, 1):
        for method, final in (("lfr", 2.0 + 0.1 * seed), ("random", 2.5 + 0.1 * seed), ("static-prune", 2.8)):
            sched = method_schedule(method, lfr, NUM_BLOCKS, BATCH, learn_passes=0.25, keep_frac=0.5)
            run_dir = out / f"{method}-s{seed}"
            entries.append({"method": method, "seed": seed, "run_dir": str(run_dir)})
            if f"{method}-s{seed}" not in missing:
                _write_run(run_dir, data, method, seed, sched, final, scored=scored and method == "static-prune")
    (out / "compare.json").write_text(json.dumps({"name": "synthetic", "config": Config().to_dict(), "runs": entries}))
    return out


def test_report_builds_from_synthetic_runs(tmp_path):
    out = _write_comparison(tmp_path, scored=True)
    summary = build_report(out)
    for name in ("report.md", "summary.json", "plots/val_loss_vs_tokens.png", "plots/val_loss_vs_compute.png",
                 "plots/final_loss_by_domain.png", "plots/focus_domain_mix.png", "plots/domain_learning_progress.png"):
        assert (out / name).exists(), name
    m = summary["methods"]
    assert summary["target_val_loss"] == pytest.approx(2.55)
    assert m["random"]["tokens_to_target_frac"]["mean"] == pytest.approx(1.0, abs=0.08)
    assert m["lfr"]["tokens_to_target_frac"]["mean"] < 1  # ends 0.5 lower: crosses the target earlier
    assert m["lfr"]["reached_target"] == 2
    assert m["static-prune"]["reached_target"] == 0  # ends above the target: never reaches it
    assert m["static-prune"]["tokens_to_target_frac"]["mean"] is None
    # ...and random got to static-prune's final loss (2.8) before its own end (2.55), LFR's (2.05) never.
    assert 0.8 < m["static-prune"]["reference_tokens_to_this_final_frac"] < 1
    assert m["lfr"]["reference_tokens_to_this_final_frac"] is None
    # Scoring counted at a third: static-prune scored every block once.
    assert m["static-prune"]["scoring_tokens"]["mean"] == NUM_BLOCKS * BLOCK_LEN
    assert m["static-prune"]["compute_tokens"]["mean"] == pytest.approx(
        m["static-prune"]["training_tokens"]["mean"] + NUM_BLOCKS * BLOCK_LEN / 3)
    assert m["lfr"]["compute_tokens"]["mean"] == m["lfr"]["training_tokens"]["mean"]
    assert m["lfr"]["focus_mix"][0]["share"]["code"] > m["lfr"]["focus_mix"][0]["corpus_share"]["code"]
    assert m["lfr"]["domains_learned_first"][0]["domain"] in DOMAINS
    assert m["lfr"]["forgotten_at_least_once"]["mean"] == 7.5
    assert m["lfr"]["position_loss_spearman_learn"]["mean"] < -0.9  # the synthetic losses fall along the pass
    assert m["lfr"]["position_loss_spearman_review"]["mean"] < -0.9  # ...in every pass
    assert m["random"]["position_loss_spearman_review"]["mean"] is None  # no review phase
    assert m["static-prune"]["recorded_vs_scored_spearman"]["n"] == 2
    text = (out / "report.md").read_text()
    assert "plots/val_loss_vs_tokens.png" in text and "Which domains were learned first" in text
    assert "ends worse than `random`" in text  # static-prune loses: the report says so
    saved = json.loads((out / "summary.json").read_text())
    assert saved["methods"]["lfr"]["final_val_loss"]["mean"] == pytest.approx(2.05)


def test_report_marks_missing_runs_as_partial(tmp_path):
    out = _write_comparison(tmp_path, missing=("lfr-s1", "random-s1", "static-prune-s1"))
    summary = build_report(out)
    assert summary["missing_runs"] == ["lfr-s1", "random-s1", "static-prune-s1"]
    assert summary["methods"]["lfr"]["seeds"] == [0]
    assert "partial results" in (out / "report.md").read_text()


def test_position_in_pass_with_a_fractional_pass():
    sched = ScheduleConfig((PhaseConfig("learn", 1.5),))
    plans = plan_phases(sched, 40, 4)  # 10 steps per pass, 15 steps
    assert position_in_pass(np.array([0, 5, 10, 14]), plans).tolist() == [0.0, 0.5, 0.0, 0.4]
    assert math.isnan(position_in_pass(np.array([15]), plans)[0])


def test_summarize_without_a_reference_has_no_target():
    run = {"method": "lfr", "seed": 0, "tokens": [1, 2], "compute": [1, 2], "val_loss": [3.0, 2.0],
           "val_loss_by_domain": {}, "final_val_loss": 2.0, "final_val_loss_by_domain": {}, "training_tokens": 2,
           "scoring_tokens": 0, "compute_tokens": 2, "wall_s": 1, "train_s": 1, "forgotten_at_least_once": 0,
           "forgotten_more_than_once": 0, "num_blocks": 1, "schedule": [], "focus_sets": [],
           "corpus_composition": {"a": 1},
           "diagnostics": {"position_loss_spearman": {}, "first_focus_first_half_share": None, "recorded_vs_scored": []}}
    s = summarize([run])
    assert s["target_val_loss"] is None and s["methods"]["lfr"]["reached_target"] == 0


def test_static_prune_selects_from_a_fresh_scoring_pass():
    sp = static_prune_schedule(ScheduleConfig(), 1000, 10, learn_passes=0.25, keep_frac=0.5)
    assert [p.stats_source for p in sp.phases] == ["record", "score"]
    assert sp.needs_scoring()


def test_planned_runs_include_variants_seed_major_with_their_own_schedule(tmp_path):
    from lfr_ray.compare import planned_runs

    phases = "[{kind: learn}, {kind: focus, keep_frac: 0.5, stats_source: score}, {kind: review}, " \
             "{kind: focus, keep_frac: 0.3, passes: 2, stats_source: score}]"
    cfg = load_config(None, ["compare.methods=[lfr,scored]", "compare.seeds=[0,1]", f"compare.root_dir={tmp_path}",
                             f"compare.variants=[{{name: scored, phases: {phases}}}]"])
    runs = planned_runs(cfg, 1000)
    assert [(m, s, c.run.name) for m, s, c in runs] == [
        ("lfr", 0, "lfr-s0"), ("scored", 0, "scored-s0"), ("lfr", 1, "lfr-s1"), ("scored", 1, "scored-s1")]
    scored = runs[1][2]
    assert [p.stats_source for p in scored.schedule.phases] == ["record", "score", "record", "score"]
    assert scored.compare.variants == ()  # a run's config does not depend on the comparison around it
    assert scored.train.seed == 0 and scored.run.run_dir() == tmp_path / "compare" / "scored-s0"
