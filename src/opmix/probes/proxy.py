"""Proxies (SPEC §1, §2 step 2): ``theta(x) = theta_0 + sum_c x_c * Delta_c``, evaluated in memory.

``ProxyModel`` wraps a base model without copying it. While attached, each adapted layer's ``weight`` is a
``torch.nn.utils.parametrize`` parametrization (uncached) that returns ``W + sum_c x_c * scaling_c * B_c @ A_c`` at
every access, so ``model(input_ids=..., labels=...)`` evaluates the proxy. Why merge per forward rather than run k
extra LoRA paths on the activations: the merge costs ~in*out*k*r FLOPs per layer, independent of the batch, while
the LoRA paths cost tokens*(in+out)*k*r; for any real batch the merge is cheaper, and it is the exact sum of deltas
(not PEFT's ``add_weighted_adapter(combination_type="linear")``, which scales A and B separately).

Base weights are never modified or copied: the original ``Parameter`` objects are put back on detach, so the base
model's outputs are restored bit for bit. Only one merged weight per layer exists at a time, during its forward.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from opmix.errors import OpmixError
from opmix.probes.lora import ProbeDelta, is_fan_in_fan_out

logger = logging.getLogger(__name__)


class _WeightedDeltas(nn.Module):
    """Parametrization of one layer's weight: ``W + sum_c coef_c * B_c @ A_c`` with coef_c = x_c * scaling_c.

    The sum is accumulated in float32 (``addmm``), then cast once to W's dtype, so a bf16 base gets the same
    rounding as a checkpoint merged in float32 and stored in bf16.
    """

    def __init__(self, terms: list[tuple[int, torch.Tensor, torch.Tensor, float]], transposed: bool,
                 weights: list[float]):
        super().__init__()
        # Plain attributes, not buffers: the factors must stay out of the model's state_dict and .to().
        self.terms = terms  # (probe index, A (r, in) fp32, B (out, r) fp32, scaling)
        self.transposed = transposed  # Conv1D: W is (in, out), so add (B A)^T = A^T B^T
        self.weights = weights  # the ProxyModel's list, shared: set_weights is seen by the next forward

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        merged = None
        for index, lora_a, lora_b, scaling in self.terms:
            coef = self.weights[index] * scaling
            if coef == 0.0:
                continue
            left, right = (lora_a.T, lora_b.T) if self.transposed else (lora_b, lora_a)  # (rows, r), (r, cols)
            if merged is None:
                merged = torch.addmm(weight.float(), left, right, alpha=coef)  # new tensor; W itself is untouched
            else:
                merged.addmm_(left, right, alpha=coef)
        if merged is None:  # all weights zero: the base weight itself, exactly
            return weight
        return merged.to(weight.dtype)


class ProxyModel:
    """A base model plus k probes, evaluated as ``theta_0 + sum_c x_c * Delta_c`` for the weights ``x`` last set.

    Usage::

        proxy = ProxyModel(model, [load_probe(d) for d in probe_dirs])
        with proxy:                       # attach; detached (base restored exactly) on exit
            for x in candidates:
                proxy.set_weights(x)      # any reals, len(x) == len(probes)
                loss = model(input_ids=ids, labels=ids).loss

    ``model`` must be the *base* model (not a PeftModel): probe module names are matched against
    ``model.named_modules()``. Factors are moved to each layer's device as float32 once, at construction (no copy
    when they are already there). While attached, ``model.state_dict()`` shows parametrization keys: detach before
    saving the model. Weights start at zero (the base model).
    """

    def __init__(self, model: nn.Module, probes: list[ProbeDelta]):
        if not probes:
            raise OpmixError("ProxyModel needs at least one probe", "pass the loaded probes, e.g. [load_probe(dir)]")
        self.model = model
        self.probes = list(probes)
        self._weights = [0.0] * len(self.probes)  # x, one per component
        self._attached: dict[str, _WeightedDeltas] = {}
        self._parametrizations = self._build(model, self.probes)

    def _build(self, model: nn.Module, probes: list[ProbeDelta]) -> dict[str, _WeightedDeltas]:
        modules = dict(model.named_modules())
        terms: dict[str, list] = {}
        for index, probe in enumerate(probes):
            for name, (lora_a, lora_b, scaling) in probe.factors.items():
                module = modules.get(name)
                if module is None:
                    hint = (" (this looks like a model with PEFT layers injected: pass peft_model.unload())"
                            if any(".base_layer" in n for n in modules) else "")
                    raise OpmixError(f"probe {index} adapts module {name!r}, which the model does not have{hint}",
                                     "build the proxy on the base model the probes were trained from")
                weight = getattr(module, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                    raise OpmixError(f"probe {index}: module {name!r} ({type(module).__name__}) has no 2-D weight",
                                     "probes may only adapt nn.Linear or Conv1D layers")
                transposed = is_fan_in_fan_out(module)
                rows, cols = weight.shape
                out_features, in_features = (cols, rows) if transposed else (rows, cols)
                if lora_a.dim() != 2 or lora_a.shape[1] != in_features \
                        or tuple(lora_b.shape) != (out_features, lora_a.shape[0]):
                    raise OpmixError(
                        f"probe {index}: module {name!r} has factors A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)}"
                        f" but its weight {tuple(weight.shape)} needs A (r, {in_features}), B ({out_features}, r)",
                        "build the proxy on the base model the probes were trained from")
                as_float = dict(device=weight.device, dtype=torch.float32)
                terms.setdefault(name, []).append((index, lora_a.to(**as_float), lora_b.to(**as_float),
                                                   float(scaling)))
        return {name: _WeightedDeltas(t, is_fan_in_fan_out(modules[name]), self._weights) for name, t in terms.items()}

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(self._weights)

    @property
    def attached(self) -> bool:
        return bool(self._attached)

    def set_weights(self, x: Sequence[float]) -> None:
        """Set the component weights x (one per probe, any finite reals); used from the next forward on."""
        values = [float(v) for v in x]
        if len(values) != len(self.probes):
            raise OpmixError(f"got {len(values)} proxy weights for {len(self.probes)} probes",
                             "pass one weight per probe, in the order the probes were given")
        if not all(math.isfinite(v) for v in values):
            raise OpmixError(f"proxy weights must be finite, got {values}", "pass finite component weights")
        self._weights[:] = values  # in place: the parametrizations hold this very list

    def attach(self) -> ProxyModel:
        """Make ``self.model`` compute the proxy. Base parameters stay the same objects, unmodified."""
        if self._attached:
            raise RuntimeError("ProxyModel is already attached")
        modules = dict(self.model.named_modules())
        for name in self._parametrizations:
            if parametrize.is_parametrized(modules[name], "weight"):
                raise RuntimeError(f"{name}.weight is already parametrized (another ProxyModel attached?)")
        try:
            for name, parametrization in self._parametrizations.items():
                # unsafe=True skips the registration-time trial evaluation: shapes were checked in __init__.
                parametrize.register_parametrization(modules[name], "weight", parametrization, unsafe=True)
                self._attached[name] = parametrization
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Put the original weight ``Parameter`` objects back: the model is the base model again, bit for bit."""
        modules = dict(self.model.named_modules())
        for name in list(self._attached):
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
            del self._attached[name]

    def __enter__(self) -> ProxyModel:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def __call__(self, *args, **kwargs):
        """Forward through the proxy (attaches for the duration of the call when not attached)."""
        if self._attached:
            return self.model(*args, **kwargs)
        with self:
            return self.model(*args, **kwargs)


