"""Every config shipped in examples/ validates against its recipe's schema (as torchtune and Olmix test theirs)."""

from pathlib import Path

import pytest

from opmix.config import PretrainConfig, load_config
from opmix.config.continual import ContinualConfig
from opmix.config.instruct import InstructConfig

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SCHEMAS = {"pretrain.yaml": PretrainConfig, "continual.yaml": ContinualConfig, "instruct.yaml": InstructConfig}


def test_every_example_has_a_schema():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_example_validates(name):
    cfg = load_config(EXAMPLES / name, SCHEMAS[name])
    domains = cfg.tasks if name == "instruct.yaml" else cfg.domains
    assert len(domains) >= 2
    assert all(Path(f).is_absolute() for d in domains for f in d.files)  # resolved against the file's folder
