"""Load a YAML configuration file into a pydantic v2 model, with errors people can act on.

The steps, in order:

1. read the YAML text (a file, else the caller's embedded default);
2. expand ``${VAR}`` and ``${VAR:-default}`` (default when VAR is unset or empty, as in the shell)
   in every string value (``$${`` gives a literal ``${``);
3. apply environment overrides: with prefix ``SEKHA_ROUTER__``, the variable
   ``SEKHA_ROUTER__CIRCUIT_BREAKER__FAILURE_THRESHOLD=3`` sets ``circuit_breaker.failure_threshold``
   and ``SEKHA_ROUTER__PROVIDERS__0__ENABLED=false`` sets ``providers[0].enabled``; values are
   parsed as YAML scalars;
4. validate with pydantic.

Every problem found becomes one line of a :class:`ConfigError`, naming the place in the file as
``providers[1].models[0].tasks[0]: 'chat_fancy' is not one of embedding, chat_small, ...``.
Models that check relations between fields raise :class:`ConfigPathError` from a validator to
report problems at precise paths below the model being validated.

The module is shared by both services and has no dependency beyond pydantic and PyYAML.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "ConfigPathError", "format_path", "load_config"]

ModelT = TypeVar("ModelT", bound=BaseModel)
PathItem = str | int

_VAR_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Field names that may hold credentials: their values are never echoed in an error.
_SECRET_NAME = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one human-readable line per problem."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid configuration:\n" + "\n".join(f"  {e}" for e in self.errors))


class ConfigPathError(ValueError):
    """Raised by a model validator to report problems at paths relative to the validated model.

    Pydantic wraps a ValueError raised in a validator into its ValidationError and keeps the
    exception object, so the loader can unpack these back into one line per path.
    """

    def __init__(self, problems: Sequence[tuple[Sequence[PathItem], str]]) -> None:
        self.problems = [(tuple(path), message) for path, message in problems]
        super().__init__("; ".join(f"{format_path(p) or '<root>'}: {m}" for p, m in self.problems))


def format_path(path: Sequence[PathItem]) -> str:
    """``('providers', 1, 'models', 0)`` -> ``providers[1].models[0]``."""
    out: list[str] = []
    for item in path:
        if isinstance(item, int):
            out.append(f"[{item}]")
        else:
            out.append(f".{item}" if out else str(item))
    return "".join(out)


def load_config(
    model_cls: type[ModelT],
    path: str | Path | None,
    *,
    env_prefix: str,
    default_text: str | None = None,
    environ: Mapping[str, str] | None = None,
    context: dict[str, Any] | None = None,
) -> ModelT:
    """Read, expand, override and validate a configuration; raise ConfigError on any problem.

    ``context`` is handed to pydantic's validation context (validators may read lookups from it).
    """
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "<default config>"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"], source) from None
        except OSError as exc:
            raise ConfigError(
                [f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"], source
            ) from None
    else:
        text = default_text or ""

    data = _parse_yaml(text, source)
    unset: list[tuple[tuple[PathItem, ...], str]] = []
    data = _expand_variables(data, (), env, unset)
    errors = [
        f"{format_path(p) or '<root>'}: environment variable {name} is not set "
        f"(write ${{{name}:-default}} to give a default)"
        for p, name in unset
    ]
    if env_prefix:
        _apply_env_overrides(data, env, env_prefix, errors)
    try:
        result = model_cls.model_validate(data, context=context)
    except ValidationError as exc:
        # A value left empty by an unset variable would only repeat the problem at that path.
        errors.extend(validation_messages(model_cls, exc, skip=[p for p, _ in unset]))
    if errors:
        raise ConfigError(errors, source)
    return result


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError([f"YAML syntax error at {where}: {detail}"], source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {_type_word(data)}"], source)
    return data


Unset = list[tuple[tuple[PathItem, ...], str]]


def _expand_variables(value: Any, path: tuple[PathItem, ...], env: Mapping[str, str], unset: Unset) -> Any:
    if isinstance(value, str):
        return _expand_string(value, path, env, unset)
    if isinstance(value, dict):
        return {k: _expand_variables(v, (*path, str(k)), env, unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_variables(v, (*path, i), env, unset) for i, v in enumerate(value)]
    return value


def _expand_string(text: str, path: tuple[PathItem, ...], env: Mapping[str, str], unset: Unset) -> str:
    if "$" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        # As in the shell and compose: `:-` takes the default when the variable is unset *or empty*
        # (a Kubernetes Secret key left blank arrives as an empty variable).
        if value or (value is not None and default is None):
            return value
        if default is not None:
            return default
        unset.append((path, name))
        return ""

    return _VAR_PATTERN.sub(substitute, text)


def _apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str], prefix: str, errors: list[str]
) -> None:
    # Sorted so the outcome does not depend on the environment's iteration order.
    for name in sorted(k for k in env if k.startswith(prefix) and len(k) > len(prefix)):
        segments = [s.lower() for s in name[len(prefix) :].split("__")]
        if any(not s for s in segments):
            errors.append(f"{name}: empty path segment in environment override")
            continue
        _apply_one_override(data, name, segments, env[name], errors)


def _apply_one_override(
    data: dict[str, Any], name: str, segments: list[str], raw: str, errors: list[str]
) -> None:
    node: Any = data
    walked: list[PathItem] = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if isinstance(node, list):
            if not segment.isdigit():
                errors.append(
                    f"{name}: {format_path(walked)} is a list; expected a numeric index, got {segment!r}"
                )
                return
            index = int(segment)
            if index >= len(node):
                errors.append(
                    f"{name}: {format_path([*walked, index])} does not exist "
                    f"({format_path(walked)} has {len(node)} entries)"
                )
                return
            key: PathItem = index
        elif isinstance(node, dict):
            key = segment
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            errors.append(f"{name}: {format_path(walked)} is a single value, not a section")
            return
        walked.append(key)
        if last:
            current = node[key] if isinstance(node, list) else node.get(key)  # type: ignore[index]
            node[key] = _parse_override_value(raw, current)  # type: ignore[index]
        else:
            node = node[key]  # type: ignore[index]


def _parse_override_value(raw: str, current: Any) -> Any:
    # A value that is a string in the file stays a string: "0123" or "yes" must not turn into a
    # number or a boolean just because it came through the environment.
    if isinstance(current, str):
        return raw
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(parsed, dict | list):
        return raw
    return parsed


# ---------------------------------------------------------------------------------------------
# pydantic errors -> lines


def validation_messages(
    model_cls: type[BaseModel], exc: ValidationError, skip: Sequence[Sequence[PathItem]] = ()
) -> list[str]:
    """One readable line per pydantic error, with the YAML path of the offending value.

    Errors at or below a path in `skip` are left out.
    """
    lines: list[str] = []
    skipped = [tuple(p) for p in skip]
    for error in exc.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        if any(loc[: len(p)] == p for p in skipped):
            continue
        ctx = error.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, ConfigPathError):
            for rel_path, message in inner.problems:
                lines.append(f"{format_path((*loc, *rel_path)) or '<root>'}: {message}")
            continue
        lines.append(f"{format_path(loc) or '<root>'}: {_describe(model_cls, loc, error)}")
    return list(dict.fromkeys(lines))


def _describe(model_cls: type[BaseModel], loc: tuple[PathItem, ...], error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    message = str(error.get("msg", "invalid value"))
    value = error.get("input")
    secret = bool(loc) and isinstance(loc[-1], str) and bool(_SECRET_NAME.search(loc[-1]))
    shown = "<hidden>" if secret else _short_repr(value)

    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model_cls, loc[:-1])
        field = str(loc[-1]) if loc else ""
        hint = ""
        if allowed:
            close = difflib.get_close_matches(field, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
        return f"unknown field{hint}"
    if kind in ("enum", "literal_error"):
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{shown} is not one of {', '.join(options)}"
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value error|Assertion failed), ", "", message)
    if kind == "too_short":
        count = ctx.get("min_length", 1)
        return f"must list at least {count} item{'s' if count != 1 else ''}"
    if kind == "too_long":
        count = ctx.get("max_length")
        return f"must list at most {count} item{'s' if count != 1 else ''}"
    if kind == "string_pattern_mismatch":
        return f"{shown} does not match the pattern {ctx.get('pattern')}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        noun = re.sub(r"^Input should be (a valid |an? )?", "", message).split(",")[0]
        article = "an" if noun[:1] in ("a", "e", "i", "o", "u") else "a"
        return f"expected {article} {noun}, got {shown}"
    if message.startswith("Input should be "):
        return f"must be {message[len('Input should be ') :]} (got {shown})"
    return message


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_word(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _allowed_fields(model_cls: type[BaseModel], loc: tuple[PathItem, ...]) -> list[str]:
    """The field names of the model found at ``loc``, to suggest a fix for a misspelt key."""
    current: Any = model_cls
    for item in loc:
        current = _unwrap(current)
        if isinstance(item, int):
            args = typing.get_args(current)
            current = args[-1] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(item)
            current = field.annotation if field is not None else None
        else:
            return []
        if current is None:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``X | None`` so the loop above sees the model or container type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
