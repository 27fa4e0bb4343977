"""Checks and bounds that hold for every protobuf message, written once over the descriptors.

* `RequestChecker`: every enum of a request holds a declared value, and identifiers a service may
  echo in an error fit their caps.
* `bound_strings`: shortens every string of a message in place (the details of an error status).

Violations name the field by its proto path (`messages[0].parts[1].image.detail`) and never
repeat the offending value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sekha_runtime.errors import FieldViolation

_MAX_VIOLATIONS = 20
_ELLIPSIS = "..."


def bound(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked as cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@dataclass(frozen=True, slots=True)
class _Step:
    """One field of a message type that can hold something to check, directly or below it."""

    name: str
    is_map: bool
    is_repeated: bool
    enum: Any = None  # the EnumDescriptor of an enum field
    enum_numbers: frozenset[int] = frozenset()  # the numbers it declares
    limit: int | None = None  # the character limit of a capped string field
    children: tuple[_Step, ...] | None = None  # the plan of a message field's type


# A field's path as the parts it is made of, joined into text only for a violation: most requests
# have none, and formatting a path for every element visited cost more than the checks themselves.
_Path = tuple[str | int, ...]


def _path_text(parts: _Path) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):  # a map key, already bracketed
            text += part
        else:
            text += f".{part}" if text else part
    return text


class RequestChecker:
    """What holds for every request of a service, whatever the RPC, checked over the descriptors:

    * every enum field, at any depth, holds a number its enum declares (proto3 enums are open: a
      caller can send `detail = 99` and protobuf keeps it);
    * identifiers a service may echo in an error (a provider id, a collection name) fit their caps,
      so an error never carries a megabyte of input. `limits` is keyed by `Message.field`
      (`GetMigrationRequest.id`) or by a field name alone (`provider_id`, wherever it occurs).

    Which fields of a message type need looking at is worked out once per type, so a request costs
    a visit to those fields only (never to its texts). Well-known types (Struct, Timestamp) hold
    nothing of ours and are skipped.
    """

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._plans: dict[str, tuple[_Step, ...]] = {}

    def violations(self, message: Message) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        self._check(message, self._plan(message.DESCRIPTOR), (), out)
        return out[:_MAX_VIOLATIONS]

    def _plan(self, descriptor: Any) -> tuple[_Step, ...]:
        plan = self._plans.get(descriptor.full_name)
        if plan is not None:
            return plan
        self._plans[descriptor.full_name] = ()  # a recursive type sees itself as empty meanwhile
        steps = []
        for field in descriptor.fields:
            element = field.message_type.fields_by_name["value"] if _is_map(field) else field
            common = {"name": field.name, "is_map": _is_map(field), "is_repeated": _is_repeated(field)}
            if element.type == FieldDescriptor.TYPE_ENUM:
                numbers = frozenset(element.enum_type.values_by_number)
                steps.append(_Step(**common, enum=element.enum_type, enum_numbers=numbers))
            elif element.type == FieldDescriptor.TYPE_STRING:
                limit = self._limits.get(f"{descriptor.name}.{field.name}", self._limits.get(field.name))
                if limit is not None:
                    steps.append(_Step(**common, limit=limit))
            elif (
                element.type == FieldDescriptor.TYPE_MESSAGE
                and not element.message_type.full_name.startswith("google.protobuf.")
            ):
                children = self._plan(element.message_type)
                if children:
                    steps.append(_Step(**common, children=children))
        plan = self._plans[descriptor.full_name] = tuple(steps)
        return plan

    def _check(
        self, message: Message, plan: tuple[_Step, ...], prefix: _Path, out: list[FieldViolation]
    ) -> None:
        for step in plan:
            if len(out) >= _MAX_VIOLATIONS:
                return
            value = getattr(message, step.name)
            if step.is_map:
                for key in value:
                    self._element(step, value[key], (*prefix, step.name, f"[{bound(str(key), 64)}]"), out)
            elif step.is_repeated:
                # Sliced into a list first: iterating a upb container directly costs ~3x, even empty.
                items = value[:]
                if not items:
                    continue
                if step.children is None and step.enum is not None:
                    # Repeated enums (capabilities): one set operation decides for the whole list.
                    if step.enum_numbers.issuperset(items):
                        continue
                for index, item in enumerate(items):
                    self._element(step, item, (*prefix, step.name, index), out)
            elif step.children is None or message.HasField(step.name):
                self._element(step, value, (*prefix, step.name), out)

    def _element(self, step: _Step, value: Any, path: _Path, out: list[FieldViolation]) -> None:
        if step.children is not None:
            self._check(value, step.children, path, out)
        elif step.enum is not None:
            if value not in step.enum_numbers:
                known = ", ".join(v.name for v in step.enum.values)
                out.append(
                    FieldViolation(
                        _path_text(path), f"unknown {step.enum.name} value {value}; one of {known}"
                    )
                )
        elif step.limit is not None and len(value) > step.limit:
            out.append(FieldViolation(_path_text(path), f"{len(value)} characters, limit {step.limit}"))


def bound_strings(message: Message, limit: int) -> None:
    """Cut every string of `message` (at any depth, map keys and values included) to `limit`."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_map(field):
                _bound_map(getattr(message, field.name), field, limit)
            elif _is_repeated(field):
                for item in value:
                    bound_strings(item, limit)
            else:
                bound_strings(value, limit)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if _is_repeated(field):
                value[:] = [bound(item, limit) for item in value]
            elif len(value) > limit:
                setattr(message, field.name, bound(value, limit))


def _bound_map(entries: Any, field: FieldDescriptor, limit: int) -> None:
    value_field = field.message_type.fields_by_name["value"]
    key_is_string = field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
    for key in list(entries):
        item = entries[key]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            bound_strings(item, limit)
            if key_is_string and len(key) > limit:
                entries[bound(key, limit)].CopyFrom(item)
                del entries[key]
        elif key_is_string and len(key) > limit:
            del entries[key]
            entries[bound(key, limit)] = bound(item, limit) if isinstance(item, str) else item
        elif isinstance(item, str) and len(item) > limit:
            entries[key] = bound(item, limit)
