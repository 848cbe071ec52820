"""Config of continual instruction tuning (SPEC section 3, "Continual instruction tuning") and its baselines.

A stage lasts one epoch of its new task (SPEC: the new task is seen once; each old task is sampled in proportion
to its weight relative to the new task's), so ``train.steps`` is not used: a stage of new-task weight w over a
task of n examples trains ceil(n / (w x batch_size)) steps on its own WSD schedule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from opmix.config.base import (
    GuardConfig,
    ModelConfig,
    ProposerConfig,
    Section,
    TrainConfig,
)
from opmix.config.continual import ContinualMethodConfig, check_grid
from opmix.instruct.tasks import TaskConfig

INSTRUCT_METHODS = ("opmix", "sequential", "replay", "grid")
LEARNERS = ("sft", "sdft")


class SDFTConfig(Section):
    """On-policy self-distillation (SPEC section 3): the student samples, the teacher (an EMA of the student,
    conditioned on the prompt and a gold demonstration) scores its samples; reverse KL over the vocabulary."""

    generations_per_prompt: int = Field(1, ge=1, description="Responses the student samples per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the student's responses.")
    max_new_tokens: int = Field(32, ge=1, description="Longest sampled response, in tokens.")
    ema_rate: float = Field(0.01, gt=0, le=1, description="The teacher's EMA rate per optimizer step.")
    skip_tokens: int = Field(3, ge=0, description="The first response tokens left out of the loss.")


class InstructMethodConfig(ContinualMethodConfig):
    """OP-Mix at every stage k >= 2, as in continual midtraining, with short probes and the tasks' metric."""

    probe_fraction: float = Field(
        0.4, gt=0, le=1, description="Length of each probe as a fraction of one epoch of the new task's train "
                                     "examples (SPEC: 0.4 epoch).")
    max_probe_steps: int = Field(256, ge=1, description="Probes never train longer than this (SPEC: 256 steps).")
    epochs_per_stage: float = Field(
        1.0, gt=0, description="Epochs of its new task each stage trains (SPEC: the new task is seen once); old "
                               "tasks are replayed in proportion to their weights relative to the new task's.")
    metric: Literal["error_rate", "loss"] = Field(
        "error_rate", description="What the laws are fitted on: each task's error rate (1 - accuracy, from its "
                                  "scorer, by greedy generation) or `loss`, the cross-entropy of the gold "
                                  "responses, for eval sets too small for a stable error rate.")
    proposer: ProposerConfig = Field(
        ProposerConfig(repetition_factor=None), description="The convex program that picks the mixture. Old "
                                                             "tasks are replayed by design: no repetition caps.")
    guard: GuardConfig = Field(
        GuardConfig(enabled=False), description="Not available here: a stage's length depends on its mixture, "
                                                "so the guard's short runs cannot share one schedule.")

    @field_validator("guard")
    @classmethod
    def _no_guard(cls, value: GuardConfig) -> GuardConfig:
        if value.enabled:
            raise ValueError("method.guard cannot be enabled in instruction tuning (a stage lasts one epoch of its "
                             "new task, so its length depends on the mixture); fix: remove method.guard")
        return value

    @field_validator("proposer")
    @classmethod
    def _no_caps(cls, value: ProposerConfig) -> ProposerConfig:
        if value.repetition_factor is not None:
            raise ValueError("method.proposer.repetition_factor must be null in instruction tuning (old tasks are "
                             "replayed by design); fix: remove it")
        return value


class InstructDataConfig(Section):
    """How task examples become token rows."""

    seq_len: int = Field(128, ge=8, description="Tokens per example row: prompt plus response must fit.")
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Held-out fraction of a task's examples (when it has no `eval_files`).")
    max_eval_examples: int = Field(
        64, ge=1, description="Eval examples per task, evenly spread: bounds the cost of scoring 9 proxies.")


class InstructBaselinesConfig(Section):
    replay_new_fraction: float = Field(
        0.9, gt=0, le=1, description="`replay`: this fraction of new-task data, the rest from the old tasks by p.")
    grid: list[float] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0], min_length=2,
        description="`grid`: the new-task fractions trained for real at every stage k >= 2 (a stage at fraction r "
                    "trains 1/r epochs' worth of steps).")
    grid_seeds: int = Field(1, ge=1, description="`grid`: runs per grid point, each drawing its batches differently.")

    @model_validator(mode="after")
    def _grid_inside(self) -> InstructBaselinesConfig:
        check_grid(self.grid, "new-task", "[0.2, 1.0]")
        return self


class InstructConfig(Section):
    """A whole continual instruction-tuning run (``opmix instruct``)."""

    seed: int = Field(0, description="Seeds every random draw: data order, sampling, law fits.")
    model: ModelConfig = Field(
        description="The start model (instruction-tuned, or able to follow the prompt format): a local HF "
                    "directory or a built-in config.")
    tokenizer: str | None = Field(
        None, description="A local tokenizer directory or `builtin:bytes`. Null: the model directory's tokenizer.")
    tasks: list[TaskConfig] = Field(
        min_length=1, description="T1..TK in the order they arrive: stage k learns T_k (at least two, except for "
                                  "`sequential`, which may learn a single task).")
    learner: Literal[LEARNERS] = Field(
        "sft", description="`sft` (cross-entropy on response tokens) or `sdft` (on-policy self-distillation), for "
                           "probes and full training alike.")
    sdft: SDFTConfig = Field(SDFTConfig(), description="Settings of the `sdft` learner.")
    data: InstructDataConfig = Field(InstructDataConfig(), description="Example rows and eval splits.")
    train: TrainConfig = Field(
        TrainConfig(lr=1e-3, warmup_fraction=0.05),
        description="Batch, learning rate and the shape of every stage's WSD schedule; `steps` is not used (a "
                    "stage lasts one epoch of its new task).")
    method: InstructMethodConfig = Field(InstructMethodConfig(), description="OP-Mix's own settings.")
    baselines: InstructBaselinesConfig = Field(InstructBaselinesConfig(), description="Settings of the baselines.")
    run: Literal[INSTRUCT_METHODS] = Field(
        "opmix", description="`opmix`, `sequential` (100% new task), `replay` (90% new, 10% old by p), or `grid` "
                             "(OP-Mix plus the grid of new-task fractions at every stage). The CLI's `--method` sets "
                             "it.")

    @model_validator(mode="after")
    def _consistent(self) -> InstructConfig:
        if len(self.tasks) < 2 and self.run != "sequential":
            raise ValueError(f"run={self.run} needs at least two tasks, got {len(self.tasks)}; fix: add a task, or "
                             "use run=sequential to learn one task")
        if self.learner == "sdft" and self.train.parallel == "fsdp":  # its EMA teacher is a whole copy per process
            raise ValueError("learner=sdft cannot train with train.parallel=fsdp (its teacher is not sharded); fix: "
                             "use train.parallel: ddp, or learner: sft")
        names = [t.name for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task name(s) {twice} used twice; fix: give every task its own name")
        if (self.model.builtin is not None) and self.tokenizer is None:
            raise ValueError("a built-in model needs `tokenizer` (e.g. builtin:bytes); fix: set tokenizer")
        return self

    @property
    def domain_names(self) -> list[str]:
        return [t.name for t in self.tasks]
