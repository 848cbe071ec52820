"""Compute accounting (SPEC section 6): FLOPs, seconds and tokens per stage, persisted in the run directory.

The FLOPs formulas are the usual dense-transformer estimates with N = parameters that do matmuls (see
``count_params``) and T = tokens processed:

- full training ``6 N T`` (forward 2, backward 4);
- LoRA training ``4 N T + 6 N_lora T``: frozen weights still need the forward (2) and the gradient with respect to
  their inputs (2), but not the weight gradient (2); the adapter itself is trained in full;
- evaluation ``2 N T``; generation ``2 N`` per generated token (prompt tokens are evaluation: use ``eval_flops``);
- a self-distillation teacher ``2 N`` per token it reads (``teacher_flops``: a forward without grad);
- fitting the laws and proposing (``law_fit_flops`` + ``proposer_flops``): an estimate counted from the fit's
  actual objective evaluations, plus a rough bound for the proposer's small convex program. Tiny next to any
  training stage, but recorded, with its seconds, so that no stage of the method is left out of the ledger.

The ledger file (``ledger.json``) keeps stages in the order they were first recorded::

    {"stages": [{"flops": 1.2e15, "seconds": 340.5, "stage": "prefix", "tokens": 100000000}, ...], "version": 1}

A stage served from the probe cache records zero cost and, under ``saved_flops``, what training it would have cost.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from opmix.errors import OpmixError
from opmix.run.atomic import write_json

_FORMAT_VERSION = 1


class ComputeLedger:
    """FLOPs, seconds and tokens per stage; every change is written to ``path`` atomically.

    On resume, use ``set`` with a step's total *before* marking the step done: a step that is redone after a
    crash then overwrites its entry instead of counting twice. ``add`` is for pieces of one stage recorded as
    they finish (e.g. one probe at a time, each before its own step marker).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def add(self, stage: str, flops: float, seconds: float = 0.0, tokens: int = 0) -> None:
        """Add to ``stage``'s running totals (creating it) and persist."""
        _check(stage, flops, seconds, tokens)
        entry = self._stages.setdefault(stage, {"flops": 0.0, "seconds": 0.0, "tokens": 0})
        entry["flops"] += float(flops)
        entry["seconds"] += float(seconds)
        entry["tokens"] += int(tokens)
        self._save()

    def set(self, stage: str, flops: float, seconds: float = 0.0, tokens: int = 0, saved_flops: float = 0.0,
            kinds: dict[str, float] | None = None) -> None:
        """Replace ``stage``'s totals (idempotent) and persist; its position in the order is kept. ``saved_flops``:
        the compute a cache hit spared (the stage's own ``flops`` are then what it really cost). ``kinds``: the
        stage's FLOPs by kind when it spent more than one (training, generation, teacher), kept only then."""
        _check(stage, flops, seconds, tokens)
        _check(stage, saved_flops, 0.0, 0)
        self._stages[stage] = {"flops": float(flops), "seconds": float(seconds), "tokens": int(tokens)}
        if saved_flops:
            self._stages[stage]["saved_flops"] = float(saved_flops)
        if kinds and len([v for v in kinds.values() if v]) > 1:
            self._stages[stage]["kinds"] = {k: float(v) for k, v in kinds.items()}
        self._save()

    def totals(self) -> dict[str, float]:
        """Stage -> FLOPs in recording order, then ``"total"``."""
        out = {stage: entry["flops"] for stage, entry in self._stages.items()}
        out["total"] = math.fsum(out.values())
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Stage -> {"flops", "seconds", "tokens"} in recording order, then ``"total"`` summing each field."""
        out = {stage: dict(entry) for stage, entry in self._stages.items()}
        out["total"] = {
            "flops": math.fsum(e["flops"] for e in self._stages.values()),
            "seconds": math.fsum(e["seconds"] for e in self._stages.values()),
            "tokens": sum(e["tokens"] for e in self._stages.values()),
        }
        saved = math.fsum(e.get("saved_flops", 0.0) for e in self._stages.values())
        if saved:
            out["total"]["saved_flops"] = saved
        return out

    def _save(self) -> None:
        stages = [{"stage": stage, **entry} for stage, entry in self._stages.items()]
        write_json(self.path, {"version": _FORMAT_VERSION, "stages": stages})

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            for row in data["stages"]:
                self._stages[str(row["stage"])] = {
                    "flops": float(row["flops"]),
                    "seconds": float(row["seconds"]),
                    "tokens": int(row["tokens"]),
                    **({"saved_flops": float(row["saved_flops"])} if row.get("saved_flops") else {}),
                    **({"kinds": {k: float(v) for k, v in row["kinds"].items()}} if row.get("kinds") else {}),
                }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OpmixError(
                f"compute ledger {self.path} is unreadable ({exc})",
                "restore it, delete it (earlier stages' compute will then be missing), or use another --out",
            ) from exc


def _check(stage: str, flops: float, seconds: float, tokens: int) -> None:
    if not isinstance(stage, str) or not stage or stage == "total":
        raise ValueError(f"stage must be a non-empty name other than 'total', got {stage!r}")
    for name, value in (("flops", flops), ("seconds", seconds), ("tokens", tokens)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} for stage {stage!r} must be finite and >= 0, got {value!r}")


def train_flops(n_params: int, tokens: int) -> float:
    """Full training: ``6 N T``."""
    return 6.0 * n_params * tokens


def lora_train_flops(n_params: int, n_lora_params: int, tokens: int) -> float:
    """LoRA training: ``4 N T + 6 N_lora T`` (N = frozen base parameters, N_lora = adapter parameters)."""
    return 4.0 * n_params * tokens + 6.0 * n_lora_params * tokens


def eval_flops(n_params: int, tokens: int) -> float:
    """Evaluation (forward only): ``2 N T``."""
    return 2.0 * n_params * tokens


def generation_flops(n_params: int, generated_tokens: int) -> float:
    """Generation: ``2 N`` per generated token (the KV cache makes each new token one forward of one position)."""
    return 2.0 * n_params * generated_tokens


def teacher_flops(n_params: int, tokens: int) -> float:
    """Teacher forward (SDFT's EMA teacher, no grad): ``2 N`` per token it reads (context + sampled tokens)."""
    return 2.0 * n_params * tokens


_LBFGS_FLOPS_PER_PARAM = 80  # two-loop recursion: 10 stored pairs x (dot + axpy, 2 ways) ~ 8 flops per entry each
_POINT_FLOPS = 20  # per proxy point: exp, clip, residual, Huber value and slope, products (on top of 4k for t . x)
_IPM_ITERATIONS = 30  # interior-point iterations of the proposer's solve (Clarabel usually needs 10-30)


def law_fit_flops(n_evaluations: int, n_points: int, n_coordinates: int) -> float:
    """Estimated FLOPs of fitting one law ``exp(c) + exp(t . x)`` over ``n_coordinates`` components.

    Counted from the fit's objective evaluations (``LogLinearLaw.n_evaluations_``: starts x line-search trials,
    searched and polished), each over ``n_points`` points: ``t . x`` and the gradient's ``psi . X`` (2k each),
    ``_POINT_FLOPS`` for the rest per point, plus the L-BFGS direction over the k + 1 parameters (counted once per
    evaluation: a slight overestimate when a line search takes several trials). An estimate, not a measurement.
    """
    per_evaluation = n_points * (4 * n_coordinates + _POINT_FLOPS) + _LBFGS_FLOPS_PER_PARAM * (n_coordinates + 1)
    return float(n_evaluations) * per_evaluation


def proposer_flops(n_laws: int, n_components: int, n_domains: int) -> float:
    """A rough upper estimate of the proposer's exponential-cone program: ``_IPM_ITERATIONS`` dense factorisations
    (s^3 / 3) of a KKT system of size s = 2 k + 3 (n + d) + 1 (the variables, an exponential cone of 3 per law and
    per KL term, the constraints). The solver's sparse factorisation does less."""
    size = 2 * n_components + 3 * (n_laws + n_domains) + 1
    return _IPM_ITERATIONS * size**3 / 3.0


def count_params(model: Any, exclude_input_embeddings: bool = True) -> int:
    """N for the FLOPs formulas: the model's distinct parameters, by default without embedding lookups.

    An embedding lookup (token or learned position embedding, any ``torch.nn.Embedding``) indexes rows and costs
    no matmul FLOPs, so it is left out. A weight that is also used by another module (an LM head tied to the
    input embedding) does a full matmul there and is counted, once. Shared parameters are counted once. Pass the
    base model: for a PEFT-wrapped model the adapter's parameters would be counted too (count those as N_lora).
    """
    import torch  # deferred: keeps `import opmix.run` free of torch

    def distinct(params) -> dict[int, torch.nn.Parameter]:
        return {id(p): p for p in params}

    everything = distinct(model.parameters())
    if not exclude_input_embeddings:
        return sum(p.numel() for p in everything.values())
    lookup: dict[int, torch.nn.Parameter] = {}
    matmul: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        own = distinct(module.parameters(recurse=False))
        (lookup if isinstance(module, torch.nn.Embedding) else matmul).update(own)
    return sum(p.numel() for key, p in everything.items() if key not in lookup or key in matmul)
