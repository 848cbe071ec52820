"""The stage-k search of continual midtraining (SPEC section 3): two probes, proxies on the segment between them.

    old probe on 0.9*p + 0.1*D_k, new probe on 0.1*p + 0.9*D_k;
    proxies theta_0 + (1-a)*Delta_old + a*Delta_new, a in {0, 1/8, ..., 1};
    regression coordinate: the effective new-data fraction r = 0.1 + 0.8a (old = 1 - r), not a;
    prior q: D_k = 0.5, each old domain d = 0.5 * p[d]; M expands [old, D_k] to the seen domains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from opmix.domains import OLD, expansion_matrix, mix


def probe_mixtures(p: Mapping[str, float], new: str, old_share: float = 0.9, new_share: float = 0.9) -> dict:
    """Data mixtures of the two probes: ``old`` on old_share*p + (1-old_share)*D_k, ``new`` the mirror image."""
    return {
        OLD: mix([(old_share, p), (1 - old_share, {new: 1.0})]),
        new: mix([(1 - new_share, p), (new_share, {new: 1.0})]),
    }


def segment_points(n: int = 9) -> np.ndarray:
    """Probe weights a of the proxies, evenly spaced on [0, 1] (n = 9: 0, 1/8, ..., 1)."""
    return np.linspace(0.0, 1.0, n)


def proxy_weights(a: np.ndarray) -> np.ndarray:
    """(P, 2) probe-delta weights [1-a, a] of the proxies theta_0 + (1-a) Delta_old + a Delta_new."""
    a = np.asarray(a, dtype=float)
    return np.stack([1 - a, a], axis=1)


def effective_new_fraction(a: np.ndarray, old_share: float = 0.9, new_share: float = 0.9) -> np.ndarray:
    """The new-data fraction a proxy stands for: r = (1-a)(1-old_share) + a*new_share (defaults: 0.1 + 0.8a)."""
    a = np.asarray(a, dtype=float)
    return (1 - a) * (1 - old_share) + a * new_share


def law_coordinates(r: np.ndarray) -> np.ndarray:
    """(P, 2) component weights [old, new] = [1-r, r] that the laws regress on."""
    r = np.asarray(r, dtype=float)
    return np.stack([1 - r, r], axis=1)


def continual_prior(p: Mapping[str, float], new: str, seen: Sequence[str], new_weight: float = 0.5) -> np.ndarray:
    """q over the seen domains: ``new_weight`` on D_k, each old domain d gets (1 - new_weight) * p[d]."""
    return np.array([new_weight if d == new else (1 - new_weight) * p.get(d, 0.0) for d in seen])


def stage_expansion(p: Mapping[str, float], new: str, seen: Sequence[str]) -> np.ndarray:
    """M (len(seen), 2): the old column holds p, the new column is D_k's indicator."""
    return expansion_matrix([OLD, new], list(seen), p)


def stage_mixture(new_fraction: float, p: Mapping[str, float], new: str, seen: Sequence[str]) -> dict[str, float]:
    """w = x_old * p + x_new * e_k over the seen domains, with x_new = new_fraction."""
    x = np.array([1 - new_fraction, new_fraction])
    w = stage_expansion(p, new, seen) @ x
    return {d: float(v) for d, v in zip(seen, w)}
