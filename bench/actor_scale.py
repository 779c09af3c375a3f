"""The statistics actor at scale: a Ray actor ``Coordinator`` over 10 M blocks, fed as a run feeds it.

    python bench/actor_scale.py                       # 10 M blocks, 65,536 records per call
    python bench/actor_scale.py --num-blocks 1000000

Starts a local Ray instance (2 CPUs, no dashboard) and the coordinator as the run starts it (0 CPUs,
domains sent dictionary-encoded), then: two passes of ``record_many`` calls in random block order
(each call = 4 flushed batches of 16,384, at most 4 calls in flight, as fire-and-forget workers
send them); the phase end between them (drain the history to Parquet, snapshot); ``state_dict``
through the object store (what every checkpoint does); every selection strategy through
``phase_blocks`` (selection, ``mark_selected``, the selection's Parquet and JSON). The actor's RSS
is read from ``/proc/<pid>/status`` after each step. Prints a markdown table; the numbers in
docs/statistics.md come from here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats_scale import DOMAINS, MB, machine  # noqa: E402

from lfr_ray.coordinator import Coordinator  # noqa: E402
from lfr_ray.stats import BYTES_PER_BLOCK  # noqa: E402


def actor_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) RSS of process ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024 / MB, int(fields["VmHWM"].split()[0]) * 1024 / MB


def record_pass(actor, order: np.ndarray, losses: np.ndarray, *, phase_idx: int, call_records: int,
                batches_per_call: int, in_flight: int) -> tuple[float, int]:
    """Send every block once; returns (seconds until the actor applied the last call, number of calls)."""
    import ray

    per_batch = call_records // batches_per_call
    refs, calls = [], 0
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, order.size, call_records)):
        ids = order[start : start + call_records]
        batches = [(ids[j : j + per_batch], losses[ids[j : j + per_batch]], phase_idx, i * batches_per_call + j // per_batch)
                   for j in range(0, ids.size, per_batch)]
        refs.append(actor.record_many.remote(batches))
        calls += 1
        if len(refs) >= in_flight:
            ray.get(refs.pop(0))
    ray.get(refs)
    return time.perf_counter() - t0, calls


def main() -> None:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--num-blocks", type=int, default=10_000_000)
    parser.add_argument("--call-records", type=int, default=65_536)
    args = parser.parse_args()
    n, rows = args.num_blocks, []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"{what}: {value}", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, len(DOMAINS), n).astype(np.int8)
    domains = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(DOMAINS))
    loss1 = rng.gamma(4.0, 1.0, n).astype(np.float32)
    loss2 = (loss1 * rng.normal(0.9, 0.1, n)).astype(np.float32)

    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        actor = ray.remote(Coordinator).options(num_cpus=0, max_restarts=0).remote(run_dir, n, domains, 0)
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
        row("actor start (BlockStats(n) + domain codes, domains sent dictionary-encoded)",
            f"{time.perf_counter() - t0:.2f} s")
        row("actor RSS after start", f"{actor_rss_mb(pid)[0]:.0f} MB (dense state {n * BYTES_PER_BLOCK / MB:.0f} MB "
                                     f"+ codes {n / MB:.0f} MB)")
        kw = {"call_records": args.call_records, "batches_per_call": 4, "in_flight": 4}
        spent, calls = record_pass(actor, rng.permutation(n), loss1, phase_idx=0, **kw)
        row(f"record pass 1 ({calls} record_many calls of {args.call_records:,})",
            f"{spent:.2f} s ({n / spent / 1e6:.1f} M records/s, {spent / calls * 1e3:.1f} ms/call)")
        row("actor RSS after pass 1 (dense + 1 pass of history)", f"{actor_rss_mb(pid)[0]:.0f} MB")

        t0 = time.perf_counter()
        ray.get(actor.end_phase.remote(0, 1))
        row("end_phase (drain history to Parquet, snapshot .npz)", f"{time.perf_counter() - t0:.2f} s")
        row("actor RSS after end_phase", f"{actor_rss_mb(pid)[0]:.0f} MB")

        spent, calls = record_pass(actor, rng.permutation(n), loss2, phase_idx=1, **kw)
        row("record pass 2 (forgetting)", f"{spent:.2f} s ({n / spent / 1e6:.1f} M records/s)")
        row("actor RSS after pass 2", f"{actor_rss_mb(pid)[0]:.0f} MB")

        t0 = time.perf_counter()
        state = ray.get(actor.state_dict.remote())
        nbytes = sum(v.nbytes for v in state.values())
        del state
        row("state_dict to the caller (every checkpoint)", f"{time.perf_counter() - t0:.2f} s, {nbytes / MB:.0f} MB")

        groups = rng.integers(0, 64, n).astype(np.int32)
        calls = [
            ("hardest", {}),
            ("sample", {"temperature": 1.0}),
            ("forgotten-first", {}),
            ("diverse", {}),
            ("diverse", {"group_by": "cluster", "groups": groups}),
        ]
        for phase_idx, (strategy, kwargs) in enumerate(calls, start=2):
            t0 = time.perf_counter()
            ids = ray.get(actor.phase_blocks.remote(phase_idx, "focus", 0.3, strategy=strategy, **kwargs))
            label = strategy + (" by 64 clusters" if "groups" in kwargs else " by domain" if strategy == "diverse" else "")
            row(f"phase_blocks {label} (keep 0.3; select, mark, write)",
                f"{time.perf_counter() - t0:.2f} s ({len(ids):,} ids)")
        now, peak = actor_rss_mb(pid)
        row("actor RSS at the end / peak", f"{now:.0f} MB / {peak:.0f} MB")
        ray.kill(actor)
    ray.shutdown()

    print(f"\n`python bench/actor_scale.py --num-blocks {n}`, {datetime.date.today()}, {machine()}\n")
    print(f"| {n:,} blocks, Ray actor | measured |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
