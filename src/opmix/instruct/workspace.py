"""The workspace of an instruction-tuning run: tasks in place of domains, the run's learner and the tasks' metric.

Every resumable step (``opmix.stages``) then trains and measures through them unchanged: a task is a domain whose
train and eval splits are example rows (``opmix.instruct.examples``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from opmix.config.instruct import InstructConfig
from opmix.data.tokenizer import load_tokenizer
from opmix.instruct.metric import TaskMetric
from opmix.instruct.tasks import load_tasks
from opmix.run.ledger import ComputeLedger
from opmix.run.rundir import RunDir
from opmix.train.learners import make_learner
from opmix.train.loop import make_accelerator
from opmix.workspace import Workspace, _probe_cache, model_factory

log = logging.getLogger(__name__)


@dataclass
class TaskDomain:
    """A task seen as a domain by the stages: its example rows and, for repetition, its train tokens."""

    train: np.ndarray  # (n, 3, T)
    eval: np.ndarray  # (n_eval, 3, T)
    train_tokens: int
    path = None  # no token-cache entry: the probe cache hashes the rows themselves


def pad_token_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def open_instruct_workspace(run: RunDir, cfg: InstructConfig) -> tuple[Workspace, dict]:
    """The workspace, and the tasks (name -> TaskData: rows, scorer, eval texts) it was built from."""
    tokenizer = load_tokenizer(cfg.tokenizer or str(cfg.model.path))
    accelerator = make_accelerator(cfg.train.precision)
    tasks = load_tasks(cfg.tasks, tokenizer, cfg.data.seq_len, cfg.data.eval_fraction, cfg.seed,
                       cfg.data.max_eval_examples)
    notes = [warning for task in tasks.values() for warning in task.warnings]
    for note in notes:
        log.warning("%s", note)
    new_model, n_params = model_factory(cfg.model, tokenizer, cfg.seed, cfg.data.seq_len, accelerator)
    pad_id = pad_token_id(tokenizer)
    sdft = cfg.sdft
    settings = {"sft": {}, "sdft": {
        "max_new_tokens": sdft.max_new_tokens, "generations": sdft.generations_per_prompt,
        "temperature": sdft.temperature, "ema_rate": sdft.ema_rate, "skip_tokens": sdft.skip_tokens,
    }}[cfg.learner]
    eos = {"eos_id": tokenizer.eos_token_id} if cfg.learner == "sdft" else {}

    def learner():
        return make_learner(cfg.learner, pad_id=pad_id, **settings, **eos)

    metric = TaskMetric(tasks, tokenizer, cfg.method.metric, cfg.train.eval_batch_size, n_params, pad_id)
    ws = Workspace(
        run=run, tokenizer=tokenizer,
        domains={name: TaskDomain(t.train, t.eval, int(t.train_tokens)) for name, t in tasks.items()},
        new_model=new_model, accelerator=accelerator, train=cfg.train, seed=cfg.seed,
        ledger=ComputeLedger(run.path("ledger.json")), n_params=n_params, notes=notes,
        probe_cache=_probe_cache(cfg.method.probe_cache, run), learner=learner, metric=metric,
        learner_settings={"learner": cfg.learner, **settings},
    )
    return ws, tasks
