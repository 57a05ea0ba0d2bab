"""Independent float64 NumPy oracle for MVUE: inclusion probabilities and moments per entry."""

import types

import numpy as np
import pytest


def _group_probs(a, n, m, method):
    """Inclusion probability of every entry of one group ``a`` (m,), float64."""
    b = np.abs(a)
    s = b.sum()
    if method == "approx":
        # Enumerate the two-step draw: first index ∝ |a|, second ∝ |a| among the rest.
        p = np.zeros(m)
        if s == 0:
            return p
        for i in range(m):
            first = b[i] / s
            p[i] += first
            rest = sum(b[j] for j in range(m) if j != i)
            for k in range(m):
                if k != i and rest > 0:
                    p[k] += first * b[k] / rest
        return p
    if n == 1:
        return b / s if s > 0 else np.zeros(m)
    # exact 2:4
    if s == 0:
        return np.zeros(m)
    top = int(np.argmax(b))
    if 2 * b[top] >= s:
        rest = s - b[top]
        p = b / rest if rest > 0 else np.zeros(m)
        p[top] = 1.0
        return p
    return 2 * b / s


def inclusion(x, n, m, method, axis=0):
    """Per-entry inclusion probabilities, groups of ``m`` along ``axis``."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    groups = x.reshape(-1, m)
    p = np.stack([_group_probs(g, n, m, method) for g in groups]).reshape(x.shape)
    return np.moveaxis(p, -1, axis)


def moments(x, n, m, method, axis=0):
    """``(variance, fourth central moment)`` per entry of the MVUE output."""
    x = np.asarray(x, np.float64)
    p = inclusion(x, n, m, method, axis)
    safe = np.where(p > 0, p, 1.0)
    var = np.where(p > 0, x**2 * (1 / safe - 1), 0.0)
    mu4 = np.where(p > 0, x**4 * ((1 - p) ** 4 / safe**3 + (1 - p)), 0.0)
    return var, mu4


def marginal_std(x, n, m, method, axis=0):
    return np.sqrt(moments(x, n, m, method, axis)[0])


@pytest.fixture
def mvue_ref():
    return types.SimpleNamespace(inclusion=inclusion, moments=moments, marginal_std=marginal_std)
