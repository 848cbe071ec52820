"""FSDP (``train.parallel: fsdp``, PyTorch FSDP2 full shard) on two CPU processes: full training and a LoRA probe
sharded over both, against one process with the same global batch; checkpoints hold whole tensors, so the run
resumes after a kill and exports a model any Hugging Face code loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from multiprocess_launch import finished, launch, summary, weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_domains(tiny_pretrain_base) -> dict:
    """Two domains: probes old + 2 on two processes, so one round runs concurrently and one probe sharded."""
    base = copy.deepcopy(tiny_pretrain_base)
    base["domains"] = base["domains"][:2]
    return base


@pytest.fixture(scope="module")
def runs(two_domains, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fsdp")
    out = {"one": folder / "one" / "run", "fsdp": folder / "fsdp" / "run"}
    for name, path in out.items():
        path.parent.mkdir()
        run = finished(two_domains, path, 1 if name == "one" else 2, parallel="fsdp")
        if name == "fsdp":
            (path.parent / "stderr.txt").write_text(run.stderr)
    return out


def _close(a: Path, b: Path, atol: float) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(np.allclose(x[k], y[k], atol=atol, rtol=0) for k in x)


def test_fsdp_trains_full_models_and_probes_like_one_process(runs):
    one, fsdp = runs["one"], runs["fsdp"]
    for checkpoint in ("prefix/checkpoint/trainable.safetensors", "final/checkpoint/trainable.safetensors"):
        assert _close(one / checkpoint, fsdp / checkpoint, 2e-5), checkpoint
    components = summary(one)["components"]
    assert len(components) == 3  # old + 2 domains: two probes concurrently, the third sharded over both processes
    for c in components:
        adapter = f"probe_{c}/adapter/adapter_model.safetensors"
        assert _close(one / adapter, fsdp / adapter, 2e-5), c
    assert "(on process 0)" in (fsdp / "run.log").read_text()
    s1, s2 = summary(one), summary(fsdp)
    assert all(abs(s1["eval_loss"][d] - s2["eval_loss"][d]) < 1e-4 for d in s1["eval_loss"])


def test_fsdp_exports_a_loadable_model(runs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs["fsdp"] / "final" / "model")
    exported = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    trained = weights(runs["fsdp"] / "final/checkpoint/trainable.safetensors")
    assert all(np.array_equal(exported[k], trained[k]) for k in trained)


def test_a_killed_fsdp_run_resumes_from_its_whole_tensor_checkpoint(runs, two_domains, tmp_path):
    out = tmp_path / "run"
    out.parent.mkdir(exist_ok=True)
    killed = launch(two_domains, out, 2, "step:final:7", parallel="fsdp")
    assert killed.returncode != 0 and (out / "final/checkpoint/state.json").is_file(), killed.stderr[-3000:]
    state = json.loads((out / "final/checkpoint/state.json").read_text())["loop"]
    assert state["world_size"] == 2 and state["step"] == 10
    run = finished(two_domains, out, 2, parallel="fsdp")
    assert "final: steps 10..20" in run.stderr
    assert _close(out / "final/checkpoint/trainable.safetensors",
                  runs["fsdp"] / "final/checkpoint/trainable.safetensors", 1e-6)
