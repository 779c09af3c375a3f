"""The comparison report: reads finished run directories, writes numbers, plots and Markdown. No Ray.

``build_report(compare_dir)`` reads ``compare.json`` (written by ``compare.py``) and every complete
run it lists, and writes into the comparison directory:

* ``summary.json``: every number below, per run and per method (mean and spread over seeds);
* ``plots/*.png``: validation loss against training tokens and against compute, per-domain final
  loss, each focus subset's domain mix, per-domain learning progress, recorded loss by position;
* ``report.md``: the tables and the plots, with how to read them.

Definitions (the pure functions below are unit-tested on hand-made curves):

* **target**: the random baseline's final validation loss, averaged over its seeds;
* **tokens to target**: the first training-token count at which a run's validation loss reaches the
  target, linearly interpolated between the two evaluations around the crossing (an upper bound if
  the very first evaluation is already below it); ``None`` if it never does. Reported as a fraction
  of the random baseline's tokens (all methods have the same budget, so < 1 means LFR got there
  sooner);
* **compute** = training tokens + ``scoring_cost_frac`` x scoring tokens (a scoring forward pass costs
  about a third of a training step's forward + backward per token); scoring tokens are the blocks of
  ``source == "score"`` records times ``block_len``. Evaluation passes are the same for every method
  and are not counted;
* **position correlation**: Spearman's rank correlation between a recorded loss and where in its pass
  it was recorded (0 = first step, 1 = last). A record early in a pass comes from a less-trained
  model, so if this is strongly negative the "hardest" blocks are mostly the ones seen first;
* **first-half share**: of the first focus set, the fraction whose deciding loss was recorded in the
  first half of its pass (0.5 if position did not matter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from lfr_ray.paths import RunPaths, atomic_write_json, atomic_write_text

REFERENCE_METHOD = "random"


# --------------------------------------------------------------------------------------------
# Pure numbers
# --------------------------------------------------------------------------------------------


def tokens_to_target(tokens: Iterable[float], losses: Iterable[float], target: float) -> Optional[float]:
    """Tokens at which the loss curve first reaches ``target`` (linear interpolation); None if never."""
    x, y = np.asarray(list(tokens), dtype=float), np.asarray(list(losses), dtype=float)
    hit = np.flatnonzero(y <= target)
    if len(hit) == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (y0 - target) / (y0 - y1) * (x1 - x0))


def compute_tokens(training_tokens: float, scoring_tokens: float, scoring_cost_frac: float = 1 / 3) -> float:
    """Training-token-equivalents of compute: scoring costs ``scoring_cost_frac`` of training per token."""
    return float(training_tokens) + scoring_cost_frac * float(scoring_tokens)


def compute_curve(steps: np.ndarray, tokens_per_step: int, score_steps: np.ndarray, block_len: int,
                  scoring_cost_frac: float = 1 / 3) -> np.ndarray:
    """Compute spent up to each step in ``steps``: training tokens plus the scoring done at or before it.

    ``score_steps`` holds the step of every scored block (one entry per ``score`` record).
    """
    steps = np.asarray(steps, dtype=np.int64)
    scored = np.searchsorted(np.sort(np.asarray(score_steps, dtype=np.int64)), steps, side="right")
    return np.array([compute_tokens(s * tokens_per_step, n * block_len, scoring_cost_frac)
                     for s, n in zip(steps, scored)])


def spearman(a: Iterable[float], b: Iterable[float]) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 pairs or no spread."""
    import pandas as pd

    x, y = pd.Series(np.asarray(list(a), dtype=float)), pd.Series(np.asarray(list(b), dtype=float))
    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return None
    rx, ry = x[ok].rank().to_numpy(), y[ok].rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def time_to_fraction_of_drop(tokens: Iterable[float], losses: Iterable[float], frac: float) -> Optional[float]:
    """Tokens until a curve has made ``frac`` of its drop from its first to its last value."""
    y = np.asarray(list(losses), dtype=float)
    if len(y) < 2 or not np.isfinite(y).all() or y[0] <= y[-1]:
        return None
    return tokens_to_target(tokens, y, y[0] - frac * (y[0] - y[-1]))


