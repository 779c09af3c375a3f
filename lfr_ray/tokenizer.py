"""The tokenizer of a prepared data directory: train a byte-level BPE, or adopt a local HF tokenizer.

Either way the result is saved with ``save_pretrained`` into ``<output_dir>/tokenizer`` so that
``AutoTokenizer.from_pretrained`` reloads it and the data directory is self-contained. Every document
is followed by the tokenizer's end-of-text (EOS) token when packed, so a tokenizer without one is
refused. No Ray here; training runs on the driver.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterable

EOT = "<|endoftext|>"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or used; the message names its path."""


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on ``texts``, as a ``PreTrainedTokenizerFast``.

    Byte-level means every string round-trips and nothing is ever unknown; the only special token is
    ``<|endoftext|>`` (id 0), used as EOS, BOS, UNK and padding. On a small corpus the vocabulary may
    end up smaller than ``vocab_size`` (BPE stops when no pair is left to merge).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)``, checked to be fast and to have an end-of-text token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot load a tokenizer from {path}: {e}") from e
    if not tok.is_fast:
        raise TokenizerError(f"tokenizer at {path} is not a fast (Rust) tokenizer; save one with tokenizer.json")
    if tok.eos_token_id is None:
        raise TokenizerError(f"tokenizer at {path} has no EOS/end-of-text token; documents could not be "
                             f"separated (set eos_token in its tokenizer_config.json)")
    return tok


def save_tokenizer(tok, out_dir: str | Path) -> None:
    """``save_pretrained`` into ``out_dir`` atomically (a temp directory renamed into place)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def tokenizer_hash(tok_dir: str | Path) -> str:
    """sha256 of ``tokenizer.json`` (vocabulary, merges, normalisation: what decides the ids)."""
    h = hashlib.sha256()
    with open(Path(tok_dir) / "tokenizer.json", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_docs(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without BOS/EOS or other special tokens added."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
