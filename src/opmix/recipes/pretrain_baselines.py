"""The pretraining baselines that search for a mixture themselves (SPEC section 4), under the run's budget S.

    swarm:    K proxy models trained from scratch, each for swarm.fraction of S on its own WSD schedule, on
              Dirichlet mixtures centred on the prior's domain mixture; one law per eval domain on their eval
              losses, the same KL proposer (components = the domains); final model from scratch for S steps.
              Steps swarm_<i>, swarm_propose, swarm_final: all of them the baseline's compute.
    mergemix: one full model per component (`old` on p, each domain on 0.9*D_i + 0.1*p), each continuing the
              prefix for the probe length; proxies theta(x) = sum_c x_c theta_c (exact weight averages) at
              OP-Mix's proxy points; the same laws, prior and proposer; final training continues the prefix.
              Steps mergemix_<component>, mergemix_proxies, mergemix_propose, mergemix_final (plus the prefix).

Caps (``opmix.repetition``): the swarm's final model trains from scratch for the whole budget, so its proposer's
caps are ``k N_d / R_full``; MergeMix's final training continues the prefix, so its caps are OP-Mix's,
``(k N_d - U_d) / R_final`` on the expanded weights. Each final mixture is checked against k before it is trained.

Each returns ``{"mixture", "steps", "result_step", "search_steps"}`` for ``opmix.report.run_summary``: the FLOPs
of ``steps`` are the baseline's, those in ``search_steps`` reported as its search, the rest as final training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from opmix.config.pretrain import PretrainConfig
from opmix.domains import expand, expansion_matrix
from opmix.repetition import Repetition, tokens_per_step
from opmix.search import propose_mixture
from opmix.stages import evaluate_mixtures, load_weights, train_full
from opmix.train.schedule import WSDSchedule


def swarm_mixtures(prior: Mapping[str, float], k: int, concentration: float, seed: int) -> np.ndarray:
    """K Dirichlet samples (k, m) centred on ``prior``: Dirichlet(m * concentration * prior), whose mean is the
    prior (concentration 1 with a uniform prior is Dirichlet(1), the uniform law on the simplex)."""
    weights = np.array(list(prior.values()), dtype=float)
    alpha = len(weights) * concentration * np.maximum(weights / weights.sum(), 1e-6)  # Dirichlet needs alpha > 0
    return np.random.default_rng(seed).dirichlet(alpha, size=k)


def swarm_baseline(ws, cfg: PretrainConfig, safe: Mapping[str, float], schedule: WSDSchedule,
                   repetition: Repetition | None = None) -> dict:
    """The swarm baseline (Olmix / RegMix style); ``safe`` is the prior's domain mixture."""
    domains, S, method = ws.domain_names, cfg.train.steps, cfg.method
    prior = {d: safe[d] for d in domains}
    X = swarm_mixtures(prior, cfg.swarm_k, cfg.swarm.concentration, cfg.seed)  # (K, m)
    short = WSDSchedule.from_fractions(cfg.swarm_steps, cfg.train.warmup_fraction, cfg.train.decay_fraction,
                                       cfg.train.final_lr_ratio)  # each proxy model ends decayed
    steps = [f"swarm_{i}" for i in range(len(X))]
    for i, (step, x) in enumerate(zip(steps, X)):
        train_full(ws, step, dict(zip(domains, x.tolist())), short, end_step=cfg.swarm_steps, start_from=None,
                   sampler_offset=100 + i)
    Y = np.array([[ws.run.step_info(step)["eval_loss"][d] for d in domains] for step in steps])  # (K, m)
    full_tokens = S * tokens_per_step(ws, cfg.data.seq_len)  # the final model trains from scratch on all of S
    caps = None if repetition is None else repetition.caps(domains, {}, full_tokens)  # k N_d / R_full
    proposal = propose_mixture(
        ws.run, "swarm_propose", X, Y, domains, domains, own_components=list(range(len(domains))),
        prior=np.array(list(prior.values())), expansion=np.eye(len(domains)), kl_weight=method.proposer.kl_weight,
        caps=caps, law_settings=method.law.model_dump(), solver=method.proposer.solver, seed=cfg.seed,
        ledger=ws.ledger,
    )
    mixture = dict(proposal.components)
    if repetition is not None:
        repetition.check("the swarm baseline's final mixture", {}, mixture, full_tokens)
    train_full(ws, "swarm_final", mixture, schedule, end_step=S, start_from=None)
    search = [*steps, "swarm_propose"]
    return {"mixture": mixture, "steps": [*search, "swarm_final"], "result_step": "swarm_final",
            "search_steps": search}


