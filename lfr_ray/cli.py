"""The ``lfr-ray`` console script; the only place that starts (or connects to) Ray.

    lfr-ray prepare [--config FILE] [key.sub=value ...]   raw text -> tokenized blocks
    lfr-ray run     [--config FILE] [key.sub=value ...]   prepare if needed, then the LFR schedule
    lfr-ray config  [--config FILE] [key.sub=value ...]   print the resolved config
    lfr-ray score   [--config FILE] [key.sub=value ...]   score every block with a run's checkpoint (Ray Data)
    lfr-ray compare [--config FILE] [key.sub=value ...]   LFR against baselines over seeds, then a report
    lfr-ray eval    --model DIR --text FILE [--lm-eval-tasks T,...]   perplexity of an exported model

``--config`` takes a YAML path or the name of a shipped config (``demo``, ``debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lfr_ray.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfr-ray", description="Learn-Focus-Review pretraining on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("prepare", "tokenize raw text into fixed-length blocks (Ray Data)"),
        ("run", "run (or resume) the LFR schedule on Ray Train; prepares the data first if needed"),
        ("config", "print the resolved config and exit"),
        ("score", "score every training block with a run's latest checkpoint (or scoring.checkpoint) on Ray Data"),
        ("compare", "run the methods in compare.methods over compare.seeds (reusing finished runs) and report"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", default="demo",
                       help="YAML file or shipped config name: demo (the default), debug")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.num_workers=2")
        if name != "config":
            p.add_argument("--address", default=None,
                           help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
            p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
        if name == "prepare":
            p.add_argument("--force", action="store_true", help="redo a complete output")
    p = sub.add_parser("eval", help="perplexity of an exported model on a text file (plain transformers)")
    p.add_argument("--model", required=True, help="a model directory written by a run (<run dir>/model)")
    p.add_argument("--text", default=None, help="a UTF-8 text file to compute the perplexity on")
    p.add_argument("--lm-eval-tasks", default=None,
                   help="comma-separated lm-eval (EleutherAI harness) tasks; needs `pip install lm-eval`")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    p.add_argument("--stride", type=int, default=None, help="new tokens per sliding window (default and maximum: context length - 1)")
    return parser


def _resolve_config_path(value: str | None) -> str | None:
    if value is None or os.path.exists(value) or value.endswith((".yaml", ".yml")):
        return value
    return f"{value}.yaml"


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if address:
        ray.init(address=address, runtime_env=env)
    else:
        ray.init(num_cpus=num_cpus, runtime_env=env)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "eval":
        from lfr_ray.evaluate import main_eval

        return main_eval(args.model, args.text, args.lm_eval_tasks, batch_size=args.batch_size, stride=args.stride)
    try:
        cfg = load_config(_resolve_config_path(args.config), args.overrides)
    except ConfigError as e:
        print(f"lfr-ray: error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(cfg.to_yaml(), end="")
        return 0

    from lfr_ray.baselines import BaselineError
    from lfr_ray.blocks import PrepareError
    from lfr_ray.data import format_summary, prepare
    from lfr_ray.pipeline import RunError, run
    from lfr_ray.schedule import PlanError

    # lfr-ray's own progress messages (resume, tokenizer training, skipped rows) at INFO.
    package_log = logging.getLogger("lfr_ray")
    if not package_log.handlers:  # main() may run more than once in a process (tests, notebooks)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lfr-ray] %(message)s"))
        package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False
    _init_ray(args.address, args.num_cpus)
    try:
        if args.command == "prepare":
            meta = prepare(cfg.data, config_yaml=cfg.to_yaml(), force=args.force)
            print(format_summary(meta))
        elif args.command == "score":
            from lfr_ray.scoring import ScoringError, score_checkpoint

            try:
                score_checkpoint(cfg)
            except ScoringError as e:
                raise RunError(str(e)) from e
        elif args.command == "compare":
            from lfr_ray.compare import compare

            compare(cfg)
        else:
            run(cfg)
    except (PrepareError, RunError, PlanError, ConfigError, BaselineError) as e:
        print(f"lfr-ray: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
