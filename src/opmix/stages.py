"""The resumable steps recipes are made of: full training, probe training, proxy evaluation.

Each step records its artifacts with the run directory when it finishes (``RunDir.mark_done``) and is skipped on
a later invocation when they verify; a training step interrupted midway resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opmix.data.sampler import MixtureSampler
from opmix.eval import mean_loss
from opmix.probes.cache import probe_key, tokens_hash, train_settings
from opmix.progress import Progress, format_seconds
from opmix.run import processes
from opmix.run.atomic import atomic_dir, write_csv
from opmix.run.faults import fault_point
from opmix.run.ledger import (
    generation_flops,
    lora_train_flops,
    teacher_flops,
    train_flops,
)
from opmix.train.checkpoint import load_trainer_checkpoint, resumable
from opmix.train.loop import LocalAccelerator, Trainer
from opmix.train.schedule import WSDSchedule
from opmix.workspace import Workspace

log = logging.getLogger(__name__)


def load_weights(ws: Workspace, checkpoint: Path):
    """The starting model with a full-training checkpoint's weights."""
    model = ws.new_model()
    load_trainer_checkpoint(checkpoint, model)
    return model


def train_full(
    ws: Workspace,
    step: str,
    mixture: Mapping[str, float],
    schedule: WSDSchedule,
    end_step: int,
    start_from: Path | None = None,
    sampler_offset: int = 0,
) -> Path:
    """Full training on ``mixture`` up to global ``end_step``; from the start model, or continuing a checkpoint
    (its weights, optimizer, sampler and step: one run, one schedule). Returns the step's checkpoint."""
    checkpoint = ws.run.path(step, "checkpoint")
    if ws.run.is_done(step):
        return checkpoint
    model = ws.new_model()
    sampler = MixtureSampler(ws.train_sets(), dict(mixture), ws.train.batch_size // ws.train.grad_accum,
                             seed=ws.sampler_seed(sampler_offset), rank=ws.accelerator.process_index,
                             world_size=ws.accelerator.num_processes)
    trainer = _trainer(ws, model, sampler, schedule, ws.train.lr, step, ws.sampler_seed(sampler_offset))
    resumed = resumable(checkpoint)  # a damaged periodic checkpoint is ignored: the step restarts
    if resumed:
        trainer.load(checkpoint)
    elif start_from is not None:
        trainer.load(start_from)
        trainer.tokens_trained, trainer.seconds = 0, 0.0  # count this step's own work only
        sampler.set_weights(dict(mixture))
    log.info("%s: steps %d..%d on %s", step, trainer.step, end_step, _fmt(mixture))
    trainer.train_until(end_step, checkpoint, ws.train.checkpoint_every)
    trainer.save(checkpoint)
    tokens = trainer.tokens_trained
    measured = ws.measure(trainer.unwrapped_model(), final=True)
    losses = measured.values
    flops = train_flops(ws.n_params, tokens)
    ws.ledger.set(step, flops + learner_flops(ws, trainer), trainer.seconds, tokens,
                  kinds={"train": flops, **learner_kinds(ws, trainer)})
    log.info("%s: done in %s, mean eval loss %.4f", step, format_seconds(trainer.seconds), mean_loss(losses))
    consumed, epochs = dict(sampler.tokens_consumed), sampler.epochs()  # of the global batches: every process's
    ws.run.mark_done(step, [checkpoint], info={
        "eval_loss": losses, **({"measures": measured.extra} if measured.extra else {}),
        "mixture": dict(mixture), "tokens": tokens, "end_step": end_step,
        "tokens_consumed": consumed, "epochs": epochs, "tokens_consumed_total": consumed, "epochs_total": epochs,
    })
    return checkpoint


def learner_kinds(ws: Workspace, trainer: Trainer) -> dict[str, float]:
    """Compute a learner spends besides training (SPEC section 6): self-distillation's generation (2 N per
    generated token) and its teacher's forward passes (2 N per token), each counted on its own."""
    learner, processes_n = trainer.learner, trainer.accelerator.num_processes  # it counts its own process's work
    kinds = {}
    if getattr(learner, "generated_tokens", 0):
        kinds["generation"] = generation_flops(ws.n_params, learner.generated_tokens * processes_n)
    if getattr(learner, "teacher_tokens", 0):
        kinds["teacher"] = teacher_flops(ws.n_params, learner.teacher_tokens * processes_n)
    return kinds


