"""How BlockStats and the selection strategies scale: time and memory at 10 M blocks.

    python bench/stats_scale.py                      # 10 M blocks, 64 k records per batch
    python bench/stats_scale.py --num-blocks 1000000

Records two full passes in batches, as training workers flush them (random order, one batch per
call), spills the first pass's history to Parquet, times every selection strategy, then saves and
loads a snapshot. Prints a markdown table; the numbers in docs/statistics.md come from here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lfr_ray.selection import (  # noqa: E402
    composition,
    select_diverse,
    select_forgotten_first,
    select_hardest,
    select_sample,
)
from lfr_ray.stats import BYTES_PER_BLOCK, BYTES_PER_RECORD, BlockStats  # noqa: E402

DOMAINS = np.array(["arxiv", "book", "c4", "commoncrawl", "github", "stackexchange", "wikipedia"])
MB = 1e6


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc (Linux) or ``resource``."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024 / MB, int(fields["VmHWM"].split()[0]) * 1024 / MB
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
        return float("nan"), peak


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{cpu}, {os.cpu_count()} CPUs, {mem_gb:.0f} GB RAM, Python {platform.python_version()}, numpy {np.__version__}"


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def record_pass(stats: BlockStats, order: np.ndarray, losses: np.ndarray, batch: int, phase_idx: int) -> float:
    """Record every block once, ``batch`` records per call; returns the seconds spent inside ``record``."""
    spent = 0.0
    for i, start in enumerate(range(0, order.size, batch)):
        ids = order[start : start + batch]
        t0 = time.perf_counter()
        stats.record(ids, losses[ids], phase_idx=phase_idx, step=i)
        spent += time.perf_counter() - t0
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-blocks", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=65_536, help="records per record() call")
    parser.add_argument("--keep-frac", type=float, default=0.3)
    args = parser.parse_args()
    n, batch = args.num_blocks, args.batch
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"  {name}: {value}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(0)
    loss_1 = rng.gamma(4.0, 0.75, size=n).astype(np.float32)  # a loss-like spread around 3
    loss_2 = (loss_1 * rng.normal(0.9, 0.1, size=n)).astype(np.float32)  # mostly down, some up
    order_1, order_2 = rng.permutation(n), rng.permutation(n)
    domain_codes = rng.integers(0, DOMAINS.size, size=n).astype(np.int8)
    clusters = rng.integers(0, 10_000, size=n).astype(np.int32)
    rss_inputs, _ = rss_mb()
    rows.append(("process RSS before BlockStats (interpreter, libraries, generated inputs)", f"{rss_inputs:.0f} MB"))

    stats, seconds = timed(lambda: BlockStats(n))
    row("BlockStats(n) allocate", f"{seconds:.3f} s")
    num_batches = -(-n // batch)

    seconds = record_pass(stats, order_1, loss_1, batch, phase_idx=0)
    row(f"record pass 1 ({num_batches} batches of {batch})",
        f"{seconds:.3f} s ({n / seconds / 1e6:.1f} M records/s, {seconds / num_batches * 1e3:.1f} ms/batch)")
    dense = n * BYTES_PER_BLOCK
    row("dense state (measured nbytes)", f"{dense / MB:.0f} MB ({BYTES_PER_BLOCK} B/block)")
    row("history after pass 1 (allocated)", f"{(stats.memory_bytes() - dense) / MB:.0f} MB "
        f"({BYTES_PER_RECORD} B/record + chunk slack)")
    rss_now, _ = rss_mb()
    row("process RSS after pass 1", f"{rss_now:.0f} MB (+{rss_now - rss_inputs:.0f} MB)")

    table, seconds = timed(stats.drain_history)
    row("drain_history (pass 1, to a pyarrow.Table)", f"{seconds:.3f} s, {table.nbytes / MB:.0f} MB table")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history-00.parquet"
        _, seconds = timed(pq.write_table, table, path)
        row("write history Parquet (pass 1)", f"{seconds:.3f} s, {path.stat().st_size / MB:.0f} MB on disk")
    del table

    seconds = record_pass(stats, order_2, loss_2, batch, phase_idx=1)
    row("record pass 2 (forgetting)", f"{seconds:.3f} s ({n / seconds / 1e6:.1f} M records/s)")
    summary, seconds = timed(stats.summary)
    row("summary()", f"{seconds:.3f} s; forgotten now {summary['forgotten_now']:,} of {n:,}")
    _, seconds = timed(stats.forgetting_state)
    row("forgetting_state()", f"{seconds:.3f} s")
    row("memory_bytes() after pass 2 (dense + 1 pass of history)", f"{stats.memory_bytes() / MB:.0f} MB")
    rss_now, rss_peak = rss_mb()
    row("process RSS after pass 2 / peak so far", f"{rss_now:.0f} MB / {rss_peak:.0f} MB")

    latest, previous = stats.latest_loss(), stats.previous_loss()
    k = args.keep_frac
    strategies = {
        f"select_hardest (keep {k})": lambda: select_hardest(latest, k),
        "select_sample (temperature 1)": lambda: select_sample(latest, k, temperature=1.0, seed=0),
        "select_sample (temperature inf)": lambda: select_sample(latest, k, temperature=float("inf"), seed=0),
        "select_diverse (7 domain codes)": lambda: select_diverse(latest, k, domain_codes)[0],
        "select_diverse (10 000 clusters)": lambda: select_diverse(latest, k, clusters)[0],
        "select_forgotten_first": lambda: select_forgotten_first(latest, previous, k),
    }
    for name, fn in strategies.items():
        ids, seconds = timed(fn)
        row(name, f"{seconds:.3f} s ({ids.size:,} ids)")
    ids = select_hardest(latest, k)
    domains = DOMAINS[domain_codes]
    _, seconds = timed(lambda: stats.mark_selected(ids))
    row("mark_selected (sorted ids)", f"{seconds:.3f} s")
    _, seconds = timed(lambda: composition(ids, domains))
    row("composition (string domains)", f"{seconds:.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.npz"
        _, seconds = timed(lambda: stats.save(path))
        row("save (dense + 1 pass of history, .npz)", f"{seconds:.3f} s, {path.stat().st_size / MB:.0f} MB")
        loaded, seconds = timed(lambda: BlockStats.load(path))
        row("load", f"{seconds:.3f} s")
        assert loaded.summary() == stats.summary()
        stats.drain_history()
        _, seconds = timed(lambda: stats.save(path))
        row("save after drain_history (dense only)", f"{seconds:.3f} s, {path.stat().st_size / MB:.0f} MB")

    print(f"\n`python bench/stats_scale.py --num-blocks {n} --batch {batch}`, "
          f"{datetime.date.today().isoformat()}, {machine()}\n")
    _, rss_peak = rss_mb()
    rows.append(("process RSS peak (whole run)", f"{rss_peak:.0f} MB"))
    print(f"| {n:,} blocks | measured |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
