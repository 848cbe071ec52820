"""``opmix instruct demo``: offline, on CPU, in minutes. A small byte-level Llama first learns the prompt/response
format on a warm-up set (the demo tasks mixed, other examples), then learns three verifiable tasks in order:
the length of a word (answers in digits), its first letter, its last letter (answers in letters), so that learning
the later tasks alone pulls the model away from the first. Tasks: ``opmix.instruct.demo_tasks`` (words of the
installation and ``string.ascii_lowercase``); both configs are plain dicts, validated like any user config."""

from __future__ import annotations

from pathlib import Path

from opmix.instruct.demo_tasks import write_demo_tasks

SEQ_LEN = 96
ORDER = ("length", "first", "last")
MODEL = "llama-1m"
N_TRAIN = 2000  # examples per task (and in the warm-up set)


def _task(name: str, folder: Path) -> dict:
    return {"name": name, "files": [str(folder / "train.jsonl")], "eval_files": [str(folder / "eval.jsonl")],
            "max_new_tokens": 12}


def _common(seed: int = 0) -> dict:
    return {
        "seed": seed, "tokenizer": "builtin:bytes", "learner": "sft",
        "data": {"seq_len": SEQ_LEN, "max_eval_examples": 64},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_fraction": 0.05, "decay_fraction": 0.2,
                  "eval_batch_size": 64, "checkpoint_every": 50},  # Ctrl-C loses at most 50 steps
        "sdft": {"max_new_tokens": 12},
    }


def warmup_config(data_dir: Path, seed: int = 0) -> dict:
    """The start model: ``MODEL`` from random init, SFT on the format set for 12 epochs (one stage, sequential)."""
    paths = write_demo_tasks(data_dir, n_train=N_TRAIN, n_eval=64, seed=seed, names=ORDER)
    raw = _common(seed)
    raw.update({"model": {"builtin": MODEL}, "tasks": [_task("format", paths["format"])], "run": "sequential",
                "method": {"epochs_per_stage": 12}})
    return raw


def demo_instruct_config(data_dir: Path, start_model: Path, seed: int = 0) -> dict:
    """The three tasks after the warm-up model; r = 4 adapters (alpha 8, SPEC's alpha / r)."""
    paths = write_demo_tasks(data_dir, n_train=N_TRAIN, n_eval=64, seed=seed, names=ORDER)
    raw = _common(seed)
    raw.update({"model": {"path": str(start_model)}, "tokenizer": None,
                "tasks": [_task(name, paths[name]) for name in ORDER],
                "method": {"lora": {"r": 4, "alpha": 8}, "epochs_per_stage": 2},
                "baselines": {"grid": [0.25, 0.5, 1.0]}})
    return raw


def train_demo_start_model(out: Path, seed: int = 0) -> Path:
    """Run the warm-up (resumable like any run) and return its exported model directory."""
    from opmix.config.instruct import InstructConfig
    from opmix.config.loading import load_config
    from opmix.recipes import instruct
    from opmix.run.rundir import RunDir

    run = out / "warmup"
    cfg = load_config(None, InstructConfig, raw=warmup_config(out / "data", seed))
    with RunDir(run).lock() as run_dir:
        instruct.run(cfg, run_dir)
    return run / "final" / "model"