def learner_flops(ws: Workspace, trainer: Trainer) -> float:
    return sum(learner_kinds(ws, trainer).values())


@dataclass(frozen=True)
class ProbeJob:
    """One LoRA probe to train from the ``base`` checkpoint on ``mixture``: flat rate, no warmup, short decay."""

    step: str
    base: Path
    mixture: Mapping[str, float]
    steps: int
    lr: float
    decay_fraction: float
    lora: Mapping[str, float]
    sampler_offset: int


def train_probe(ws: Workspace, step: str, base: Path, mixture: Mapping[str, float], steps: int, lr: float,
                decay_fraction: float, lora: Mapping[str, float], sampler_offset: int) -> Path:
    """A LoRA probe trained from the ``base`` checkpoint on ``mixture`` (data-parallel over the run's processes)."""
    return train_probes(ws, [ProbeJob(step, base, mixture, steps, lr, decay_fraction, lora, sampler_offset)])[0]


def train_probes(ws: Workspace, jobs: Sequence[ProbeJob]) -> list[Path]:
    """The adapters of ``jobs``, trained (or found done, or in the probe cache). Probes are independent: with N
    processes, N of them at a time train concurrently, each on one process alone with the same global batch
    (its accumulation N times longer); the N-th part left over trains data-parallel over all processes. With one
    process they train one after another. The result is the same either way up to floating-point order (and
    LoRA dropout, drawn per process)."""
    adapters = [ws.run.path(job.step, "adapter") for job in jobs]
    todo = []
    for job, adapter in zip(jobs, adapters):
        if ws.run.is_done(job.step):
            continue
        cached = _cached_probe(ws, job.step, job.base, job.mixture, adapter, _probe_settings(ws, job))
        if cached is not None:
            todo.append((job, cached))
    processes_n = ws.accelerator.num_processes
    concurrent = len(todo) - len(todo) % processes_n if processes_n > 1 else 0
    for start in range(0, concurrent, processes_n):  # one round: probe start + r on rank r
        job, cached = todo[start + ws.accelerator.process_index]
        with processes.own_writes():  # its checkpoints and adapter: files no other process writes
            trained = _train_probe_here(ws, job, LocalAccelerator(ws.accelerator), processes_n)
        for (other, other_cached), result in zip(todo[start:start + processes_n], processes.gather(trained)):
            _record_probe(ws, other, other_cached, result)
    for job, cached in todo[concurrent:]:
        _record_probe(ws, job, cached, _train_probe_here(ws, job, ws.training_accelerator(), 1))
    return adapters


def _probe_settings(ws: Workspace, job: ProbeJob) -> dict:
    """What makes a probe, for the probe cache's key (the global batch is batch_size x world_size)."""
    return {
        "steps": job.steps, "lr": job.lr, "decay_fraction": job.decay_fraction, "lora": dict(job.lora),
        "sampler_seed": ws.sampler_seed(job.sampler_offset), "world_size": ws.accelerator.num_processes,
        "n_params": ws.n_params, "seq_len": int(next(iter(ws.train_sets().values())).shape[1]),
        "train": train_settings(ws.train), **({"learner": ws.learner_settings} if ws.learner_settings else {}),
    }


