"""Packing documents into fixed-length blocks: pure numpy, no Ray.

Documents, each followed by the end-of-text token, are joined into one stream and cut into
non-overlapping blocks of ``block_len + 1`` token ids; each block records its majority domain and
the document it starts in. ``in_val`` decides a document's split from a stable hash of its id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np




@dataclass
class Blocks:
    input_ids: np.ndarray
    """int32 [num_blocks, block_len + 1]."""
    source_idx: np.ndarray
    """Index into ``Packer.domains`` of each block's majority domain."""
    doc_ids: list[str]
    """Id of the document each block starts in."""
    domain_tokens: np.ndarray
    """Tokens per domain index in these blocks."""


class Packer:
    """Joins documents (each followed by EOT) into one stream and cuts blocks of ``block_len + 1`` ids.

    Blocks do not overlap (stride ``block_len + 1``): a block's ids are a model's inputs ``[:-1]`` and
    targets ``[1:]``, and every token lands in exactly one block, except the final partial block of the
    stream, which ``tail_tokens`` counts once all documents are in.
    """

    def __init__(self, block_len: int, eot_id: int):
        self.width = block_len + 1
        self.eot_id = eot_id
        self.domains: list[str] = []  # domain index -> name, in order of first appearance
        self._domain_idx: dict[str, int] = {}
        # The not-yet-packed remainder (< width tokens) and the documents it holds.
        self._tokens = np.zeros(0, np.int32)
        self._doc_starts = np.zeros(0, np.int64)
        self._doc_domains = np.zeros(0, np.int32)
        self._doc_ids: list[str] = []

    @property
    def tail_tokens(self) -> int:
        return len(self._tokens)

    def _domain(self, name: str) -> int:
        if name not in self._domain_idx:
            self._domain_idx[name] = len(self.domains)
            self.domains.append(name)
        return self._domain_idx[name]

    def add(self, docs_tokens: Sequence[Sequence[int]], domains: Sequence[str], doc_ids: Sequence[str]) -> Blocks:
        """Append documents; return the blocks that are now complete."""
        width, eot = self.width, np.array([self.eot_id], np.int32)
        parts = [self._tokens]
        for ids in docs_tokens:
            parts += [np.asarray(ids, np.int32), eot]
        tokens = np.concatenate(parts)
        lens = np.array([len(ids) + 1 for ids in docs_tokens], np.int64)
        starts = np.concatenate([self._doc_starts, len(self._tokens) + np.cumsum(lens) - lens])
        doc_domains = np.concatenate([self._doc_domains, [self._domain(d) for d in domains]]).astype(np.int32)
        doc_ids = self._doc_ids + list(doc_ids)

        n = len(tokens) // width
        cut = n * width
        token_domains = np.repeat(doc_domains, np.diff(np.append(starts, len(tokens))))[:cut]
        first_doc = np.searchsorted(starts, np.arange(0, cut, width), side="right") - 1
        blocks = Blocks(
            input_ids=tokens[:cut].reshape(n, width),
            source_idx=_majority(token_domains.reshape(n, width), len(self.domains)),
            doc_ids=[doc_ids[i] for i in first_doc],
            domain_tokens=np.bincount(token_domains, minlength=len(self.domains)),
        )
        # Keep the remainder; its first document may have started in an emitted block.
        j = int(np.searchsorted(starts, cut, side="right")) - 1 if cut < len(tokens) else len(starts)
        self._tokens = tokens[cut:].copy()
        self._doc_starts = np.maximum(starts[j:] - cut, 0)
        self._doc_domains = doc_domains[j:]
        self._doc_ids = doc_ids[j:]
        return blocks


def _majority(token_domains: np.ndarray, num_domains: int) -> np.ndarray:
    """Per block (row), the domain holding most tokens; a tie goes to the domain that appears first."""
    n, width = token_domains.shape
    if n == 0:
        return np.zeros(0, np.int64)
    d = token_domains.ravel().astype(np.int64)
    block = np.repeat(np.arange(n, dtype=np.int64), width)
    keys = block * num_domains + d
    counts = np.bincount(keys, minlength=n * num_domains).reshape(n, num_domains)
    # First position of each domain in each block: documents are contiguous, so look at run starts only.
    run_start = np.ones(n * width, bool)
    run_start[1:] = d[1:] != d[:-1]
    run_start[::width] = True
    runs = np.flatnonzero(run_start)
    uniq, first = np.unique(keys[runs], return_index=True)
    first_pos = np.full(n * num_domains, width, np.int64)
    first_pos[uniq] = runs[first] % width
    score = counts * (width + 1) + (width - first_pos.reshape(n, num_domains))
    return score.argmax(axis=1)


def in_val(doc_id: str, val_frac: float) -> bool:
    """A stable hash of the document id decides its split: the same document is always on the same side."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")
    return h < val_frac * 2**64
