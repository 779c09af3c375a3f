"""``lfr-ray compare``: run several methods and seeds on the same prepared data, then write a report.

The driver of a comparison. It prepares the data once, derives each method's schedule from the LFR
schedule with the same token budget (``baselines.py``), runs every (seed, method) pair with
``pipeline.run`` and writes the report (``report.py``) into the comparison directory::

    <compare.root_dir>/<compare.name>/
      compare.json            the comparison: config, and one entry per run (method, seed, run_dir)
      <method>-s<seed>/       an ordinary run directory (``paths.py``)
      report.md, summary.json, plots/*.png

Runs go seed-major (every method for seed 0, then seed 1, ...), so a comparison stopped early still
holds complete, comparable seeds; the report is rebuilt after every finished run. A run whose
``_COMPLETE`` marker exists is reused, not retrained; an interrupted run resumes from its checkpoint.
Assumes Ray is initialised (``cli.py``) when anything is left to run or prepare.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

from lfr_ray.baselines import method_schedule
from lfr_ray.config import CompareConfig, Config
from lfr_ray.paths import RunPaths, atomic_write_json

log = logging.getLogger(__name__)


def compare_dir(cfg: Config) -> Path:
    return Path(cfg.compare.root_dir).absolute() / cfg.compare.name


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def run_config(cfg: Config, method: str, seed: int, num_blocks: int) -> Config:
    """The config of one run of a comparison: ``cfg`` with the method's schedule, the seed and a run dir.

    The ``compare`` section is reset to its defaults so a run's config does not depend on which other
    methods or seeds the comparison holds (adding a seed later reuses the finished runs).
    """
    schedule = method_schedule(method, cfg.schedule, num_blocks, cfg.train.global_batch_blocks(),
                               learn_passes=cfg.compare.static_prune_learn_passes,
                               keep_frac=cfg.compare.static_prune_keep_frac,
                               variants=cfg.compare.variant_schedules())
    return dataclasses.replace(
        cfg,
        schedule=schedule,
        train=dataclasses.replace(cfg.train, seed=seed),
        run=dataclasses.replace(cfg.run, name=run_name(method, seed), root_dir=str(compare_dir(cfg))),
        compare=CompareConfig(),
    ).validate()


def planned_runs(cfg: Config, num_blocks: int) -> list[tuple[str, int, Config]]:
    """(method, seed, run config) in the order they run: seed-major."""
    return [(m, s, run_config(cfg, m, s, num_blocks)) for s in cfg.compare.seeds for m in cfg.compare.methods]


def compare(cfg: Config, *, verbose: bool = True,
            run_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run (or reuse) every run of the comparison and write its report; return the report's summary.

    ``run_fn`` defaults to ``pipeline.run``; tests pass a counting wrapper to check reuse.
    """
    from lfr_ray.data import prepare

    if run_fn is None:
        from lfr_ray.pipeline import run as run_fn
    out = compare_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    meta = prepare(cfg.data, config_yaml=cfg.to_yaml(), progress=verbose)
    runs = planned_runs(cfg, meta["train"]["num_blocks"])
    index = {
        "name": cfg.compare.name,
        "config": cfg.to_dict(),
        "runs": [{"method": m, "seed": s, "run_dir": str(rc.run.run_dir())} for m, s, rc in runs],
    }
    atomic_write_json(out / "compare.json", index)
    if verbose:
        print(f"Comparison '{cfg.compare.name}' -> {out}: {len(cfg.compare.methods)} method(s) x "
              f"{len(cfg.compare.seeds)} seed(s)")
    summary: dict[str, Any] = {}
    failed: list[str] = []
    for i, (method, seed, run_cfg) in enumerate(runs):
        paths = RunPaths(run_cfg.run.run_dir())
        if paths.complete.exists():
            if verbose:
                print(f"[compare] {i + 1}/{len(runs)} {run_cfg.run.name}: complete, reused")
            continue
        if verbose:
            print(f"[compare] {i + 1}/{len(runs)} {run_cfg.run.name}: training")
        t0 = time.time()
        try:
            run_fn(run_cfg, verbose=verbose)
        except Exception:  # noqa: BLE001 - one failed run must not cost the others; re-raised below
            log.exception("run %s of comparison '%s' failed; continuing with the others", run_cfg.run.name,
                          cfg.compare.name)
            failed.append(run_cfg.run.name)
            continue
        if verbose:
            print(f"[compare] {run_cfg.run.name} done in {time.time() - t0:.0f} s")
        summary = _write_report(out, verbose=False)  # partial results stay readable if stopped later
    summary = _write_report(out, verbose=verbose) or summary
    if failed:
        from lfr_ray.pipeline import RunError

        raise RunError(f"comparison '{cfg.compare.name}': run(s) {', '.join(failed)} failed (see the log above); "
                       "the report covers the others. Run the same command again to retry only those.")
    return summary


def _write_report(out: Path, *, verbose: bool) -> dict[str, Any]:
    """Build the report; a failure here is logged, never allowed to stop the runs still to train."""
    from lfr_ray.report import build_report

    try:
        summary = build_report(out)
    except Exception:  # noqa: BLE001 - the runs are the expensive part; the report can be rebuilt
        log.exception("building the comparison report in %s failed; rebuild it with "
                      "`python -m lfr_ray.report %s`", out, out)
        return {}
    if verbose:
        print(f"[compare] report: {out / 'report.md'}")
    return summary
