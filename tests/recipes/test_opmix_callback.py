"""OPMixCallback in a real (tiny) transformers.Trainer run: remixes at the right steps, saves and restores its
history with the Trainer's checkpoints, the dataset resumes its exact position, the loss stays finite."""

from __future__ import annotations

import json
import math

import pytest
import torch

import opmix
from opmix.callback import DATASET_FILE, STATE_FILE, OPMixCallback
from opmix.errors import OpmixError

STEPS, EVERY, SEQ = 7, 3, 16


@pytest.fixture(scope="module")
def domains(demo_corpus, tmp_path_factory):
    files = {name: demo_corpus[name] for name in list(demo_corpus)[:2]}
    return opmix.load_domains(files, "builtin:bytes", seq_len=SEQ, cache_dir=tmp_path_factory.mktemp("cache"),
                              eval_fraction=0.1, max_eval_sequences=4)


def make_callback(dataset, **overrides):
    settings = dict(remix_every=EVERY, probe_steps=2, n_proxies=6, lora={"r": 2, "alpha": 4},
                    law_settings={"n_c_starts": 3, "n_t_starts": 4}, max_search_fraction=0.9, seed=0)
    return OPMixCallback(dataset, **{**settings, **overrides})


def run_trainer(domains, out, resume=None, **overrides):
    from transformers import Trainer, TrainingArguments

    model = opmix.builtin_model("llama-tiny", vocab_size=260, seed=0, max_positions=SEQ)
    dataset = opmix.MixtureDataset(domains, seed=0)
    callback = make_callback(dataset, **overrides)
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
                             save_strategy="steps", save_steps=EVERY, logging_steps=1, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=opmix.MixtureDataset.collate,
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback, dataset


@pytest.fixture(scope="module")
def full_run(domains, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer, callback, dataset = run_trainer(domains, out)
    return out, trainer, callback, dataset


def test_remixes_at_the_right_steps_and_the_loss_stays_finite(full_run):
    out, trainer, callback, dataset = full_run
    history = callback.history()
    assert [(e["step"], e["event"]) for e in history] == [(0, "start"), (3, "remix"), (6, "remix")]
    assert history[0]["weights"] == pytest.approx({d: 0.5 for d in dataset.names})
    for entry in history[1:]:
        assert sum(entry["weights"].values()) == pytest.approx(1.0)
        assert entry["search_flops"] > 0
    assert dataset.weights == pytest.approx(history[-1]["weights"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    searches = callback.searches()
    assert [s["step"] for s in searches] == [3, 6] and len(searches[0]["laws"]) == len(dataset.names)


def test_history_and_laws_are_saved_in_each_checkpoint(full_run, tmp_path):
    out, _, callback, _ = full_run
    saved = json.loads((out / "checkpoint-3" / STATE_FILE).read_text())
    assert [e["step"] for e in saved["history"]] == [0, 3] and saved["searches"][0]["laws"]
    position = json.loads((out / "checkpoint-3" / DATASET_FILE.format(rank=0)).read_text())
    assert position["consumed"] == 3 * 4  # the sequences trained, not the ones the loader fetched ahead
    table = callback.to_csv(tmp_path / "history.csv").read_text().splitlines()
    assert table[0].startswith("step,event,w_") and len(table) == 4
    callback.plot(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0


def test_resume_restores_history_and_continues_the_same_run(domains, full_run, tmp_path):
    import shutil

    out, trainer, callback, _ = full_run
    copy = tmp_path / "run"
    shutil.copytree(out / "checkpoint-3", copy / "checkpoint-3")
    resumed_trainer, resumed, dataset = run_trainer(domains, copy, resume=str(copy / "checkpoint-3"))
    history = resumed.history()
    assert [(e["step"], e["event"]) for e in history] == [(0, "start"), (3, "remix"), (6, "remix")]
    assert history[1]["weights"] == callback.history()[1]["weights"]  # restored, not searched again
    assert history[2]["weights"] == pytest.approx(callback.history()[2]["weights"], abs=1e-4)
    first = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    again = [e["loss"] for e in resumed_trainer.state.log_history if "loss" in e]
    assert again[-STEPS + 3:] == pytest.approx(first[3:], rel=1e-4)  # same data, same weights: same losses


def test_a_search_over_the_compute_cap_is_skipped(domains, tmp_path):
    _, callback, dataset = run_trainer(domains, tmp_path, max_search_fraction=0.0)
    history = callback.history()
    assert [e["event"] for e in history] == ["start", "skipped", "skipped"]
    assert "max_search_fraction" in history[1]["reason"]
    assert dataset.weights == pytest.approx({d: 0.5 for d in dataset.names})


def test_bad_arguments_raise_opmix_errors_with_a_fix(domains):
    dataset = opmix.MixtureDataset(domains, seed=0)
    cases = [
        dict(remix_every=0), dict(remix_every=2.5), dict(weights={"no-such-domain": 1.0}), dict(n_proxies=3),
        dict(max_search_fraction=1.5), dict(prior="flat"), dict(eval_sets={"nope": dataset.arrays[dataset.names[0]]}),
    ]
    for overrides in cases:
        with pytest.raises(OpmixError) as caught:
            make_callback(dataset, **overrides)
        assert caught.value.fix, overrides
    with pytest.raises(OpmixError, match="MixtureDataset"):
        OPMixCallback(list(domains), remix_every=2)


def test_a_model_the_probes_cannot_adapt_is_refused():
    from types import SimpleNamespace

    dataset = opmix.MixtureDataset({"a": torch.zeros(4, 8, dtype=torch.long).numpy(),
                                    "b": torch.ones(4, 8, dtype=torch.long).numpy()}, seed=0)
    callback = OPMixCallback(dataset, remix_every=2, eval_sets=dict(dataset.arrays))
    state = SimpleNamespace(global_step=0)
    for model in (torch.nn.Sequential(torch.nn.Embedding(10, 4)), torch.nn.Linear(4, 4)):
        with pytest.raises(OpmixError) as caught:
            callback.on_train_begin(SimpleNamespace(), state, None, model=model)
        assert "cannot adapt" in caught.value.problem and caught.value.fix
