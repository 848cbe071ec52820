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
from pathlib import Path

import numpy as np

from opmix.data.sampler import MixtureSampler
from opmix.eval import mean_loss
from opmix.probes.cache import probe_key, tokens_hash, train_settings
from opmix.progress import Progress, format_seconds
from opmix.run.atomic import atomic_dir, write_csv
from opmix.run.faults import fault_point
from opmix.run.ledger import (
    generation_flops,
    lora_train_flops,
    teacher_flops,
    train_flops,
)
from opmix.train.checkpoint import load_trainer_checkpoint, resumable
from opmix.train.loop import Trainer
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
                             seed=ws.sampler_seed(sampler_offset))
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
    totals, epochs = _over_processes(ws, sampler)
    ws.run.mark_done(step, [checkpoint], info={
        "eval_loss": losses, **({"measures": measured.extra} if measured.extra else {}),
        "mixture": dict(mixture), "tokens": tokens, "end_step": end_step,
        "tokens_consumed": dict(sampler.tokens_consumed), "epochs": sampler.epochs(),
        "tokens_consumed_total": totals, "epochs_total": epochs,
    })
    return checkpoint


def learner_kinds(ws: Workspace, trainer: Trainer) -> dict[str, float]:
    """Compute a learner spends besides training (SPEC section 6): self-distillation's generation (2 N per
    generated token) and its teacher's forward passes (2 N per token), each counted on its own."""
    learner, processes = trainer.learner, ws.accelerator.num_processes  # a learner counts its own process's work
    kinds = {}
    if getattr(learner, "generated_tokens", 0):
        kinds["generation"] = generation_flops(ws.n_params, learner.generated_tokens * processes)
    if getattr(learner, "teacher_tokens", 0):
        kinds["teacher"] = teacher_flops(ws.n_params, learner.teacher_tokens * processes)
    return kinds


def learner_flops(ws: Workspace, trainer: Trainer) -> float:
    return sum(learner_kinds(ws, trainer).values())


def _over_processes(ws: Workspace, sampler: MixtureSampler) -> tuple[dict[str, int], dict[str, float]]:
    """Tokens of each domain consumed so far by every process together (each draws its own batches), and the
    epochs they make: passes over the domain's train tokens. Cumulative over the run the step continues."""
    counts = [dict(sampler.tokens_consumed)]
    if ws.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        counts = gather_object(counts)
    totals = {d: sum(c.get(d, 0) for c in counts) for d in sampler.names}
    return totals, {d: totals[d] / (len(sampler.domains[d]) * sampler.seq_len) for d in sampler.names}


def train_probe(
    ws: Workspace,
    step: str,
    base: Path,
    mixture: Mapping[str, float],
    steps: int,
    lr: float,
    decay_fraction: float,
    lora: Mapping[str, float],
    sampler_offset: int,
) -> Path:
    """A LoRA probe trained from the ``base`` checkpoint on ``mixture``: flat rate, no warmup, short decay."""
    from opmix.probes.lora import lora_parameter_count, save_probe
    from opmix.probes.training import probe_trainer

    adapter = ws.run.path(step, "adapter")
    if ws.run.is_done(step):
        return adapter
    cached = _cached_probe(ws, step, base, mixture, adapter, {
        "steps": steps, "lr": lr, "decay_fraction": decay_fraction, "lora": dict(lora),
        "sampler_seed": ws.sampler_seed(sampler_offset), "world_size": ws.accelerator.num_processes,
        "n_params": ws.n_params, "seq_len": int(next(iter(ws.train_sets().values())).shape[1]),
        "train": train_settings(ws.train), **({"learner": ws.learner_settings} if ws.learner_settings else {}),
    })
    if cached is None:
        return adapter
    t = ws.train
    trainer = probe_trainer(load_weights(ws, base), ws.train_sets(), mixture, steps, lr, t.batch_size,
                            ws.accelerator, lora=lora, decay_fraction=decay_fraction, final_lr_ratio=t.final_lr_ratio,
                            weight_decay=t.weight_decay, betas=t.betas, grad_clip=t.grad_clip, grad_accum=t.grad_accum,
                            seed=ws.sampler_seed(sampler_offset), stage=step, learner=ws.new_learner())
    model = trainer.unwrapped_model()
    checkpoint = ws.run.path(step, "checkpoint")
    log.info("%s: LoRA probe, %d steps on %s", step, steps, _fmt(mixture))
    if resumable(checkpoint):
        trainer.load(checkpoint)
    trainer.train_until(steps, checkpoint, ws.train.checkpoint_every)
    if ws.accelerator.is_main_process:  # one writer: data-parallel ranks hold the same adapter
        save_probe(trainer.unwrapped_model(), adapter)
    ws.accelerator.wait_for_everyone()
    flops = lora_train_flops(ws.n_params, lora_parameter_count(model), trainer.tokens_trained)
    cache, key, source = cached
    if cache is not None and ws.accelerator.is_main_process:
        cost = {"flops": flops + learner_flops(ws, trainer), "seconds": trainer.seconds,
                "tokens": trainer.tokens_trained}
        cache.store(key, source, adapter, cost)
    ws.ledger.set(step, flops + learner_flops(ws, trainer), trainer.seconds, trainer.tokens_trained,
                  kinds={"train": flops, **learner_kinds(ws, trainer)})
    ws.run.mark_done(step, [adapter], info={"mixture": dict(mixture), "tokens": trainer.tokens_trained})
    return adapter


