"""A transformers ``Trainer`` job with ``OPMixCallback``, run by tests/distributed/test_callback_ddp.py under
``torchrun`` (DDP over gloo on CPU). Usage: callback_job.py CORPUS_JSON OUT [RESUME_CHECKPOINT]. Each process writes
the callback's history to ``OUT/history-rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import opmix
from opmix.callback import OPMixCallback

STEPS, EVERY, SEQ = 7, 3, 16


def main(corpus: str, out: str, resume: str | None = None) -> None:
    from transformers import Trainer, TrainingArguments

    files = {name: [Path(p) for p in paths] for name, paths in json.loads(Path(corpus).read_text()).items()}
    domains = opmix.load_domains(files, "builtin:bytes", seq_len=SEQ, cache_dir=Path(out) / "cache",
                                 eval_fraction=0.1, max_eval_sequences=4)
    model = opmix.builtin_model("llama-tiny", vocab_size=260, seed=0, max_positions=SEQ)
    dataset = opmix.MixtureDataset(domains, seed=0)
    callback = OPMixCallback(dataset, remix_every=EVERY, probe_steps=2, n_proxies=6, lora={"r": 2, "alpha": 4},
                             law_settings={"n_c_starts": 3, "n_t_starts": 4}, max_search_fraction=0.9, seed=0)
    args = TrainingArguments(output_dir=out, max_steps=STEPS, per_device_train_batch_size=2, learning_rate=3e-3,
                             save_strategy="steps", save_steps=EVERY, logging_steps=1, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=opmix.MixtureDataset.collate,
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    rank = int(os.environ.get("RANK", "0"))
    history = {"history": callback.history(), "weights": dataset.weights, "world": trainer.args.world_size,
               "searches": callback.searches(),
               "param_sum": float(sum(p.double().sum() for p in trainer.model.parameters()))}
    (Path(out) / f"history-rank{rank}.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main(*sys.argv[1:])
