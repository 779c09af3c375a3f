"""k-means over per-block features, for ``diverse`` selection with ``group_by: cluster``: pure numpy, seeded.

The scoring pass can emit a small feature per block (``scoring.feature_dim`` floats: the mean final
hidden state, randomly projected). ``kmeans_fit`` fits centroids on a sample of blocks (k-means++
seeding, then Lloyd iterations); ``kmeans_assign`` gives any number of blocks their nearest centroid
in chunks. Memory: the sample (``m * d * 4`` bytes; 100 k x 16 = 6.4 MB) and one chunk's distances
(``chunk * k * 8``); assigning 306 M blocks is a stream of chunks and a 4-byte label per block.
Same inputs and seed, same centroids and labels. No Ray, no torch.
"""

from __future__ import annotations

import numpy as np

ASSIGN_CHUNK = 1 << 16
"""Blocks assigned per chunk: 65,536 x k float64 distances (4 MB at k = 8)."""


def kmeans_assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean; ties to the lower index) of each row of ``x``, int32."""
    x = np.asarray(x, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float64)
    c_sq = (c * c).sum(axis=1)
    labels = np.empty(len(x), dtype=np.int32)
    for start in range(0, len(x), ASSIGN_CHUNK):
        chunk = x[start : start + ASSIGN_CHUNK].astype(np.float64)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every centroid, so it is left out.
        labels[start : start + len(chunk)] = np.argmin(c_sq - 2.0 * chunk @ c.T, axis=1)
    return labels


def kmeans_fit(x: np.ndarray, k: int, *, seed: int, iters: int) -> np.ndarray:
    """``k`` centroids (float32 ``[k, d]``) of the rows of ``x``: k-means++ seeding, then up to ``iters`` Lloyd steps.

    A cluster that empties keeps its previous centroid. Stops early once no label changes.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"need a 2-D array of at least k={k} rows, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    xd = x.astype(np.float64)
    centroids = np.empty((k, x.shape[1]), dtype=np.float64)
    centroids[0] = xd[rng.integers(len(x))]
    nearest_sq = ((xd - centroids[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = nearest_sq.sum()
        # k-means++: the next centroid is a row drawn with probability proportional to its squared distance
        # to the nearest centroid so far (uniform if every row sits on a centroid).
        p = nearest_sq / total if total > 0 else None
        centroids[j] = xd[rng.choice(len(x), p=p)]
        nearest_sq = np.minimum(nearest_sq, ((xd - centroids[j]) ** 2).sum(axis=1))
    labels = None
    for _ in range(iters):
        new_labels = kmeans_assign(x, centroids)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=xd[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids.astype(np.float32)
