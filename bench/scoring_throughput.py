"""Scoring throughput: the Ray Data pass (1 and 2 actors) against a plain single-process PyTorch loop.

    python bench/scoring_throughput.py                                   # demo corpus, demo model
    python bench/scoring_throughput.py --config debug --data-dir /tmp/lfr-bench/debug

Prepares the config's corpus into ``--data-dir`` if needed, saves one checkpoint of the config's model
(random weights: throughput does not depend on them), then scores every training block

* in a plain loop in this process (``scoring.score_batch`` over ``scoring.batch_size`` blocks at a
  time; torch with 1 thread, then 2), and
* with ``scoring.score_blocks`` on a local Ray instance of 2 CPUs: one actor of 1 CPU, then two actors
  of 0.75 CPU each (one torch thread per actor; 0.25 CPU left for the read tasks).

Ray Data times are wall-clock from the start of the pass to the last part written, so they include
starting the actors and loading the model in each. Checks that every pass gives the plain loop's
losses. Prints a markdown table; the numbers in docs/scoring.md come from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats_scale import machine  # noqa: E402

from lfr_ray.config import load_config  # noqa: E402
from lfr_ray.blocks import load_block_arrays, load_metadata  # noqa: E402
from lfr_ray.data import prepare  # noqa: E402
from lfr_ray.modeling import build_model, num_params  # noqa: E402
from lfr_ray.scoring import LOSS, read_scores, score_batch, score_blocks  # noqa: E402


def plain_loop(model: torch.nn.Module, tokens: np.ndarray, batch_size: int, threads: int) -> tuple[np.ndarray, float]:
    torch.set_num_threads(threads)
    out = np.empty(len(tokens), dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(tokens), batch_size):
        batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
        out[start : start + len(batch)] = score_batch(model, batch)[0]
    return out, time.perf_counter() - t0


def main() -> None:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data-dir", default="/tmp/lfr-bench/demo")
    args = parser.parse_args()
    cfg = load_config(f"{args.config}.yaml", [f"data.output_dir={args.data_dir}"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    prepare(cfg.data, config_yaml=cfg.to_yaml(), progress=False)
    meta = load_metadata(args.data_dir)
    tokens, _ = load_block_arrays(args.data_dir, "train")
    num_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    model = build_model(cfg.model, vocab_size=meta["tokenizer"]["vocab_size"], block_len=cfg.data.block_len,
                        eos_token_id=meta["tokenizer"]["eot_id"], seed=0).eval()
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        ckpt.mkdir()
        torch.save(model.state_dict(), ckpt / "model.pt")
        reference = None
        for threads in (1, 2):
            losses, wall = plain_loop(model, tokens, cfg.scoring.batch_size, threads)
            reference = losses if reference is None else reference
            rows.append((f"plain PyTorch loop, 1 process, {threads} torch thread(s)", wall, num_tokens / wall, 0.0))
        for actors, cpus in ((1, 1.0), (2, 0.75)):
            scoring = dataclasses.replace(cfg.scoring, min_actors=actors, max_actors=actors, num_cpus_per_actor=cpus)
            out = Path(tmp) / f"scores-{actors}"
            shutil.rmtree(out, ignore_errors=True)
            summary = score_blocks(args.data_dir, ckpt, cfg.model, scoring, out, progress=False)
            diff = float(np.abs(read_scores(out, ["block_id", LOSS])[LOSS].to_numpy() - reference).max())
            rows.append((f"Ray Data pass, {actors} actor(s) x {cpus:g} CPU", summary["wall_s"], summary["tokens_per_s"],
                         diff))
    ray.shutdown()

    print(f"\n`python bench/scoring_throughput.py --config {args.config}`, {datetime.date.today()}, {machine()}, "
          f"torch {torch.__version__}, ray {ray.__version__}")
    print(f"{len(tokens):,} blocks of {cfg.data.block_len} tokens ({num_tokens:,} tokens); {cfg.model.arch} "
          f"{num_params(model) / 1e6:.2f} M parameters; batch {cfg.scoring.batch_size} blocks; float32 on CPU\n")
    print("| scorer | wall s | tokens/s | max abs loss diff vs loop |\n|---|---|---|---|")
    for name, wall, rate, diff in rows:
        print(f"| {name} | {wall:.1f} | {rate:,.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
