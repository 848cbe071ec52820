"""opmix: on-policy data mixing for language models.

Probes (LoRA adapters trained from the current model, one per data component) simulate candidate mixtures as
weighted sums of their weight deltas; per-domain mixing laws fitted on those simulations feed a KL-regularised
convex proposer; the full model trains on the proposed mixture. See docs/METHOD.md and the README.

Heavy modules (torch, transformers, cvxpy) are imported on first use of the names below.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "OpmixError": "opmix.errors",
    "LogLinearLaw": "opmix.law",
    "fit_laws": "opmix.law",
    "KLProposer": "opmix.propose",
    "ProxyModel": "opmix.probes.proxy",
    "make_probe": "opmix.probes.lora",
    "load_probe": "opmix.probes.lora",
    "MixtureSampler": "opmix.data.sampler",
    "Trainer": "opmix.train.loop",
    "WSDSchedule": "opmix.train.schedule",
    "RunDir": "opmix.run.rundir",
    "PretrainConfig": "opmix.config",
    "load_config": "opmix.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'opmix' has no attribute {name!r}")