def mean_spread(values: Iterable[Optional[float]]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max over the values that are not None."""
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


# --------------------------------------------------------------------------------------------
# One run directory
# --------------------------------------------------------------------------------------------


def _plans(cfg, num_blocks: int):
    from lfr_ray.schedule import plan_phases

    return plan_phases(cfg.schedule, num_blocks, cfg.train.global_batch_blocks())


def load_run(run_dir: str | Path, method: str, seed: int, scoring_cost_frac: float = 1 / 3) -> dict[str, Any]:
    """Everything the report needs from one complete run directory."""
    import yaml

    from lfr_ray.config import config_from_dict
    from lfr_ray.coordinator import read_history
    from lfr_ray.pipeline import read_metrics

    paths = RunPaths(Path(run_dir))
    cfg = config_from_dict(yaml.safe_load(paths.config.read_text()))
    summary = json.loads(paths.summary.read_text())
    meta = json.loads((Path(cfg.data.output_dir) / "metadata.json").read_text())
    block_len = cfg.data.block_len
    tokens_per_step = cfg.train.global_batch_blocks() * block_len
    plans = _plans(cfg, summary["num_blocks"])
    evals = [r for r in read_metrics(paths) if "val_loss" in r]
    steps = np.array([r["step"] for r in evals], dtype=np.int64)
    history = read_history(paths.root).to_pandas()
    history["source"] = history["source"].astype(str)
    score_steps = history.loc[history.source == "score", "step"].to_numpy()
    scoring_tokens = len(score_steps) * block_len
    domains = sorted(evals[-1]["val_loss_by_domain"]) if evals else []
    corpus = {d: v["blocks"] for d, v in meta["train"]["per_domain"].items()}
    focus = []
    for plan in plans:
        sel = paths.selection(plan.phase_idx).with_suffix(".json")
        if plan.kind == "focus" and sel.exists():
            focus.append({"phase_idx": plan.phase_idx, "keep_frac": plan.keep_frac,
                          "composition": json.loads(sel.read_text())["composition"]})
    stats = summary.get("stats") or {}
    return {
        "method": method,
        "seed": seed,
        "run_dir": str(paths.root),
        "steps": steps.tolist(),
        "tokens": (steps * tokens_per_step).tolist(),
        "compute": compute_curve(steps, tokens_per_step, score_steps, block_len, scoring_cost_frac).tolist(),
        "val_loss": [r["val_loss"] for r in evals],
        "val_loss_by_domain": {d: [r["val_loss_by_domain"].get(d, float("nan")) for r in evals] for d in domains},
        "final_val_loss": summary.get("final_val_loss"),
        "final_val_loss_by_domain": summary.get("final_val_loss_by_domain") or {},
        "training_tokens": summary["tokens_trained"],
        "scoring_tokens": scoring_tokens,
        "compute_tokens": compute_tokens(summary["tokens_trained"], scoring_tokens, scoring_cost_frac),
        "wall_s": summary.get("wall_s"),
        "train_s": summary.get("train_s"),
        "num_blocks": summary["num_blocks"],
        "block_len": block_len,
        "schedule": [{"kind": p.kind, "keep_frac": p.keep_frac, "passes": p.passes, "steps": p.num_steps}
                     for p in plans],
        "corpus_composition": corpus,
        "focus_sets": focus,
        "forgotten_at_least_once": stats.get("forgotten_at_least_once"),
        "forgotten_more_than_once": stats.get("forgotten_more_than_once"),
        "diagnostics": diagnostics(history, plans, paths),
        "model": {"arch": cfg.model.arch, "hidden_size": cfg.model.hidden_size, "num_layers": cfg.model.num_layers},
        "data_dir": cfg.data.output_dir,
    }


def position_in_pass(steps: np.ndarray, plans) -> np.ndarray:
    """Where in its pass each step lies, in [0, 1): 0 is the pass's first step. NaN outside the plan."""
    steps = np.asarray(steps, dtype=np.int64)
    out = np.full(len(steps), np.nan)
    for p in plans:
        inside = (steps >= p.start_step) & (steps < p.end_step)
        out[inside] = ((steps[inside] - p.start_step) % p.steps_per_pass) / p.steps_per_pass
    return out


def diagnostics(history, plans, paths: RunPaths) -> dict[str, Any]:
    """Position bias of recorded losses, and recorded-vs-scored agreement, from a run's history."""
    import pyarrow.parquet as pq

    rec = history[history.source == "record"]
    position = {}
    for p in plans:
        if p.kind == "focus":
            continue
        here = rec[(rec.phase_idx == p.phase_idx) & (rec.step < p.start_step + p.steps_per_pass)]  # first pass
        if len(here):
            position[str(p.phase_idx)] = spearman(here.loss, position_in_pass(here.step.to_numpy(), plans))
    first_focus = next((p for p in plans if p.kind == "focus" and paths.selection(p.phase_idx).exists()), None)
    first_half = None
    if first_focus is not None:
        ids = pq.read_table(paths.selection(first_focus.phase_idx), columns=["block_id"])["block_id"].to_numpy()
        # Records before the selection: everything before the phase, plus a scoring pass at its first step.
        start = first_focus.start_step
        before = history[(history.step < start) | ((history.step == start) & (history.source == "score"))]
        before = before.sort_values("record_idx")
        last = before.groupby("block_id").tail(1).set_index("block_id")
        deciding = last.reindex(ids)
        deciding = deciding[deciding.source == "record"]
        if len(deciding):
            first_half = float((position_in_pass(deciding.step.to_numpy(), plans) < 0.5).mean())
    agreement = []
    scored = history[history.source == "score"]
    for phase_idx, group in scored.groupby("phase_idx"):
        at = int(group.step.max())
        prior = rec[rec.step < at].sort_values("record_idx").groupby("block_id").tail(1).set_index("block_id")
        both = group.set_index("block_id").join(prior[["loss"]], rsuffix="_recorded", how="inner")
        agreement.append({"phase_idx": int(phase_idx), "step": at, "num_blocks": int(len(both)),
                          "spearman": spearman(both.loss, both.loss_recorded)})
    return {"position_loss_spearman": position, "first_focus_first_half_share": first_half,
            "recorded_vs_scored": agreement}


# --------------------------------------------------------------------------------------------
# Across runs
# --------------------------------------------------------------------------------------------


def _review_position_spearman(run: dict[str, Any]) -> Optional[float]:
    """Mean position correlation over a run's review phases (None without one)."""
    values = [v for idx, v in run["diagnostics"]["position_loss_spearman"].items()
              if v is not None and run["schedule"][int(idx)]["kind"] == "review"]
    return float(np.mean(values)) if values else None


def _on_grid(run: dict[str, Any], key: str, grid: np.ndarray, series: Optional[list] = None) -> np.ndarray:
    y = np.asarray(series if series is not None else run[key], dtype=float)
    return np.interp(grid, np.asarray(run["tokens"], dtype=float), y)


def summarize(runs: list[dict[str, Any]], *, reference: str = REFERENCE_METHOD) -> dict[str, Any]:
    """Per-method numbers (mean and spread over seeds) from loaded runs; pure."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    ref_runs = [r for r in runs if r["method"] == reference]
    target = mean_spread(r["final_val_loss"] for r in ref_runs)["mean"]
    ref_tokens = mean_spread(r["training_tokens"] for r in ref_runs)["mean"]
    ref_compute = mean_spread(r["compute_tokens"] for r in ref_runs)["mean"]
    for r in runs:
        t = tokens_to_target(r["tokens"], r["val_loss"], target) if target is not None else None
        c = tokens_to_target(r["compute"], r["val_loss"], target) if target is not None else None
        r["tokens_to_target"] = t
        r["compute_to_target"] = c
        r["tokens_to_target_frac"] = t / ref_tokens if t is not None and ref_tokens else None
        r["compute_to_target_frac"] = c / ref_compute if c is not None and ref_compute else None
        r["domain_progress"] = {
            d: {f"tokens_to_{int(f * 100)}pct_of_drop": time_to_fraction_of_drop(r["tokens"], ys, f) for f in (0.5, 0.9)}
            for d, ys in r["val_loss_by_domain"].items()
        }
    ref_curve = None
    if ref_runs:
        ref_grid = np.asarray(ref_runs[0]["tokens"], dtype=float)
        ref_curve = (ref_grid, np.array([_on_grid(r, "val_loss", ref_grid) for r in ref_runs]).mean(0))
    per_method = {}
    for m in methods:
        mr = [r for r in runs if r["method"] == m]
        grid = np.asarray(mr[0]["tokens"], dtype=float)
        curves = np.array([_on_grid(r, "val_loss", grid) for r in mr])
        domains = sorted(mr[0]["final_val_loss_by_domain"])
        focus = _mean_focus_mix(mr)
        per_method[m] = {
            "seeds": [r["seed"] for r in mr],
            "final_val_loss": mean_spread(r["final_val_loss"] for r in mr),
            "final_val_loss_by_domain": {d: mean_spread(r["final_val_loss_by_domain"].get(d) for r in mr) for d in domains},
            "training_tokens": mean_spread(r["training_tokens"] for r in mr),
            "scoring_tokens": mean_spread(r["scoring_tokens"] for r in mr),
            "compute_tokens": mean_spread(r["compute_tokens"] for r in mr),
            "tokens_to_target_frac": mean_spread(r["tokens_to_target_frac"] for r in mr),
            "compute_to_target_frac": mean_spread(r["compute_to_target_frac"] for r in mr),
            "reached_target": sum(r["tokens_to_target"] is not None for r in mr),
            "mean_curve_tokens_to_target_frac": _frac(tokens_to_target(grid, curves.mean(0), target), ref_tokens)
            if target is not None else None,
            # The other way round: where the reference's mean curve reaches this method's mean final loss
            # (below 1: the reference got there with fewer tokens, i.e. this method lost).
            "reference_tokens_to_this_final_frac": _frac(tokens_to_target(
                ref_curve[0], ref_curve[1], float(np.mean([r["final_val_loss"] for r in mr]))), ref_tokens)
            if ref_curve is not None else None,
            "wall_s": mean_spread(r["wall_s"] for r in mr),
            "train_s": mean_spread(r["train_s"] for r in mr),
            "forgotten_at_least_once": mean_spread(r["forgotten_at_least_once"] for r in mr),
            "forgotten_more_than_once": mean_spread(r["forgotten_more_than_once"] for r in mr),
            "num_blocks": mr[0]["num_blocks"],
            "schedule": mr[0]["schedule"],
            "curve": {"tokens": grid.tolist(), "mean": curves.mean(0).tolist(),
                      "std": (curves.std(0, ddof=1) if len(mr) > 1 else np.zeros(len(grid))).tolist()},
            "focus_mix": focus,
            "domains_learned_first": _learning_order(mr, domains),
            "position_loss_spearman_learn": mean_spread(
                r["diagnostics"]["position_loss_spearman"].get("0") for r in mr),
            "position_loss_spearman_review": mean_spread(_review_position_spearman(r) for r in mr),
            "first_focus_first_half_share": mean_spread(r["diagnostics"]["first_focus_first_half_share"] for r in mr),
            "recorded_vs_scored_spearman": mean_spread(
                a["spearman"] for r in mr for a in r["diagnostics"]["recorded_vs_scored"]),
        }
    return {"reference": reference, "target_val_loss": target, "reference_training_tokens": ref_tokens,
            "reference_compute_tokens": ref_compute, "methods": per_method}


def _frac(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    return value / ref if value is not None and ref else None


def _mean_focus_mix(mr: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per focus phase: each domain's mean share of the focus set, and its share of the corpus."""
    corpus = mr[0]["corpus_composition"]
    total = sum(corpus.values()) or 1
    out = []
    for i, f in enumerate(mr[0]["focus_sets"]):
        shares = {}
        for d in corpus:
            vals = []
            for r in mr:
                if i < len(r["focus_sets"]):
                    comp = r["focus_sets"][i]["composition"]
                    vals.append(comp.get(d, 0) / max(1, sum(comp.values())))
            shares[d] = float(np.mean(vals)) if vals else 0.0
        out.append({"phase_idx": f["phase_idx"], "keep_frac": f["keep_frac"], "share": shares,
                    "corpus_share": {d: c / total for d, c in corpus.items()},
                    "over_representation": {d: shares[d] / (corpus[d] / total) if corpus[d] else None for d in corpus}})
    return out


def _learning_order(mr: list[dict[str, Any]], domains: list[str]) -> list[dict[str, Any]]:
    """Domains sorted by mean tokens to reach half (and 90%) of their validation-loss drop."""
    rows = []
    for d in domains:
        half = mean_spread(r["domain_progress"].get(d, {}).get("tokens_to_50pct_of_drop") for r in mr)["mean"]
        ninety = mean_spread(r["domain_progress"].get(d, {}).get("tokens_to_90pct_of_drop") for r in mr)["mean"]
        rows.append({"domain": d, "tokens_to_50pct_of_drop": half, "tokens_to_90pct_of_drop": ninety})
    return sorted(rows, key=lambda row: (row["tokens_to_50pct_of_drop"] is None, row["tokens_to_50pct_of_drop"] or 0))


# --------------------------------------------------------------------------------------------
# Files: plots, Markdown, summary.json
# --------------------------------------------------------------------------------------------


def build_report(compare_dir: str | Path) -> dict[str, Any]:
    """Read ``compare.json`` and its complete runs; write summary.json, plots/ and report.md."""
    out = Path(compare_dir)
    index = json.loads((out / "compare.json").read_text())
    frac = index["config"].get("compare", {}).get("scoring_cost_frac", 1 / 3)
    runs, missing = [], []
    for entry in index["runs"]:
        if RunPaths(Path(entry["run_dir"])).complete.exists():
            runs.append(load_run(entry["run_dir"], entry["method"], entry["seed"], frac))
        else:
            missing.append(f"{entry['method']}-s{entry['seed']}")
    if not runs:
        raise ValueError(f"no complete run in {out} yet (expected {len(index['runs'])})")
    summary = summarize(runs)
    summary.update({"name": index["name"], "scoring_cost_frac": frac, "missing_runs": missing,
                    "runs": [_run_numbers(r) for r in runs]})
    plots = write_plots(out / "plots", runs, summary)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary, runs, plots, index))
    return summary