def mergemix_baseline(ws, cfg: PretrainConfig, prefix: Path, probe_data: Mapping[str, Mapping[str, float]],
                      X: np.ndarray, components: Sequence[str], q: np.ndarray, M: np.ndarray,
                      p: Mapping[str, float], schedule: WSDSchedule, repetition: Repetition | None = None,
                      used: Mapping[str, float] | None = None) -> dict:
    """The MergeMix baseline: full models per component, weight-averaged into proxies at OP-Mix's points X;
    ``used``: the tokens of each domain the prefix consumed (its final training continues the prefix)."""
    domains, method = ws.domain_names, cfg.method
    final_tokens = (cfg.train.steps - cfg.prefix_steps) * tokens_per_step(ws, cfg.data.seq_len)
    caps = None if repetition is None else repetition.caps(domains, used or {}, final_tokens)
    models = [f"mergemix_{c}" for c in components]
    # The run's schedule from the prefix step, continuing the prefix's optimizer and sampler: as the final training.
    checkpoints = [train_full(ws, step, probe_data[c], schedule, end_step=cfg.prefix_steps + cfg.probe_steps,
                              start_from=prefix) for step, c in zip(models, components)]
    Y = _evaluate_averages(ws, "mergemix_proxies", checkpoints, components, X, ws.run.path("mergemix", "proxies.csv"))
    proposal = propose_mixture(
        ws.run, "mergemix_propose", X, Y, components, domains,
        own_components=[list(components).index(d) for d in domains], prior=q, expansion=M,
        kl_weight=method.proposer.kl_weight, caps=caps, law_settings=method.law.model_dump(),
        solver=method.proposer.solver, seed=cfg.seed, ledger=ws.ledger,
        to_domains=lambda components: expand(components, domains, p),
        caps_expansion=expansion_matrix(components, domains, p),
    )
    mixture = expand(proposal.components, domains, p)
    if repetition is not None:
        repetition.check("the MergeMix baseline's final mixture", used or {}, mixture, final_tokens)
    train_full(ws, "mergemix_final", mixture, schedule, end_step=cfg.train.steps, start_from=prefix)
    search = [*models, "mergemix_proxies", "mergemix_propose"]
    return {"mixture": mixture, "steps": ["prefix", *search, "mergemix_final"], "result_step": "mergemix_final",
            "search_steps": search}


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict:
    """``sum_c weights[c] * state_dicts[c]``, in float32, key by key; non-float entries come from the first."""
    averaged = {}
    for key, first in state_dicts[0].items():
        if not torch.is_floating_point(first):
            averaged[key] = first.clone()
            continue
        total = torch.zeros_like(first, dtype=torch.float32)
        for weight, state in zip(weights, state_dicts):
            total.add_(state[key].to(torch.float32), alpha=float(weight))
        averaged[key] = total
    return averaged


def _evaluate_averages(ws, step: str, checkpoints: Sequence[Path], components: Sequence[str], X: np.ndarray,
                       table: Path) -> np.ndarray:
    """Eval losses (P, m) of the weight averages ``sum_c X[p, c] theta_c``; rows are appended to ``table`` as they
    finish, so an interrupted evaluation resumes at the next proxy."""

    @contextmanager
    def averages():
        states = [{k: v.detach().to("cpu", torch.float32) for k, v in load_weights(ws, c).state_dict().items()}
                  for c in checkpoints]
        model = ws.new_model()

        def at(x: np.ndarray):
            model.load_state_dict(average_state_dicts(states, x.tolist()))
            return model
        yield at

    return evaluate_mixtures(ws, step, table, X, components, None, averages)

