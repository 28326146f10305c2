"""Cosine scores of Matryoshka embedding prefixes, the one normalisation shared by the
speaker indexes (:mod:`speechbrain_mrl.search.index`), their folder store
(:mod:`speechbrain_mrl.search.folder`) and the threshold calibration
(:mod:`speechbrain_mrl.search.thresholds`). Numpy only.

Example
-------
>>> a = np.array([[3.0, 4.0, 1.0]])
>>> _normalised(a[:, :2])
array([[0.6, 0.8]])
>>> _prefix_cosine(a, np.array([[3.0, 4.0, -9.0]]), 2)
array([1.])

Authors
-------
 * speechbrain-mrl developers
"""
import numpy as np

__all__ = []


def _normalised(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _prefix_cosine(a, b, d):
    return np.einsum("nd,nd->n", _normalised(a[:, :d]), _normalised(b[:, :d]))
