"""opmix: on-policy data mixing for language models.

Probes (LoRA adapters trained from the current model, one per data component) simulate candidate mixtures as
weighted sums of their weight deltas; per-domain mixing laws fitted on those simulations feed a KL-regularised
convex proposer; the full model trains on the proposed mixture. See docs/METHOD.md and the README.

The steps of the method as plain functions, a mixture dataset and a Trainer callback: docs/library.md. Heavy
modules (torch, transformers, cvxpy) are imported on first use of the names below.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    # the steps of the method as plain functions (docs/library.md)
    "load_domains": "opmix.data.cache",  # files -> tokenized, cached domains with eval splits
    "TokenizedDomain": "opmix.data.cache",
    "load_tokenizer": "opmix.data.tokenizer",
    "builtin_model": "opmix.model",
    "load_model": "opmix.model",
    "train_probe": "opmix.probes.training",  # a LoRA probe from a model (object or directory) on a mixture
    "make_probe": "opmix.probes.lora",
    "save_probe": "opmix.probes.lora",
    "load_probe": "opmix.probes.lora",
    "ProbeDelta": "opmix.probes.lora",
    "proxy_points": "opmix.probes.proxy",  # Dirichlet mixtures to simulate
    "proxy_losses": "opmix.probes.proxy",  # theta_0 + sum x_c Delta_c, evaluated per domain, in memory
    "ProxyModel": "opmix.probes.proxy",
    "evaluate": "opmix.eval",
    "fit_laws": "opmix.law",
    "LogLinearLaw": "opmix.law",
    "fit_and_propose": "opmix.search",  # laws + proposal in one call
    "KLProposer": "opmix.propose",
    "repetition_caps": "opmix.propose",
    "component_prior": "opmix.domains",
    "expand": "opmix.domains",
    "expansion_matrix": "opmix.domains",
    "mix": "opmix.domains",
    "OLD": "opmix.domains",
    # training with a mixture: a DataLoader dataset, and re-mixing inside a Hugging Face Trainer run
    "MixtureDataset": "opmix.data.mixture_dataset",
    "OPMixCallback": "opmix.callback",
    # building blocks of the CLI recipes
    "OpmixError": "opmix.errors",
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