def proxy_points(n_components: int, n_proxies: int, seed: int = 0, concentration: float = 1.0) -> np.ndarray:
    """(n_proxies, n_components) mixtures to simulate: seeded Dirichlet(concentration) draws over the components
    (the pretraining recipe's proxies: Dirichlet(1))."""
    if n_components < 1 or n_proxies < 1:
        raise OpmixError(f"need >= 1 component and >= 1 proxy, got {n_components} and {n_proxies}",
                         "give at least one probe and one proxy")
    return np.random.default_rng(seed).dirichlet(np.full(n_components, float(concentration)), size=n_proxies)


def proxy_losses(model: nn.Module, probes: list[ProbeDelta], X, eval_sets, batch_size: int = 16) -> np.ndarray:
    """Eval losses (P, n_domains) of the proxies ``theta_0 + sum_c X[p, c] Delta_c`` on each eval set (columns in
    the order of ``eval_sets``), all in memory: ``model`` is the base model the probes were trained from (left
    exactly as it was), ``X`` has one row per proxy and one column per probe."""
    from opmix.eval import evaluate

    X = np.atleast_2d(np.asarray(X, dtype=float))
    if X.shape[1] != len(probes):
        raise OpmixError(f"X has {X.shape[1]} columns for {len(probes)} probes",
                         "give one column per probe, in the order of the probes")
    names = list(eval_sets)
    rows = []
    with ProxyModel(model, probes) as proxy:
        for x in X:
            proxy.set_weights(x.tolist())
            losses = evaluate(model, eval_sets, batch_size)
            rows.append([losses[name] for name in names])
    return np.array(rows)
