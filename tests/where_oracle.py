"""Metadata filters evaluated in plain Python, as Chroma should evaluate them, for the tests.

Numbers (ints and floats, never booleans) compare as numbers; any other value never equals a
number and never satisfies `$lt`/`$gt`-style comparisons; `$ne` and `$nin` match documents
without the field. `VALUES` holds a value set on which Chroma's truncation of fractional
filter numbers (chroma-core/chroma#7491) changes results, and `FILTERS` the filters to try.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Integers, floats (integral and not), a numeric-looking string, booleans; MISSING has no field.
VALUES: dict[str, object] = {
    "i-3": -3,
    "i-2": -2,
    "i-1": -1,
    "i0": 0,
    "i1": 1,
    "i2": 2,
    "i3": 3,
    "i4": 4,
    "f-2.5": -2.5,
    "f-2.0": -2.0,
    "f-0.5": -0.5,
    "f0.5": 0.5,
    "f1.999": 1.999,
    "f2.0": 2.0,
    "f2.5": 2.5,
    "f2.7": 2.7,
    "f3.0": 3.0,
    "f3.25": 3.25,
    "s2.5": "2.5",
    "btrue": True,
    "bfalse": False,
}
MISSING = "missing"
ALL_IDS = sorted([*VALUES, MISSING])

FRACTIONS = (2.5, -2.5, 0.5, -0.5, 3.25, 1.75)
COMPARISONS = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte")
LISTS: tuple[list[float | int], ...] = ([2.5], [2.5, 3], [-0.5, 0.5, 7], [1.75, -2.5, 2])
NESTED: tuple[dict[str, Any], ...] = (
    {"$and": [{"n": {"$gt": 1.5}}, {"n": {"$lt": 3.5}}]},
    {"$or": [{"n": {"$lte": -0.5}}, {"n": {"$gte": 2.5}}]},
    {"$and": [{"n": {"$ne": 2.5}}, {"m": 1}]},
)


def filters(fractions: tuple[float, ...] = FRACTIONS) -> list[dict[str, Any]]:
    """Every operator with fractional numbers: shorthand, comparisons, lists, nested."""
    found: list[dict[str, Any]] = [{"n": value} for value in fractions]  # the $eq shorthand
    found += [{"n": {op: value}} for op in COMPARISONS for value in fractions]
    found += [{"n": {op: values}} for op in ("$in", "$nin") for values in LISTS]
    return found + list(NESTED)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(value: object, op: str, operand: Any) -> bool:
    present = value is not None
    if op in ("$in", "$nin"):
        found = _number(value) and any(value == item for item in operand)
        return found if op == "$in" else not found
    if op == "$eq":
        return present and _number(value) and value == operand
    if op == "$ne":
        return not (present and _number(value) and value == operand)
    if not _number(value):
        return False
    assert isinstance(value, int | float)
    return {
        "$lt": value < operand,
        "$lte": value <= operand,
        "$gt": value > operand,
        "$gte": value >= operand,
    }[op]


def matches(metadata: Mapping[str, object], where: Mapping[str, Any]) -> bool:
    """Whether a document with `metadata` matches `where`."""
    ((key, value),) = where.items()
    if key == "$and":
        return all(matches(metadata, part) for part in value)
    if key == "$or":
        return any(matches(metadata, part) for part in value)
    ((op, operand),) = value.items() if isinstance(value, Mapping) else (("$eq", value),)
    return _compare(metadata.get(key), op, operand)


def metadata_of(doc_id: str) -> dict[str, object]:
    """The metadata of document `doc_id` of the test set."""
    return {"m": 1} if doc_id == MISSING else {"n": VALUES[doc_id], "m": 1}


def expected(where: Mapping[str, Any]) -> list[str]:
    """The sorted ids of the test set that match `where`."""
    return sorted(doc_id for doc_id in ALL_IDS if matches(metadata_of(doc_id), where))
