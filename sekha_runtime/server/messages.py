"""Checks and bounds that hold for every protobuf message, written once over the descriptors.

* `unknown_enum_violations`: proto3 enums are open, so a caller can send any number (`detail = 99`)
  and protobuf keeps it; every enum field of a request, at any depth, must hold a declared value.
* `long_string_violations`: identifiers a service may echo in an error (a provider id, a
  collection name) are capped by field name, so an error never carries a megabyte of input.
* `bound_strings`: shortens every string of a message in place (the details of an error status).

Violations name the field by its proto path (`messages[0].parts[1].image.detail`) and never
repeat the offending value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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


def _values(message: Message, field: FieldDescriptor, value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of each element a set field holds: one, each of a list, each of a map."""
    if _is_map(field):
        for key in value:
            yield f"{path}[{bound(str(key), 64)}]", value[key]
    elif _is_repeated(field):
        for index, item in enumerate(value):
            yield f"{path}[{index}]", item
    else:
        yield path, value


def _element_type(field: FieldDescriptor) -> FieldDescriptor:
    """The descriptor of what one element is: a map's value field, or the field itself."""
    return field.message_type.fields_by_name["value"] if _is_map(field) else field


def _walk(message: Message, prefix: str = "") -> Iterator[tuple[FieldDescriptor, str, Any]]:
    """Every set scalar element of `message` at any depth: (its element descriptor, path, value)."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        element = _element_type(field)
        for item_path, item in _values(message, field, value, path):
            if element.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _walk(item, f"{item_path}.")
            else:
                yield element, item_path, item


def unknown_enum_violations(message: Message) -> list[FieldViolation]:
    """A violation for every enum field (at any depth) holding a number its enum does not declare."""
    violations: list[FieldViolation] = []
    for field, path, value in _walk(message):
        if field.type != FieldDescriptor.TYPE_ENUM or value in field.enum_type.values_by_number:
            continue
        known = ", ".join(v.name for v in field.enum_type.values)
        violations.append(
            FieldViolation(path, f"unknown {field.enum_type.name} value {value}; one of {known}")
        )
        if len(violations) >= _MAX_VIOLATIONS:
            break
    return violations


def long_string_violations(message: Message, limits: Mapping[str, int]) -> list[FieldViolation]:
    """A violation for every string field (at any depth) that is longer than its limit. `limits` is
    keyed by `Message.field` (`GetMigrationRequest.id`) or by a field name alone (`provider_id`,
    wherever it occurs). The value is never repeated: it is what is too long to echo."""
    violations: list[FieldViolation] = []
    for field, path, value in _walk(message):
        limit = limits.get(f"{field.containing_type.name}.{field.name}", limits.get(field.name))
        if limit is None or field.type != FieldDescriptor.TYPE_STRING or len(value) <= limit:
            continue
        violations.append(FieldViolation(path, f"{len(value)} characters, limit {limit}"))
        if len(violations) >= _MAX_VIOLATIONS:
            break
    return violations


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