def _cached_probe(ws: Workspace, step: str, base: Path, mixture: Mapping[str, float], adapter: Path,
                  settings: dict) -> tuple | None:
    """Serve the probe from the cache when it holds it (then None: the step is done), else (cache, key, source)
    for storing the probe once trained (cache None when the run has no cache)."""
    if ws.probe_cache is None:
        return None, None, None
    data = {name: tokens_hash(ws.domains[name].train, ws.domains[name].path) for name, w in mixture.items() if w > 0}
    key, source = probe_key(base, mixture, data, settings)
    hit = ws.probe_cache.lookup(key)
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
    evaluation resumes at the next row; the step's evaluation FLOPs go to the ledger."""
    domains = list(eval_domains) if eval_domains is not None else ws.domain_names
    rows = _read_rows(table) if table.is_file() else []
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
    with models() as model_at, Progress(step, len(X) - len(rows), unit="proxy") as progress:
        for index in range(len(rows), len(X)):
            measured = ws.measure(model_at(X[index]), domains)
            losses, flops, tokens = measured.values, flops + measured.flops, tokens + measured.tokens
            rows.append({"proxy": index, **{f"w_{c}": float(v) for c, v in zip(components, X[index])},
                         **{f"loss_{d}": losses[d] for d in domains}})
            write_csv(table, rows, list(rows[0]))
            progress.update(1, loss=float(np.mean(list(losses.values()))))
            fault_point("proxy")
    seconds = previous.get("seconds", 0.0) + time.perf_counter() - started
    if kept and len(X) > kept:  # rows evaluated before an interruption: counted at the mean cost of the others
        flops, tokens = flops * len(X) / (len(X) - kept), round(tokens * len(X) / (len(X) - kept))
    ws.ledger.set(step, flops, seconds, tokens)
    ws.run.mark_done(step, [table], info={"seconds": seconds, "flops": flops, "tokens": tokens})
    return np.array([[float(r[f"loss_{d}"]) for d in domains] for r in rows])


def _trainer(ws: Workspace, model, sampler, schedule, lr, stage, seed: int = 0) -> Trainer:
    t = ws.train
    return Trainer(model, sampler, schedule, lr, ws.accelerator, weight_decay=t.weight_decay, betas=t.betas,
                   grad_clip=t.grad_clip, grad_accum=t.grad_accum, stage=stage, seed=seed, learner=ws.new_learner())


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _matches(row: dict, X: np.ndarray, components: Sequence[str], position: int) -> bool:
    index = int(row["proxy"])
    return index == position < len(X) and all(abs(float(row[f"w_{c}"]) - X[index, j]) < 1e-12 for j, c in enumerate(components))


def _fmt(mixture: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in mixture.items())
