"""The config reference pages are the models rendered: a changed field without regenerated docs fails here."""

from __future__ import annotations

import pytest

from opmix.config.docs import PAGES, ROOT, render, sections

REGENERATE = "run `python -m opmix.config.docs` and commit the result"


@pytest.mark.parametrize("config_cls", list(PAGES), ids=[page.file for page in PAGES.values()])
def test_checked_in_page_is_a_fresh_render(config_cls):
    path = ROOT / "docs" / PAGES[config_cls].file
    assert path.is_file(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(config_cls), f"{path} is stale; {REGENERATE}"


@pytest.mark.parametrize("config_cls", list(PAGES), ids=[page.file for page in PAGES.values()])
def test_every_field_of_every_section_is_described(config_cls):
    missing = [f"{section.path or '<top>'}.{name}" for section in sections(config_cls)
               for name, field in section.model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"fields without a description (add Field(..., description=...)): {missing}"


def test_pages_say_what_batch_size_means_and_show_the_example():
    for config_cls, page in PAGES.items():
        text = render(config_cls)
        row = next(line for line in text.splitlines() if line.startswith("| `train.batch_size` |"))
        assert "in each process" in row and "x N" in row
        assert (ROOT / "examples" / page.example).read_text(encoding="utf-8").rstrip("\n") in text


def test_nested_defaults_come_from_the_parent():
    from opmix.config.continual import ContinualConfig

    # ContinualConfig.train defaults to TrainConfig(steps=800), not the class's 1000
    assert "| `train.steps` | int, >= 1 | `800` |" in render(ContinualConfig)
