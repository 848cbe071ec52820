"""YAML file + ``a.b=c`` overrides -> a validated, frozen config; every problem is one OpmixError line."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from opmix.errors import OpmixError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` (value parsed as YAML) in a nested dict; list items by index, ``domains.0.name=x``."""
    for override in overrides:
        if "=" not in override:
            raise OpmixError(f"override {override!r} has no '='", "write overrides as key.path=value")
        key, value_text = override.split("=", 1)
        value = yaml.safe_load(value_text) if value_text else None
        node: Any = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_index(part, key, node)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, key, node)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise OpmixError(f"override {key!r}: {'.'.join(parts[:-1])} is not a section", "check the key path")
    return raw


def _index(part: str, key: str, node: list) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise OpmixError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}", "use 0..n-1")
    return int(part)


def load_config(path: Path | None, cls: type[ConfigT], overrides: list[str] = (), raw: dict | None = None) -> ConfigT:
    """Read YAML (or take ``raw``), apply overrides, resolve relative paths against the file's folder, validate."""
    base_dir = Path.cwd()
    if raw is None:
        if path is None:
            raise OpmixError("no config given", "pass --config FILE")
        path = Path(path)
        if not path.is_file():
            raise OpmixError(f"config file {path} does not exist", "check the --config path")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise OpmixError(f"config file {path} is not valid YAML{where}", "fix the YAML syntax") from None
        if not isinstance(raw, dict):
            raise OpmixError(f"config file {path} is not a mapping of settings", "write key: value pairs")
        base_dir = path.resolve().parent
    raw = apply_overrides(raw, list(overrides))
    _resolve_paths(raw, base_dir)
    try:
        return cls.model_validate(raw)
    except ValidationError as error:
        raise OpmixError(*_describe(error, cls)) from None


def _resolve_paths(raw: dict, base_dir: Path) -> None:
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("builtin:") and not Path(value).is_absolute():
            return str(base_dir / value)
        return value

    for domain in [*(raw.get("domains") or []), *(raw.get("tasks") or [])]:  # instruction tasks name files too
        if isinstance(domain, dict):
            for key in ("files", "eval_files"):
                if isinstance(domain.get(key), list):
                    domain[key] = [resolve(v) for v in domain[key]]
                elif isinstance(domain.get(key), str):
                    domain[key] = [resolve(domain[key])]
    model = raw.get("model")
    if isinstance(model, dict) and model.get("path"):
        model["path"] = resolve(model["path"])
    if isinstance(raw.get("tokenizer"), str):
        raw["tokenizer"] = resolve(raw["tokenizer"])


def _describe(error: ValidationError, cls: type[BaseModel]) -> tuple[str, str]:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        parent, name = first["loc"][:-1], str(first["loc"][-1])
        known = _fields_at(cls, parent)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {'.'.join([*map(str, parent), close[0]])!r}?" if close else f"known keys: {known}"
        return f"unknown config key {location!r}", f"remove it; {hint}"
    if first["type"] == "missing":
        return f"config key {location!r} is missing", "add it (see examples/)"
    if first["type"] == "value_error":  # our own validators already name the fix
        where = "config" if location == "config" else f"config {location}"
        return f"{where}: {first['msg'].removeprefix('Value error, ')}", None
    return f"config {location}: {first['msg']}", "correct that setting (see examples/ for a valid config)"


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        model = inner[0] if inner else annotation
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []
