"""Config of a mixture update (``opmix update``): a finished run's settings with a changed domain set.

The CLI builds it from the previous run's saved config (``--from``) and the changes; it is saved in the new run
directory like any config, so an interrupted update resumes, and an update's directory is a valid ``--from``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from opmix.config.base import Section
from opmix.config.pretrain import PretrainConfig
from opmix.errors import OpmixError


class DomainChange(Section):
    """One change to the domain set."""

    kind: Literal["add", "remove", "partition", "revise"] = Field(
        description="`add` a new domain, `remove` one, `partition` one into parts, `revise` one's data.")
    name: str = Field(description="The domain added, removed, partitioned or revised.")
    files: list[str] = Field([], description="`add`, `revise`: the domain's (new) files.")
    parts: dict[str, list[str]] = Field({}, description="`partition`: each part's name and files.")


class UpdateSpec(Section):
    """Where an update starts from and what changed."""

    from_run: str = Field(description="The previous run directory (a pretraining run or an update).")
    base: str = Field(description="Its final trainer checkpoint: the probes and the training start from its weights.")
    previous_mixture: dict[str, float] = Field(description="The domain mixture the previous run trained on.")
    previous_tokens: dict[str, float] = Field(
        {}, description="Tokens of each domain the previous run's model consumed (counted against the repetition "
                        "limit of unchanged domains; new, revised and partitioned data starts at 0).")
    changes: list[DomainChange] = Field([], description="The changes, in order.")
    recompute: list[str] = Field([], description="Unchanged domains searched again, as if they had changed.")
    train: bool = Field(True, description="False (`--no-train`): propose the mixture only.")
    n_proxies: int | None = Field(
        None, ge=3, description="Proxies of the update's search. Null: twice the law's parameters, 2(k+1) for k "
                                "components (an update searches few components, so it needs few proxies).")


class UpdateConfig(PretrainConfig):
    """A mixture update (``opmix update``): the previous run's settings, its final model, the new domains."""

    update: UpdateSpec = Field(description="The previous run and the changes.")

    @model_validator(mode="after")
    def _update_consistent(self) -> UpdateConfig:
        names = [d.name for d in self.domains]
        unknown = sorted(set(self.update.recompute) - set(names))
        if unknown:
            raise ValueError(f"update.recompute names {unknown}, not domains of the update; fix: use {names}")
        if self.baselines:
            raise ValueError("an update trains no baselines; fix: set baseline: none (compare with a recomputation "
                             "by running the update again with --recompute on every domain)")
        return self

    @property
    def affected(self) -> list[str]:
        """Domains with a component of their own: new, revised, partition parts, and those to recompute."""
        previous = set(self.update.previous_mixture)
        revised = {c.name for c in self.update.changes if c.kind == "revise"}
        return [d.name for d in self.domains
                if d.name not in previous or d.name in revised or d.name in self.update.recompute]

    @property
    def components(self) -> list[str]:
        from opmix.domains import EXISTING

        return ([EXISTING] if self.existing else []) + self.affected

    @property
    def update_proxies(self) -> int:
        return self.update.n_proxies or 2 * (len(self.components) + 1)

    @property
    def existing(self) -> dict[str, float]:
        """The unchanged domains at their previous relative weights (empty when none is left)."""
        affected = set(self.affected)
        kept = {d.name: self.update.previous_mixture[d.name] for d in self.domains if d.name not in affected}
        total = sum(kept.values())
        return {d: w / total for d, w in kept.items()} if total > 0 else {}


def parse_change(kind: str, spec: str) -> DomainChange:
    """A change from a CLI flag: ``--add NAME=PATH``, ``--remove NAME``, ``--revise NAME=PATH``,
    ``--partition NAME=PART:PATH,PART:PATH``."""
    usage = {"add": "NAME=PATH", "remove": "NAME", "revise": "NAME=PATH", "partition": "NAME=PART:PATH,PART:PATH"}
    name, sep, value = spec.partition("=")
    if not name or (kind != "remove" and not (sep and value)) or (kind == "remove" and sep):
        raise OpmixError(f"--{kind} {spec!r} is not {usage[kind]}", f"write --{kind} {usage[kind]}")
    if kind == "remove":
        return DomainChange(kind="remove", name=name)
    if kind in ("add", "revise"):
        return DomainChange(kind=kind, name=name, files=[_absolute(value)])
    parts: dict[str, list[str]] = {}
    for item in value.split(","):
        part, sep, path = item.partition(":")
        if not (part and sep and path):
            raise OpmixError(f"--partition {spec!r}: {item!r} is not PART:PATH", f"write --partition {usage[kind]}")
        parts.setdefault(part, []).append(_absolute(path))
    if len(parts) < 2:
        raise OpmixError(f"--partition {spec!r} gives {len(parts)} part", "give two parts or more")
    return DomainChange(kind="partition", name=name, parts=parts)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def update_raw(previous: dict, from_run: str, previous_mixture: dict[str, float], changes: list[DomainChange],
               recompute: list[str], train: bool, previous_tokens: dict[str, float] | None = None) -> dict:
    """The update's raw config: the previous run's settings, its final model, the changed domain list."""
    raw = {k: v for k, v in previous.items() if k != "update"}
    domains = [dict(d) for d in raw["domains"]]
    for change in changes:
        names = [d["name"] for d in domains]
        if change.kind == "add":
            if change.name in names:
                raise OpmixError(f"--add {change.name}: the previous run already has a domain {change.name!r}",
                                 f"use --revise {change.name}=PATH to change its data, or another name")
            domains.append({"name": change.name, "files": change.files})
            continue
        if change.name not in names:
            raise OpmixError(f"--{change.kind} {change.name}: no such domain in the previous run",
                             f"use one of {names}")
        at = names.index(change.name)
        if change.kind == "remove":
            del domains[at]
        elif change.kind == "revise":
            domains[at] = {**{k: v for k, v in domains[at].items() if k != "eval_files"}, "files": change.files}
        else:
            clash = sorted(set(change.parts) & (set(names) - {change.name}))
            if clash:
                raise OpmixError(f"--partition {change.name}: part name(s) {clash} are already domains",
                                 "give the parts new names")
            domains[at:at + 1] = [{"name": part, "files": files} for part, files in change.parts.items()]
    if len(domains) < 2:
        raise OpmixError(f"the update leaves {len(domains)} domain", "keep at least two domains")
    model = {k: v for k, v in raw["model"].items() if k not in ("path", "builtin")}
    raw.update(domains=domains, model={**model, "path": str(Path(from_run) / "final" / "model")},
               baseline="none", update={
                   "from_run": from_run, "base": str(Path(from_run) / "final" / "checkpoint"),
                   "previous_mixture": previous_mixture, "previous_tokens": dict(previous_tokens or {}),
                   "changes": [c.model_dump() for c in changes],
                   "recompute": list(recompute), "train": train})
    raw.setdefault("method", {})["initial_mixture"] = None
    return raw
