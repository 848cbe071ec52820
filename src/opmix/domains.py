"""Mixtures over domains, components, and the expansion between them (SPEC section 1).

A *mixture* is a dict ``domain -> weight`` on the simplex. A *component* is a coordinate of the search: the
collapsed old mixture (``OLD``) or one domain. Expansion maps component weights back to domain weights:
``w[d] = x_old * p[d] + x[d]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from opmix.errors import OpmixError

OLD = "old"  # name of the collapsed old-mixture component
EXISTING = "existing"  # an update's unchanged domains, collapsed at their previous relative weights (frozen)


def normalize(weights: Mapping[str, float], what: str = "weights") -> dict[str, float]:
    """Check that weights are finite and non-negative with a positive sum; return them summing to 1."""
    for name, value in weights.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OpmixError(f"{what}: weight of {name!r} is {value!r}", "give a finite number >= 0")
        if value < 0:
            raise OpmixError(f"{what}: weight of {name!r} is negative ({value})", "give weights >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise OpmixError(f"{what}: all weights are zero", "give at least one domain a positive weight")
    return {name: float(value) / total for name, value in weights.items()}


def uniform(domains: Sequence[str]) -> dict[str, float]:
    return {d: 1.0 / len(domains) for d in domains}


def expansion_matrix(
    components: Sequence[str], domains: Sequence[str], old_mixture: Mapping[str, float] | None
) -> np.ndarray:
    """M with shape (n_domains, n_components): the ``OLD`` (or ``EXISTING``) column holds p, every other column is
    an indicator."""
    matrix = np.zeros((len(domains), len(components)))
    index = {d: i for i, d in enumerate(domains)}
    for j, component in enumerate(components):
        if component in (OLD, EXISTING):
            if old_mixture is None:
                raise ValueError("an 'old' component needs the old mixture p")
            for domain, weight in old_mixture.items():
                matrix[index[domain], j] = weight
        else:
            matrix[index[component], j] = 1.0
    return matrix


def expand(
    component_weights: Mapping[str, float], domains: Sequence[str], old_mixture: Mapping[str, float] | None
) -> dict[str, float]:
    """Domain weights ``w = M x`` from component weights ``x``."""
    components = list(component_weights)
    x = np.array([component_weights[c] for c in components])
    w = expansion_matrix(components, domains, old_mixture) @ x
    return {d: float(v) for d, v in zip(domains, w)}


def mix(parts: Sequence[tuple[float, Mapping[str, float]]]) -> dict[str, float]:
    """The weighted sum of mixtures, e.g. ``mix([(0.9, {"code": 1}), (0.1, p)])`` for a domain probe's data."""
    out: dict[str, float] = {}
    for scale, mixture in parts:
        for domain, weight in mixture.items():
            out[domain] = out.get(domain, 0.0) + scale * weight
    return out


def component_prior(kind: str, components: Sequence[str], sizes: Mapping[str, float] | None = None) -> np.ndarray:
    """A prior over ``components`` (``OLD`` first, then domains), for the proposer with M = identity:

    - ``default``: ``old`` 0.5 and each domain 0.5/m (the published pretraining prior: half on what the model has
      been trained on, half spread over the domains, so it is centred on the current mixture);
    - ``uniform``: 1/(m+1) each;
    - ``natural``: proportional to ``sizes`` (train tokens per domain), ``old`` taking the mean size.
    """
    domains = [c for c in components if c != OLD]
    if list(components) != [OLD, *domains] or not domains:
        raise OpmixError(f"components must be {OLD!r} then at least one domain, got {list(components)}",
                         f"put {OLD!r} first")
    m = len(domains)
    if kind == "uniform":
        return np.full(m + 1, 1.0 / (m + 1))
    if kind == "natural":
        if sizes is None:
            raise OpmixError("the natural prior needs the domains' sizes", "pass sizes={domain: train tokens}")
        values = np.array([float(sizes[d]) for d in domains])
        values = np.concatenate([[values.mean()], values])
        return values / values.sum()
    if kind == "default":
        return np.array([0.5] + [0.5 / m] * m)
    raise OpmixError(f"unknown prior {kind!r}", "use 'default', 'uniform' or 'natural'")
