"""Evaluate an exported model (``<run dir>/model``) with plain ``transformers`` code. No Ray.

* ``perplexity(model_dir, text_file)``: the model's token-level perplexity on any UTF-8 text file, so
  a user can check a run on their own held-out data. The text is tokenized whole (with the run's own
  tokenizer) and scored in sliding windows of the model's context length; every token but the first
  is predicted exactly once. Each window predicts ``stride`` new tokens and sees up to
  ``context - stride`` earlier ones as context (default ``stride = context - 1``: windows overlap by
  one token, the fastest; smaller strides give every prediction more context and a lower, fairer
  perplexity at about ``context / stride`` times the cost).
* ``run_lm_eval(model_dir, tasks)``: the EleutherAI harness on the model, if ``lm_eval`` is installed
  (it is not a dependency: ``pip install lm-eval``; its tasks may download data).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional


def perplexity(model_dir: str | Path, text_file: str | Path, *, stride: Optional[int] = None) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats) and perplexity of the model on the file's text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    context = int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions"))
    # Every target ids[1:] is predicted exactly once: chunk t0..t1-1 of ``stride`` new targets is predicted
    # by the window ids[b:t1] with b = t1 - context (as much earlier context as fits), so stride <= context - 1.
    stride = min(stride or context - 1, context - 1)
    ids = tok(Path(text_file).read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    if len(ids) < 2:
        raise ValueError(f"{text_file}: fewer than two tokens, nothing to predict")
    nll, count = 0.0, 0
    with torch.no_grad():
        for t0 in range(1, len(ids), stride):
            t1 = min(len(ids), t0 + stride)
            b = max(0, t1 - context)
            x = ids[b:t1].unsqueeze(0)
            logits = model(x).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")[t0 - b - 1 :]
            nll += float(losses.sum())
            count += len(losses)
    loss = nll / count
    return {"model": str(model_dir), "text": str(text_file), "num_tokens": int(len(ids)), "num_predicted": count,
            "context": context, "stride": stride, "loss": loss, "perplexity": math.exp(loss)}


def run_lm_eval(model_dir: str | Path, tasks: list[str], *, batch_size: int = 8) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with the Hugging Face backend; a clear error when it is not installed."""
    try:
        import lm_eval
    except ImportError as e:
        raise RuntimeError(
            "lm-eval (the EleutherAI evaluation harness) is not installed; it is optional: "
            "`pip install lm-eval`, then pass --lm-eval-tasks again (its tasks may download data)"
        ) from e
    result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir}", tasks=tasks,
                                     batch_size=batch_size)
    return result.get("results", result) if isinstance(result, dict) else result


def main_eval(model_dir: str, text_file: Optional[str], lm_eval_tasks: Optional[str], *,
              batch_size: int = 8, stride: Optional[int] = None) -> int:
    """``lfr-ray eval``: print perplexity and/or lm-eval results; returns the exit code."""
    import json

    if not (Path(model_dir) / "config.json").exists():
        print(f"lfr-ray: error: {model_dir} is not an exported model directory (no config.json); "
              "use <run dir>/model of a finished run", file=sys.stderr)
        return 1
    if not text_file and not lm_eval_tasks:
        print("lfr-ray: error: give --text FILE, --lm-eval-tasks TASKS, or both", file=sys.stderr)
        return 2
    if text_file:
        r = perplexity(model_dir, text_file, stride=stride)
        print(f"{r['text']}: {r['num_predicted']:,} tokens predicted, loss {r['loss']:.4f} nats/token, "
              f"perplexity {r['perplexity']:.2f} (context {r['context']}, stride {r['stride']})")
    if lm_eval_tasks:
        try:
            results = run_lm_eval(model_dir, [t for t in lm_eval_tasks.split(",") if t], batch_size=batch_size)
        except RuntimeError as e:
            print(f"lfr-ray: error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(results, indent=2, default=str))
    return 0
