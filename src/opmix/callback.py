"""``OPMixCallback``: "always mixing" inside one Hugging Face ``Trainer`` run.

Every ``remix_every`` optimizer steps the callback runs the OP-Mix step (docs/METHOD.md, "the core step") from the
model as it is at that moment, with the library's functions (docs/library.md):

1. probes from the current weights (the model is copied; the run's model, optimizer, schedule and random state are
   not touched): one ``old`` probe on the current mixture p, one per domain on ``domain_probe_share`` of the domain
   plus the rest of p;
2. ``n_proxies`` Dirichlet(1) proxies ``theta + sum_c x_c Delta_c``, evaluated on every domain's eval split;
3. one mixing law per domain, and the KL-regularised proposal with the prior ``old`` 0.5, each domain 0.5/m
   (``prior="default"``: centred on the current mixture), optional Olmix caps (``repetition_factor``);
4. the proposal expanded to domain weights (``w = x_old p + x``) becomes the dataset's mixture from its next
   sequence on. The ``Trainer`` run simply continues.

Cost. A search costs (m+1) probes of ``probe_steps`` steps and ``n_proxies`` evaluations. The callback counts
FLOPs as the run ledger does (opmix.run.ledger) and skips (and logs) a search that would take the search share of
the run's compute (training steps of the whole run plus searches) above ``max_search_fraction`` (default 15%).

State. The weight history and every search's laws are written to each checkpoint folder (``opmix_callback.json``,
with the dataset's position: ``opmix_dataset_rank<r>.json``) and read back when the ``Trainer`` resumes from one,
so a resumed run continues the same mixture and the exact data sequence. For that the callback sets
``TrainingArguments.ignore_data_skip`` (the dataset restores its own position; skipping batches would move it).
``history()``, ``to_csv(path)``, ``plot(path)`` export it; ``searches()`` gives each search's proxies and laws.

Data-parallel runs: every rank runs the same (deterministic) search on its own copy of the model, and checkpoints
hold every rank's dataset position.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from opmix.data.mixture_dataset import MixtureDataset
from opmix.domains import OLD, component_prior, expand, expansion_matrix, mix
from opmix.errors import OpmixError

log = logging.getLogger(__name__)

STATE_FILE = "opmix_callback.json"
DATASET_FILE = "opmix_dataset_rank{rank}.json"


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OpmixError(f"{name} must be an integer >= 1, got {value!r}", f"give {name} a positive whole number")
    return int(value)


def check_adaptable(model) -> list[str]:
    """The layers a probe would adapt; ``OpmixError`` when the model has none (or is no causal LM)."""
    from opmix.probes.lora import lora_targets

    try:
        return lora_targets(model)
    except AttributeError as error:
        raise OpmixError(f"probes cannot adapt a {type(model).__name__}: {error}",
                         "use a transformers causal LM (AutoModelForCausalLM) with linear layers") from None
    except OpmixError as error:
        raise OpmixError(f"probes cannot adapt this model: {error.problem}",
                         "use a causal LM with nn.Linear or Conv1D layers") from None


class OPMixCallback(TrainerCallback):
    """Re-mixes ``dataset`` (a ``MixtureDataset``, the ``Trainer``'s ``train_dataset``) every ``remix_every`` steps;
    see the module docstring. Eval sets default to the dataset's (``load_domains``' eval splits)."""

    def __init__(
        self,
        dataset: MixtureDataset,
        remix_every: int,
        eval_sets: Mapping[str, np.ndarray] | None = None,
        weights: Mapping[str, float] | None = None,
        probe_steps: int = 20,
        probe_batch_size: int | None = None,
        probe_lr: float | None = None,
        lora: Mapping[str, float] | None = None,
        n_proxies: int | None = None,
        domain_probe_share: float = 0.9,
        prior: str = "default",
        kl_weight: float = 0.05,
        repetition_factor: float | None = None,
        max_search_fraction: float = 0.15,
        law_settings: Mapping | None = None,
        eval_batch_size: int = 16,
        seed: int = 0,
    ):
        if not isinstance(dataset, MixtureDataset):
            raise OpmixError(f"OPMixCallback needs the run's MixtureDataset, got {type(dataset).__name__}",
                             "pass train_dataset=opmix.MixtureDataset(...) to the Trainer and the same to the callback")
        self.dataset = dataset
        self.remix_every = _positive_int("remix_every", remix_every)
        self.probe_steps = _positive_int("probe_steps", probe_steps)
        self.probe_batch_size = None if probe_batch_size is None else _positive_int("probe_batch_size",
                                                                                    probe_batch_size)
        self.eval_batch_size = _positive_int("eval_batch_size", eval_batch_size)
        self.names = list(dataset.names)
        if len(self.names) < 2:
            raise OpmixError("mixing needs at least two domains", "give the dataset two or more domains")
        eval_sets = eval_sets if eval_sets is not None else dataset.eval_sets
        if eval_sets is None:
            raise OpmixError("the callback needs each domain's eval sequences",
                             "build the dataset from opmix.load_domains(...) or pass eval_sets={domain: array}")
        unknown = sorted(set(eval_sets) - set(self.names))
        if unknown:
            raise OpmixError(f"eval_sets name unknown domain(s) {unknown}; the dataset's domains: {self.names}",
                             "key eval_sets by the dataset's domain names")
        self.eval_sets = {name: getattr(arr, "eval", arr) for name, arr in eval_sets.items()}
        if weights is not None:
            dataset.set_weights(weights)  # raises OpmixError for unknown domains or a non-mixture
        self.components = [OLD, *self.names]
        k = len(self.components)
        self.n_proxies = 2 * (k + 1) if n_proxies is None else _positive_int("n_proxies", n_proxies)
        if self.n_proxies <= k + 1:
            raise OpmixError(f"n_proxies={self.n_proxies} cannot fit laws of {k + 1} parameters ({k} components)",
                             f"give n_proxies > {k + 1} (2 x {k + 1} = {2 * (k + 1)} is safer)")
        if not 0.0 < domain_probe_share <= 1.0:
            raise OpmixError(f"domain_probe_share must be in (0, 1], got {domain_probe_share}", "use e.g. 0.9")
        if not 0.0 <= max_search_fraction < 1.0:
            raise OpmixError(f"max_search_fraction must be in [0, 1), got {max_search_fraction}", "use e.g. 0.15")
        sizes = {name: float(arr.size) for name, arr in dataset.arrays.items()}
        self.prior = component_prior(prior, self.components, sizes)  # raises for an unknown kind
        self.prior_kind = prior
        self.kl_weight = float(kl_weight)
        self.repetition_factor = repetition_factor
        self.lora = dict(lora or {})
        self.probe_lr = probe_lr
        self.domain_probe_share = float(domain_probe_share)
        self.max_search_fraction = float(max_search_fraction)
        self.law_settings = dict(law_settings or {})
        self.seed = int(seed)
        self._history: list[dict] = []
        self._searches: list[dict] = []
        self.search_flops = 0.0
        self.search_seconds = 0.0
        self._n_params: int | None = None
        self._n_lora: int | None = None

    # -- Trainer events ---------------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        if not args.ignore_data_skip:
            args.ignore_data_skip = True  # the dataset restores its own position on resume
            log.info("OPMixCallback: set ignore_data_skip=True (the MixtureDataset resumes its own position)")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise OpmixError("the Trainer gave the callback no model", "add the callback to a transformers Trainer")
        check_adaptable(model)
        self._measure(model)
        if state.global_step > 0:
            if not args.ignore_data_skip:
                args.ignore_data_skip = True
                log.warning("OPMixCallback: resuming with ignore_data_skip=False would skip batches the dataset "
                            "already restored; set it to True (add the callback when creating the Trainer)")
            self._restore(args, state)
        elif not self._history:
            self._record({"step": 0, "event": "start", "weights": self.dataset.weights})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.remix_every or step >= state.max_steps:
            return
        estimate = self.estimate_search_flops(args)
        total = self._train_flops(args, state) + self.search_flops + estimate
        share = (self.search_flops + estimate) / total
        if share > self.max_search_fraction:
            reason = (f"search would bring the search share of the run's compute to {share:.1%} > "
                      f"max_search_fraction={self.max_search_fraction:.0%}")
            log.warning("OPMixCallback: step %d: remix skipped: %s", step, reason)
            self._record({"step": step, "event": "skipped", "weights": self.dataset.weights, "reason": reason})
            return
        self.remix(model, step, args)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("OPMixCallback: no checkpoint folder %s; the mixing history is not saved there", folder)
            return
        from opmix.run import processes
        from opmix.run.atomic import write_json

        trained = state.global_step * args.gradient_accumulation_steps * args.train_batch_size
        dispatched = _dispatched(args)
        if dispatched:  # rank 0's dataset fed every process (accelerate's dispatcher); the others' were not read
            trained *= args.world_size
        position = None
        if not dispatched or state.is_world_process_zero:
            try:
                position = self.dataset.state_dict(consumed=trained)
            except OpmixError as error:
                log.warning("OPMixCallback: the dataset's position is not saved (%s)", error.problem)
        if position is not None:
            with processes.own_writes():  # each rank's own position file
                write_json(folder / DATASET_FILE.format(rank=args.process_index), position)
        if state.is_world_process_zero:
            write_json(folder / STATE_FILE, self.state_dict())

    # -- the search -------------------------------------------------------------------------------------------
    def remix(self, model, step: int, args=None) -> dict:
        """Run the OP-Mix step from ``model`` now and set the dataset's weights; returns the history entry."""
        from opmix.probes.proxy import proxy_losses, proxy_points
        from opmix.probes.training import train_probe
        from opmix.propose import repetition_caps
        from opmix.run import processes
        from opmix.run.ledger import law_fit_flops
        from opmix.search import fit_and_propose

        started = time.perf_counter()
        p = self.dataset.weights
        share = self.domain_probe_share
        data = {OLD: p} | {d: mix([(share, {d: 1.0}), (1 - share, p)]) for d in self.names}
        batch = self._probe_batch(args)
        lr = self.probe_lr if self.probe_lr is not None else 2 * (args.learning_rate if args is not None else 3e-4)
        log.info("OPMixCallback: step %d: searching (%d probes x %d steps, %d proxies)", step, len(self.components),
                 self.probe_steps, self.n_proxies)
        probes = [
            train_probe(model, self.dataset.arrays, data[c], self.probe_steps, lr=lr, batch_size=batch,
                        lora=self.lora, seed=self.seed + 7919 * step + i)
            for i, c in enumerate(self.components)
        ]
        X = proxy_points(len(self.components), self.n_proxies, seed=self.seed + step)
        eval_names = list(self.eval_sets)
        # Under DDP the proxies go on a copy: evaluating them on the live model (its layers parametrized, then
        # restored) left the processes' models drifting apart in later steps (tests/distributed/test_callback_ddp.py)
        target = copy.deepcopy(model) if processes.world_size() > 1 else model
        Y = proxy_losses(target, probes, X, self.eval_sets, self.eval_batch_size)
        del target
        caps = None
        if self.repetition_factor is not None and args is not None:
            # Olmix caps on the expanded domain weights (`old` draws from every domain in p's proportions), over the
            # tokens the rest of the run consumes, less what the run already consumed of each domain
            sizes = np.array([float(self.dataset.arrays[d].size) for d in self.names])
            per_step = self._tokens_per_step(args)
            remaining = per_step * max(1, getattr(args, "max_steps", 0) - step)
            caps = repetition_caps(sizes, remaining, self.repetition_factor, self._consumed_tokens(step, per_step))
        search = fit_and_propose(
            X, Y, self.components, eval_names,
            own_components=[self.components.index(d) for d in eval_names], prior=self.prior,
            kl_weight=self.kl_weight, caps=caps, law_settings=self.law_settings, seed=self.seed + step,
            caps_expansion=expansion_matrix(self.components, self.names, p) if caps is not None else None,
        )
        weights = expand(search.components, self.names, p)
        self.dataset.set_weights(weights)
        self._measure(model)
        flops = self.estimate_search_flops(args)
        flops += sum(law_fit_flops(law.n_evaluations_, X.shape[0], X.shape[1]) for law in search.laws)
        seconds = time.perf_counter() - started
        self.search_flops += flops
        self.search_seconds += seconds
        predicted = float(np.mean([law.predict(search.proposer.x_[None, :])[0] for law in search.laws]))
        self._searches.append({
            "step": step, "components": list(self.components), "old_mixture": p, "X": X.tolist(),
            "eval_domains": eval_names, "Y": Y.tolist(), "laws": search.law_rows, "proposal": search.components,
            "warnings": search.warnings,
        })
        for warning in search.warnings:
            log.warning("OPMixCallback: step %d: %s", step, warning)
        entry = {"step": step, "event": "remix", "weights": weights, "components": search.components,
                 "predicted_mean_loss": predicted, "search_flops": flops, "search_seconds": seconds}
        self._record(entry)
        log.info("OPMixCallback: step %d: new mixture %s (%.1fs)", step,
                 ", ".join(f"{d}={w:.3f}" for d, w in weights.items()), seconds)
        return entry

    def estimate_search_flops(self, args) -> float:
        """FLOPs one search takes: its probes and the proxies' evaluation (the fits are negligible)."""
        from opmix.run.ledger import eval_flops, lora_train_flops

        probe_tokens = self.probe_steps * self._probe_batch(args) * self.dataset.seq_len
        flops = len(self.components) * lora_train_flops(self._n_params or 0, self._n_lora or 0, probe_tokens)
        return flops + eval_flops(self._n_params or 0, self.n_proxies * self._eval_tokens())

    def _eval_tokens(self) -> int:
        return sum(int(a.size) for a in self.eval_sets.values())

    def _measure(self, model) -> None:
        """N (the ledger's parameter count) and the LoRA parameters of one probe, for the FLOPs estimates."""
        from opmix.probes.lora import lora_parameter_count
        from opmix.run.ledger import count_params

        if self._n_params is None:
            self._n_params = count_params(model)
            self._n_lora = lora_parameter_count(model, r=int(self.lora.get("r", 16)))

    def _probe_batch(self, args) -> int:
        if self.probe_batch_size is not None:
            return self.probe_batch_size
        return args.per_device_train_batch_size if args is not None else 8

    def _consumed_tokens(self, step: int, per_step: int) -> np.ndarray:
        """Tokens of each domain the run consumed before ``step``, from the weight history (expected draws)."""
        used, changes = np.zeros(len(self.names)), [e for e in self._history if e["event"] != "skipped"]
        for i, entry in enumerate(changes):
            end = changes[i + 1]["step"] if i + 1 < len(changes) else step
            steps = max(0, min(end, step) - entry["step"])
            used += per_step * steps * np.array([entry["weights"][d] for d in self.names])
        return used

    def _tokens_per_step(self, args) -> int:
        return (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                * self.dataset.seq_len)

    def _train_flops(self, args, state) -> float:
        from opmix.run.ledger import train_flops

        return train_flops(self._n_params or 0, self._tokens_per_step(args) * state.max_steps)

    # -- history and state ------------------------------------------------------------------------------------
    def _record(self, entry: dict) -> None:
        self._history.append({**entry, "weights": {d: float(entry["weights"].get(d, 0.0)) for d in self.names}})

    def history(self) -> list[dict]:
        """One dict per event: ``step``, ``event`` (start, remix, skipped), ``weights`` (domain -> weight from that
        step on), and for a remix its component weights, predicted mean loss, FLOPs and seconds."""
        return json.loads(json.dumps(self._history))

    def searches(self) -> list[dict]:
        """Each search: its step, components, old mixture, proxies (X, Y), laws (parameters, fit errors), proposal."""
        return json.loads(json.dumps(self._searches))

    def to_csv(self, path) -> Path:
        """The history as CSV: step, event, one weight column per domain, predicted mean loss, reason."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "event", *(f"w_{d}" for d in self.names), "predicted_mean_loss", "reason"])
            for e in self._history:
                writer.writerow([e["step"], e["event"], *(e["weights"][d] for d in self.names),
                                 e.get("predicted_mean_loss", ""), e.get("reason", "")])
        return path

    def plot(self, path=None, ax=None):
        """The mixture over training steps (stacked areas; each remix a step change); saved to ``path`` as PNG
        when given. Returns the matplotlib figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(7, 3.5))
        ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
        events = [e for e in self._history if e["event"] != "skipped"]
        steps = [e["step"] for e in events]
        end = max(steps[-1] + self.remix_every, 1) if steps else 1
        xs = [*steps, end]
        ys = [[e["weights"][d] for e in events] + [events[-1]["weights"][d]] for d in self.names]
        ax.stackplot(xs, ys, labels=self.names, step="post")
        for e in self._history:
            if e["event"] == "skipped":
                ax.axvline(e["step"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_ylabel("mixture weight")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, end)
        ax.legend(loc="upper left", fontsize="small")
        ax.set_title("OP-Mix: the mixture during training")
        if path is not None:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        return fig

    def state_dict(self) -> dict:
        return {"version": 1, "domains": self.names, "history": self._history, "searches": self._searches,
                "search_flops": self.search_flops, "search_seconds": self.search_seconds}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state.get("domains", [])) != self.names:
            raise OpmixError(f"the saved mixing history is over domains {state.get('domains')}, not {self.names}",
                             "resume with the dataset the run started with")
        self._history = [dict(e) for e in state["history"]]
        self._searches = [dict(s) for s in state["searches"]]
        self.search_flops = float(state["search_flops"])
        self.search_seconds = float(state.get("search_seconds", 0.0))

    def load(self, checkpoint, rank: int = 0, position: bool = True) -> None:
        """Restore the history, the searches and this rank's dataset position (``position``; else only the last
        mixture) from a checkpoint folder."""
        folder = Path(checkpoint)
        state_file = folder / STATE_FILE
        if not state_file.is_file():
            raise OpmixError(f"{folder} holds no {STATE_FILE}", "resume from a checkpoint the callback saved")
        self.load_state_dict(json.loads(state_file.read_text()))
        saved = folder / DATASET_FILE.format(rank=rank)
        if position and saved.is_file():
            self.dataset.load_state_dict(json.loads(saved.read_text()))
        elif not position:
            self.dataset.set_weights(self._history[-1]["weights"])
        else:
            log.warning("OPMixCallback: %s has no dataset position; continuing from the last mixture", folder)
            self.dataset.set_weights(self._history[-1]["weights"])

    def _restore(self, args, state) -> None:
        candidates = []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        for folder in candidates:
            if (folder / STATE_FILE).is_file():
                # with the dispatcher only rank 0's dataset is read: the others take the mixture, not a position
                self.load(folder, rank=args.process_index,
                          position=not (_dispatched(args) and not state.is_world_process_zero))
                log.info("OPMixCallback: restored %d history entries from %s", len(self._history), folder)
                return
        log.warning("OPMixCallback: resuming at step %d but no %s was found in %s; the mixing history starts "
                    "here with the dataset's current weights", state.global_step, STATE_FILE,
                    ", ".join(map(str, candidates)))
        self._record({"step": state.global_step, "event": "start", "weights": self.dataset.weights})


def _dispatched(args) -> bool:
    """Whether accelerate's dispatcher feeds every process from rank 0's dataset (its default for an iterable
    dataset under several processes; ``accelerator_config.dispatch_batches=False`` makes each process read its own)."""
    config = getattr(args, "accelerator_config", None)
    return getattr(args, "world_size", 1) > 1 and getattr(config, "dispatch_batches", None) is not False
