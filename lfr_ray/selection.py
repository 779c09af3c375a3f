"""Which blocks a focus phase trains on: pure, seeded functions of the per-block statistics.

Each strategy takes the per-block arrays of ``BlockStats`` (indexed by ``block_id``) and a
``keep_frac`` and returns the chosen block ids as a sorted int64 array of ``num_keep`` ids.
Same inputs and seed, same output. Nothing here reads files, imports Ray or torch, or keeps state.

Conventions shared by every strategy:

* a block never recorded (latest loss NaN) counts as the hardest there is: the model has never
  been scored on it, so a focus phase must not drop it unseen. ``select_hardest`` and
  ``select_diverse`` rank NaN as +inf; ``select_sample`` takes never-recorded blocks before
  sampling; ``select_forgotten_first`` puts them at the head of its second tier;
* equal keys are broken by block_id, lower id first, so no result depends on memory order.

Cost at 10 M blocks: a partition plus a few O(n) passes (``select_hardest``), or one stable sort
(``select_diverse``); see docs/statistics.md for measured times.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def num_keep(num_blocks: int, keep_frac: float) -> int:
    """Blocks a phase keeps: ``max(1, round(keep_frac * num_blocks))`` (Python ``round``: half to even)."""
    if int(num_blocks) != num_blocks or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
    if not 0 < keep_frac <= 1:
        raise ValueError(f"keep_frac must be a fraction in (0, 1], got {keep_frac!r}")
    return max(1, round(keep_frac * num_blocks))


def select_hardest(latest_loss: np.ndarray, keep_frac: float, *, seed: int = 0) -> np.ndarray:
    """The ``num_keep`` blocks with the highest latest loss; NaN (never recorded) ranks highest.

    ``seed`` is accepted so every strategy has the same call shape; ties go by block_id, so the
    result does not depend on it.
    """
    loss = _check_loss(latest_loss, "latest_loss")
    k = num_keep(loss.size, keep_frac)
    return _top_k(_nan_as_hardest(loss), k)


def select_sample(
    latest_loss: np.ndarray, keep_frac: float, *, temperature: float, seed: int
) -> np.ndarray:
    """Sample ``num_keep`` blocks without replacement, P(block) proportional to exp(z / temperature).

    ``z`` is the latest loss standardized over the recorded blocks (mean 0, std 1; all 0 when the
    std is 0). Gumbel-top-k: the k largest ``z / temperature + Gumbel(0, 1)`` keys are an exact
    sample of k items without replacement (successive sampling with those weights), drawn in one
    vectorized pass. ``temperature=inf`` is uniform; ``temperature=0`` is ``select_hardest``; as
    temperature shrinks the sample approaches it. Never-recorded blocks are taken first (a uniform
    sample of them if there are more than k).
    """
    loss = _check_loss(latest_loss, "latest_loss")
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = hardest, inf = uniform), got {temperature!r}")
    if temperature == 0:
        return select_hardest(loss, keep_frac, seed=seed)
    k = num_keep(loss.size, keep_frac)
    gumbel = np.random.default_rng(seed).gumbel(size=loss.size)
    never = np.isnan(loss)
    if np.isinf(temperature):
        key = gumbel
    else:
        recorded = loss[~never] if never.any() else loss
        mean = recorded.mean(dtype=np.float64) if recorded.size else 0.0
        std = recorded.std(dtype=np.float64) if recorded.size else 0.0
        z = (loss - mean) / std if std > 0 else np.zeros(loss.size)
        key = np.where(never, 0.0, z) / temperature + gumbel  # never-recorded: key unused, taken first
    return _tiered_top_k(never, key, k)


def select_diverse(
    latest_loss: np.ndarray, keep_frac: float, groups: np.ndarray, *, seed: int = 0
) -> tuple[np.ndarray, dict[Any, int]]:
    """The hardest blocks within each group (domain or cluster id), with quotas proportional to group size.

    Quotas use largest-remainder rounding, so they sum to ``num_keep``: each group first gets
    ``floor(k * size / n)``, then the leftover blocks go one each to the groups with the largest
    remainders (ties: larger group, then lower group label). A group thus gets its proportional
    share rounded up or down, never fewer: hardness elsewhere cannot starve it (a group whose share
    is below one block can still get 0). Within a group, blocks rank as in ``select_hardest``.
    ``seed`` is unused (deterministic). Returns the ids and ``{group label: quota}``.
    """
    loss = _check_loss(latest_loss, "latest_loss")
    groups = np.asarray(groups)
    if groups.shape != loss.shape:
        raise ValueError(f"groups must hold one label per block ({loss.size}), got shape {groups.shape}")
    k = num_keep(loss.size, keep_frac)
    labels, group_idx, sizes = _group_index(groups)
    quotas = _largest_remainder(sizes, k)

    # Block ids grouped, ascending within each group (a stable sort; radix for <= 65,536 groups),
    # then the hardest `quota` of each group's slice. One pass over the data plus a Python loop
    # over the groups (~20 us each): fine for domains or thousands of clusters.
    key = _nan_as_hardest(loss)
    by_group = np.argsort(group_idx, kind="stable")
    ends = np.cumsum(sizes)
    parts = []
    for g in np.flatnonzero(quotas):
        members = by_group[ends[g] - sizes[g] : ends[g]]
        parts.append(members[_top_k(key[members], int(quotas[g]))])
    chosen = np.sort(np.concatenate(parts))
    return chosen.astype(np.int64), {label: int(q) for label, q in zip(labels.tolist(), quotas)}


def select_forgotten_first(
    latest_loss: np.ndarray, previous_loss: np.ndarray, keep_frac: float, *, seed: int = 0
) -> np.ndarray:
    """Forgotten blocks (latest loss > previous) first, highest loss first; then the rest by loss.

    The rest ranks as in ``select_hardest`` (never-recorded first). ``seed`` is unused (deterministic).
    """
    latest = _check_loss(latest_loss, "latest_loss")
    previous = _check_loss(previous_loss, "previous_loss")
    if previous.shape != latest.shape:
        raise ValueError(f"previous_loss must match latest_loss ({latest.size} blocks), got shape {previous.shape}")
    k = num_keep(latest.size, keep_frac)
    forgotten = latest > previous  # False where either is NaN
    return _tiered_top_k(forgotten, _nan_as_hardest(latest), k)


def composition(ids: np.ndarray, domains: np.ndarray) -> dict[str, int]:
    """Blocks per domain in a selection, for the domains present in it, sorted by domain."""
    labels, counts = np.unique(np.asarray(domains)[np.asarray(ids, dtype=np.int64)], return_counts=True)
    return {str(label): int(c) for label, c in zip(labels.tolist(), counts)}


# ------------------------------------------------------------------------------------ helpers


def _check_loss(loss: np.ndarray, name: str) -> np.ndarray:
    loss = np.asarray(loss)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one value per block), got shape {loss.shape}")
    if not np.issubdtype(loss.dtype, np.floating):
        raise ValueError(f"{name} must be a float array (NaN = never recorded), got dtype {loss.dtype}")
    return loss


def _nan_as_hardest(loss: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(loss), np.inf, loss)


def _top_k(key: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the k largest keys (no NaN) among ``eligible``; equal keys: lower index first.

    One ``np.partition`` finds the k-th largest key t (O(n)); every key above t is in, and the
    lowest indices among keys equal to t fill the remaining places. Ineligible entries get -inf
    and are kept out of the ties, so no copy of the eligible subset is needed.
    """
    n = key.size
    if eligible is not None:
        key = np.where(eligible, key, -np.inf)
        num_eligible = int(np.count_nonzero(eligible))
    else:
        num_eligible = n
    if k >= num_eligible:
        return np.arange(n, dtype=np.int64) if eligible is None else np.flatnonzero(eligible).astype(np.int64)
    threshold = np.partition(key, n - k)[n - k]
    mask = key > threshold
    need = k - int(np.count_nonzero(mask))
    at_threshold = key == threshold
    if eligible is not None:
        at_threshold &= eligible
    mask[np.flatnonzero(at_threshold)[:need]] = True
    return np.flatnonzero(mask).astype(np.int64)


def _tiered_top_k(first: np.ndarray, key: np.ndarray, k: int) -> np.ndarray:
    """The top-k by ``key`` among blocks where ``first`` holds, then among the rest, until k are chosen."""
    num_first = int(np.count_nonzero(first))
    if num_first == 0:
        return _top_k(key, k)
    if num_first >= k:
        return _top_k(key, k, eligible=first)
    mask = first.copy()
    mask[_top_k(key, k - num_first, eligible=~first)] = True
    return np.flatnonzero(mask).astype(np.int64)


def _group_index(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct labels, each block's index into them (smallest unsigned dtype), group sizes.

    Integer labels in a narrow range use ``np.bincount`` (O(n)); anything else ``np.unique`` (a sort).
    """
    if np.issubdtype(groups.dtype, np.integer) and groups.size:
        low, high = int(groups.min()), int(groups.max())
        if high - low < 1 << 20:
            counts = np.bincount(groups - low)
            present = counts > 0
            position = np.cumsum(present) - 1
            labels = np.flatnonzero(present) + low
            group_idx = position[groups - low]
            sizes = counts[present]
            return labels.astype(groups.dtype), group_idx.astype(_index_dtype(labels.size)), sizes
    labels, group_idx, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    return labels, group_idx.astype(_index_dtype(labels.size)), sizes


def _index_dtype(num: int) -> type:
    # <= 16-bit keys make numpy's stable argsort a radix sort
    return np.uint8 if num <= 1 << 8 else np.uint16 if num <= 1 << 16 else np.int64


def _largest_remainder(sizes: np.ndarray, k: int) -> np.ndarray:
    """Integer quotas proportional to ``sizes`` summing to k (Hamilton's method, exact integer arithmetic)."""
    sizes = sizes.astype(np.int64)
    n = int(sizes.sum())
    quotas, remainders = np.divmod(k * sizes, n)
    leftover = k - int(quotas.sum())
    # rank: largest remainder, then larger group, then lower label (= lower position in `sizes`)
    order = np.lexsort((np.arange(sizes.size), -sizes, -remainders))
    quotas[order[:leftover]] += 1
    return quotas