def _run_numbers(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "seed", "run_dir", "final_val_loss", "final_val_loss_by_domain", "training_tokens",
            "scoring_tokens", "compute_tokens", "tokens_to_target", "tokens_to_target_frac", "compute_to_target",
            "compute_to_target_frac", "wall_s", "train_s", "forgotten_at_least_once", "forgotten_more_than_once",
            "focus_sets", "diagnostics", "domain_progress", "tokens", "val_loss", "val_loss_by_domain")
    return {k: r.get(k) for k in keys}


def write_plots(plot_dir: Path, runs: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """PNG plots (matplotlib, Agg backend); returns {name: path relative to the report}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    methods = summary["methods"]
    target = summary["target_val_loss"]
    files: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(plot_dir / f"{name}.png", dpi=110)
        plt.close(fig)
        files[name] = f"plots/{name}.png"

    for axis, label in (("tokens", "training tokens"), ("compute", "compute (training-token equivalents)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for m in methods:
            mr = [r for r in runs if r["method"] == m]
            grid = np.asarray(mr[0][axis], dtype=float)
            ys = np.array([np.interp(grid, np.asarray(r[axis], float), np.asarray(r["val_loss"], float)) for r in mr])
            mean, std = ys.mean(0), ys.std(0, ddof=1) if len(mr) > 1 else np.zeros(len(grid))
            ax.plot(grid, mean, label=f"{m} (n={len(mr)})")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=1, label="random's final loss")
        lo = min(min(r["val_loss"]) for r in runs)
        ax.set_ylim(lo - 0.1, lo + 1.5)
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, f"val_loss_vs_{axis}")

    domains = sorted({d for m in methods.values() for d in m["final_val_loss_by_domain"]})
    if domains:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(domains)), 4))
        width = 0.8 / len(methods)
        for i, (m, s) in enumerate(methods.items()):
            means = [s["final_val_loss_by_domain"].get(d, {}).get("mean") or np.nan for d in domains]
            stds = [s["final_val_loss_by_domain"].get(d, {}).get("std") or 0 for d in domains]
            ax.bar(np.arange(len(domains)) + i * width, means, width, yerr=stds, label=m)
        ax.set_xticks(np.arange(len(domains)) + 0.4 - width / 2, domains, rotation=30)
        ax.set_ylabel("final validation loss")
        ax.legend()
        ax.set_ylim(0, None)
        save(fig, "final_loss_by_domain")

    mixes = [(m, f) for m, s in methods.items() for f in s["focus_mix"]]
    if mixes:
        corpus = mixes[0][1]["corpus_share"]
        bars = [("corpus", corpus)] + [(f"{m} p{f['phase_idx']}", f["share"]) for m, f in mixes]
        fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(bars)), 4))
        bottom = np.zeros(len(bars))
        for d in sorted(corpus):
            vals = np.array([b[1].get(d, 0) for b in bars])
            ax.bar(range(len(bars)), vals, bottom=bottom, label=d)
            bottom += vals
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30)
        ax.set_ylabel("share of blocks")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        save(fig, "focus_domain_mix")

    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        r = next(r for r in runs if r["method"] == m)
        for d, ys in sorted(r["val_loss_by_domain"].items()):
            y = np.asarray(ys, float)
            if len(y) > 1 and y[0] > y[-1]:
                ax.plot(r["tokens"], (y[0] - y) / (y[0] - y[-1]), label=d)
        ax.set_title(f"{m} (seed {r['seed']})")
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of the domain's loss drop")
    axes[0][-1].legend(fontsize=7)
    save(fig, "domain_learning_progress")
    return files


def _fmt(x: Optional[float], spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ms(s: dict[str, Any], spec: str = ".3f") -> str:
    if s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:{spec}} ± {s['std']:{spec}}" if s.get("n", 0) > 1 else f"{s['mean']:{spec}}"


def render_markdown(summary: dict[str, Any], runs: list[dict[str, Any]], plots: dict[str, str],
                    index: dict[str, Any]) -> str:
    methods = summary["methods"]
    ref = summary["reference"]
    lines = [f"# Comparison `{summary['name']}`", ""]
    any_run = runs[0]
    lines += [
        f"Runs: {len(runs)} complete"
        + (f"; **not finished: {', '.join(summary['missing_runs'])}** (partial results)" if summary["missing_runs"] else "")
        + f". Model {any_run['model']['arch']} hidden {any_run['model']['hidden_size']} x "
          f"{any_run['model']['num_layers']} layers; {any_run['num_blocks']:,} training blocks of "
          f"{any_run['block_len']} tokens (`{any_run['data_dir']}`).",
        "",
        "| method | schedule (kind keep x passes) | seeds |",
        "|---|---|---|",
    ]
    for m, s in methods.items():
        sched = ", ".join(f"{p['kind']} {p['keep_frac']:g} x{p['passes']:.3g}" for p in s["schedule"])
        lines.append(f"| {m} | {sched} | {', '.join(map(str, s['seeds']))} |")
    target = summary["target_val_loss"]
    lines += [
        "",
        "## Does it pay?",
        "",
        f"Target: the `{ref}` baseline's final validation loss, {_fmt(target)} nats/token (mean over its seeds). "
        "*Tokens to target* is the interpolated number of training tokens a method needs to reach it, as a fraction "
        f"of `{ref}`'s tokens (below 1: fewer tokens); *compute* adds scoring passes at "
        f"{summary['scoring_cost_frac']:.2f} of a training token each. Mean ± sample std over seeds; "
        "a method that never reaches the target shows n/a (see *reached*; the reference itself reaches its own mean in "
        f"about half its seeds by construction). *`{ref}` reaches this loss at*: where `{ref}`'s mean curve first "
        "reaches the method's mean final loss, as a fraction of its tokens (n/a: never, i.e. the method ends lower).",
        "",
        "| method | final val loss | tokens to target (frac) | compute to target (frac) | reached | "
        f"`{ref}` reaches this loss at (frac) | training tokens | scoring tokens | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in methods.items():
        lines.append(
            f"| {m} | {_ms(s['final_val_loss'])} | {_ms(s['tokens_to_target_frac'], '.2f')} | "
            f"{_ms(s['compute_to_target_frac'], '.2f')} | {s['reached_target']}/{len(s['seeds'])} | "
            f"{_fmt(s['reference_tokens_to_this_final_frac'], '.2f')} | "
            f"{_fmt(s['training_tokens']['mean'], ',.0f')} | {_fmt(s['scoring_tokens']['mean'], ',.0f')} | "
            f"{_ms(s['wall_s'], '.0f')} |"
        )
    lines += ["", _verdict(summary), ""]
    for name, title in (("val_loss_vs_tokens", "Validation loss against training tokens (band: ± 1 std over seeds)"),
                        ("val_loss_vs_compute", "Validation loss against compute")):
        if name in plots:
            lines += [f"![{title}]({plots[name]})", ""]
    domains = sorted({d for s in methods.values() for d in s["final_val_loss_by_domain"]})
    lines += ["## Per-domain validation loss at the end", "",
              "| domain | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in domains:
        cells = [_ms(s["final_val_loss_by_domain"].get(d, {})) for s in methods.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if "final_loss_by_domain" in plots:
        lines += ["", f"![Final validation loss by domain]({plots['final_loss_by_domain']})"]
    lines += ["", "## What the focus phases chose", "",
              "Each focus set's domain mix (mean over seeds) against the training corpus; ×: over-representation "
              "(share in the focus set / share in the corpus).", ""]
    for m, s in methods.items():
        for f in s["focus_mix"]:
            top = sorted(f["share"], key=lambda d: -(f["over_representation"][d] or 0))
            cells = ", ".join(f"{d} {f['share'][d]:.0%} (×{_fmt(f['over_representation'][d], '.2f')})" for d in top)
            lines.append(f"- **{m}**, phase {f['phase_idx']} (keep {f['keep_frac']:g}): {cells}")
    if "focus_domain_mix" in plots:
        lines += ["", f"![Domain mix of each focus set]({plots['focus_domain_mix']})"]
    lines += ["", "## Which domains were learned first", "",
              "Domains ordered by the training tokens a method needed to make half of its validation-loss drop "
              "(from the first evaluation to the last), mean over seeds. The paper observed conversational text "
              "learned before factual text and code.", ""]
    for m, s in methods.items():
        order = ", ".join(f"{row['domain']} ({_fmt(row['tokens_to_50pct_of_drop'], ',.0f')})" for row in s["domains_learned_first"])
        lines.append(f"- **{m}**: {order}")
    if "domain_learning_progress" in plots:
        lines += ["", f"![Per-domain learning progress]({plots['domain_learning_progress']})"]
    lines += ["", "## Forgetting", "",
              "Blocks whose recorded loss rose between two recordings (at least once / more than once), mean over seeds.",
              "", "| method | blocks | forgotten ≥ 1 | forgotten > 1 |", "|---|---|---|---|"]
    for m, s in methods.items():
        n = s["num_blocks"]
        a, b = s["forgotten_at_least_once"]["mean"], s["forgotten_more_than_once"]["mean"]
        lines.append(f"| {m} | {n:,} | {_fmt(a, ',.0f')} ({_fmt(a / n if a is not None else None, '.1%')}) | "
                     f"{_fmt(b, ',.0f')} ({_fmt(b / n if b is not None else None, '.1%')}) |")
    lines += ["", "## Are the statistics measuring difficulty?", "",
              "A loss recorded during training early in a pass comes from a less-trained model. *Position "
              "correlation* is Spearman's rho between a block's recorded loss in the first learn pass and its "
              "position in that pass (0 = first step, 1 = last): near -1 means the recorded losses mostly say "
              "*when* a block was seen; the same over review passes, recorded by a model that has seen every block. "
              "*First-half share*: fraction of the first focus set whose deciding loss "
              "was recorded in the first half of its pass (0.5 if position did not matter). *Recorded vs scored*: "
              "Spearman's rho between a block's latest training-pass loss and a fresh scoring pass, where both exist.",
              "", "| method | position correlation (learn pass) | position correlation (review passes) | "
              "first-half share of first focus set | recorded vs scored |", "|---|---|---|---|---|"]
    for m, s in methods.items():
        lines.append(f"| {m} | {_ms(s['position_loss_spearman_learn'], '.2f')} | "
                     f"{_ms(s['position_loss_spearman_review'], '.2f')} | "
                     f"{_ms(s['first_focus_first_half_share'], '.2f')} | {_ms(s['recorded_vs_scored_spearman'], '.2f')} |")
    lines += ["", "## Runs", "", "| run | final val loss | tokens to target | wall s | directory |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['method']}-s{r['seed']} | {_fmt(r['final_val_loss'])} | {_fmt(r['tokens_to_target'], ',.0f')} | "
                     f"{_fmt(r['wall_s'], '.0f')} | `{r['run_dir']}` |")
    lines.append("")
    return "\n".join(lines)


def _verdict(summary: dict[str, Any]) -> str:
    """One plain sentence per method against the reference, including where it loses."""
    ref = summary["reference"]
    methods = summary["methods"]
    if ref not in methods:
        return f"No `{ref}` run is complete, so there is no target yet."
    base = methods[ref]["final_val_loss"]["mean"]
    out = []
    for m, s in methods.items():
        if m == ref:
            continue
        diff = s["final_val_loss"]["mean"] - base
        frac = s["tokens_to_target_frac"]["mean"]
        reached = f"reached the target in {s['reached_target']}/{len(s['seeds'])} seeds"
        when = f" using {frac:.0%} of the tokens on average" if frac is not None else ""
        worse = [d for d, v in s["final_val_loss_by_domain"].items()
                 if v.get("mean") is not None and methods[ref]["final_val_loss_by_domain"].get(d, {}).get("mean") is not None
                 and v["mean"] > methods[ref]["final_val_loss_by_domain"][d]["mean"]]
        verdict = "better" if diff < 0 else "worse"
        out.append(f"**{m}** ends {abs(diff):.3f} nats/token {verdict} than `{ref}` and {reached}{when}"
                   + (f"; it ends worse than `{ref}` on {', '.join(worse)}." if worse else "; no domain ends worse."))
    return "\n\n".join(out)


if __name__ == "__main__":
    import sys

    print(json.dumps({k: v for k, v in build_report(sys.argv[1]).items() if k != "runs"}, indent=1, default=str)[:4000])