def _train_probe_here(ws: Workspace, job: ProbeJob, accelerator, accumulate: int) -> dict:
    """Train ``job``'s probe on ``accelerator`` (the run's, or one process alone drawing ``accumulate`` times the
    micro-batches of each step) and write its adapter; returns its figures for the ledger."""
    from opmix.probes.lora import lora_parameter_count, save_probe
    from opmix.probes.training import probe_trainer

    t = ws.train
    trainer = probe_trainer(load_weights(ws, job.base), ws.train_sets(), job.mixture, job.steps, job.lr,
                            t.batch_size * accumulate, accelerator, lora=job.lora, decay_fraction=job.decay_fraction,
                            final_lr_ratio=t.final_lr_ratio, weight_decay=t.weight_decay, betas=t.betas,
                            grad_clip=t.grad_clip, grad_accum=t.grad_accum * accumulate,
                            seed=ws.sampler_seed(job.sampler_offset), stage=job.step, learner=ws.new_learner())
    checkpoint = ws.run.path(job.step, "checkpoint")
    log.info("%s: LoRA probe, %d steps on %s%s", job.step, job.steps, _fmt(job.mixture),
             f" (on process {ws.accelerator.process_index})" if isinstance(accelerator, LocalAccelerator) else "")
    if resumable(checkpoint):
        trainer.load(checkpoint)
    trainer.train_until(job.steps, checkpoint, ws.train.checkpoint_every)
    weights = trainer.trainable_state() if trainer.sharded else None  # every process gathers the shards
    if accelerator.is_main_process:  # one writer: data-parallel ranks hold the same adapter
        save_probe(trainer.unwrapped_model(), ws.run.path(job.step, "adapter"), state_dict=weights)
    accelerator.wait_for_everyone()
    tokens = trainer.tokens_trained
    flops = lora_train_flops(ws.n_params, lora_parameter_count(trainer.unwrapped_model()), tokens)
    return {"kinds": {"train": flops, **learner_kinds(ws, trainer)}, "seconds": trainer.seconds, "tokens": tokens}


def _record_probe(ws: Workspace, job: ProbeJob, cached: tuple, result: dict) -> None:
    """The trained probe into the ledger, the probe cache and the run's markers (rank 0 writes)."""
    adapter, total = ws.run.path(job.step, "adapter"), sum(result["kinds"].values())
    cache, key, source = cached
    if cache is not None and processes.is_main():
        cache.store(key, source, adapter, {"flops": total, "seconds": result["seconds"], "tokens": result["tokens"]})
    ws.ledger.set(job.step, total, result["seconds"], result["tokens"], kinds=result["kinds"])
    ws.run.mark_done(job.step, [adapter], info={"mixture": dict(job.mixture), "tokens": result["tokens"]})


def _cached_probe(ws: Workspace, step: str, base: Path, mixture: Mapping[str, float], adapter: Path,
                  settings: dict) -> tuple | None:
    """Serve the probe from the cache when it holds it (then None: the step is done), else (cache, key, source)
    for storing the probe once trained (cache None when the run has no cache)."""
    if ws.probe_cache is None:
        return None, None, None
    data = {name: tokens_hash(ws.domains[name].train, ws.domains[name].path) for name, w in mixture.items() if w > 0}
    key, source = probe_key(base, mixture, data, settings)
    hit = processes.from_main(lambda: ws.probe_cache.lookup(key))  # one answer for every process
    if hit is None:
        return ws.probe_cache, key, source
    cached_adapter, entry = hit
    if ws.accelerator.is_main_process:
        with atomic_dir(adapter) as tmp:
            shutil.copytree(cached_adapter, tmp, dirs_exist_ok=True)
    ws.accelerator.wait_for_everyone()
    saved = float(entry.get("cost", {}).get("flops", 0.0))
    log.info("%s: probe cache hit (%s), %.3g training FLOPs saved", step, cached_adapter.parent, saved)
    ws.ledger.set(step, 0.0, 0.0, 0, saved_flops=saved)
    ws.run.mark_done(step, [adapter], info={"mixture": dict(mixture), "tokens": 0, "cache": key,
                                            "saved_flops": saved})
    return None


def evaluate_proxies(
    ws: Workspace, step: str, base: Path, adapters: Sequence[Path], components: Sequence[str], X: np.ndarray,
    table: Path | None = None, eval_domains: Sequence[str] | None = None,
) -> np.ndarray:
    """Eval losses (P, n_domains) of the proxies ``theta_0 + sum_c X[p, c] Delta_c``, one row per proxy, on
    ``eval_domains`` (default: every domain; the continual recipe evaluates only the domains seen so far).

    Rows are appended to ``table`` (default ``proxies.csv``; a run with several searches gives each its own) as they
    finish, so an interrupted evaluation resumes at the next proxy."""

    @contextmanager
    def proxies():
        from opmix.probes.lora import load_probe
        from opmix.probes.proxy import ProxyModel

        model = load_weights(ws, base)
        proxy = ProxyModel(model, [load_probe(a, device=ws.accelerator.device) for a in adapters])
        with proxy:
            def at(x: np.ndarray):
                proxy.set_weights(x.tolist())
                return model
            yield at

    table = table if table is not None else ws.run.path("proxies.csv")
    return evaluate_mixtures(ws, step, table, X, components, eval_domains, proxies)


def evaluate_mixtures(
    ws: Workspace, step: str, table: Path, X: np.ndarray, components: Sequence[str],
    eval_domains: Sequence[str] | None, models: Callable[[], AbstractContextManager],
) -> np.ndarray:
    """Eval losses (P, n_domains) of one model per row of ``X``: ``models()`` opens (only when rows remain to be
    evaluated) a function from a row to its model. Rows are appended to ``table`` as they finish, so an interrupted
    evaluation resumes at the next row; the step's evaluation FLOPs go to the ledger. With N processes, N rows are
    evaluated at a time, one per process."""
    domains = list(eval_domains) if eval_domains is not None else ws.domain_names
    rows = processes.from_main(lambda: _read_rows(table) if table.is_file() else [])
    if ws.run.is_done(step) and len(rows) == len(X):
        return np.array([[float(r[f"loss_{d}"]) for d in domains] for r in rows])
    kept = 0
    while kept < len(rows) and _matches(rows[kept], X, components, kept):
        kept += 1
    rows = rows[:kept]  # the rows of these mixtures, in order: evaluation resumes after the last of them
    if len(rows) < len(X):
        log.info("%s: evaluating %d mixtures on %d domains", step, len(X) - len(rows), len(domains))
    previous, kept = ws.run.step_info(step) or {}, len(rows)
    started, flops, tokens = time.perf_counter(), 0.0, 0
    n, rank = ws.accelerator.num_processes, ws.accelerator.process_index
    with models() as model_at, Progress(step, len(X) - len(rows), unit="proxy") as progress:
        for first in range(len(rows), len(X), n):  # one round: row first + r on process r, gathered in order
            mine = first + rank
            measured = ws.measure(model_at(X[mine]), domains) if mine < len(X) else None
            for index, result in enumerate(processes.gather(measured), start=first):
                if result is None:
                    continue
                losses, flops, tokens = result.values, flops + result.flops, tokens + result.tokens
                rows.append({"proxy": index, **{f"w_{c}": float(v) for c, v in zip(components, X[index])},
                             **{f"loss_{d}": losses[d] for d in domains}})
                progress.update(1, loss=float(np.mean(list(losses.values()))))
            write_csv(table, rows, list(rows[0]))  # rank 0 writes
            fault_point("proxy")
    seconds = previous.get("seconds", 0.0) + time.perf_counter() - started
    if kept and len(X) > kept:  # rows evaluated before an interruption: counted at the mean cost of the others
        flops, tokens = flops * len(X) / (len(X) - kept), round(tokens * len(X) / (len(X) - kept))
    ws.ledger.set(step, flops, seconds, tokens)
    ws.run.mark_done(step, [table], info={"seconds": seconds, "flops": flops, "tokens": tokens})
    return np.array([[float(r[f"loss_{d}"]) for d in domains] for r in rows])


def _trainer(ws: Workspace, model, sampler, schedule, lr, stage, seed: int = 0) -> Trainer:
    t = ws.train
    return Trainer(model, sampler, schedule, lr, ws.training_accelerator(), weight_decay=t.weight_decay, betas=t.betas,
                   grad_clip=t.grad_clip, grad_accum=t.grad_accum, stage=stage, seed=seed, learner=ws.new_learner())


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _matches(row: dict, X: np.ndarray, components: Sequence[str], position: int) -> bool:
    index = int(row["proxy"])
    return index == position < len(X) and all(abs(float(row[f"w_{c}"]) - X[index, j]) < 1e-12 for j, c in enumerate(components))


def _fmt(mixture: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in mixture.items())
