"""Metadata filters rewritten so Chroma evaluates fractional numbers exactly.

Chroma 1.5.9 compares an integer metadata value with a fractional filter number after
truncating the number to an integer (chroma-core/chroma#7491): against `n = 2`, `{"n": 2.5}`
matches, `{"n": {"$lt": 2.5}}` does not and `{"n": {"$gte": 2.5}}` does. Float metadata values
and integral filter numbers are compared exactly, against both integer and float values
(checked against real Chroma in tests/unit/test_chroma_where.py).

So every comparison with a fractional number `v` is rewritten into clauses whose result does
not depend on how Chroma treats `v` against integers. With `lo = floor(v)` and `hi = lo + 1`
(integral, hence exact), an integer `x` satisfies `x < v` exactly when `x <= lo`, and
`x > v` exactly when `x >= hi`; no integer equals `v`. The clause with `v` itself is kept
for float values and fenced by integral bounds, so whatever it yields for an integer can
no longer change the result:

    x <  v   ->  x <= lo  or  (x <  v and x < hi)         (same for <=)
    x >  v   ->  x >= hi  or  (x >  v and x > lo)         (same for >=)
    x == v   ->  x == v and x > lo and x < hi
    x != v   ->  x != v or x in [lo, hi]
    x in L   ->  x in ints(L)  or  (x in fractions(L) and x not in neighbours)
    x nin L  ->  x nin ints(L) and (x nin fractions(L) or x in neighbours)

where `neighbours` are the `lo` and `hi` of every fraction in L. The rewrites keep Chroma's
own rules for values of other types (strings and booleans never compare as numbers) and for
documents without the field (`$ne` and `$nin` match them). They stay exact once upstream
fixes the bug, and an `$in`/`$nin` list mixing integers and fractions becomes valid (a
`google.protobuf.Struct` only has doubles, so `[2.5, 3.0]` arrives as `[2.5, 3]`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from embedding_service.domain import WhereFilter

_BELOW = ("$lt", "$lte")
_ABOVE = ("$gt", "$gte")


def exact_where(where: WhereFilter) -> WhereFilter:
    """`where` with every comparison against a fractional number made exact for Chroma.

    Anything not shaped like a valid filter is returned unchanged, for Chroma's validation
    to refuse.
    """
    if not isinstance(where, Mapping) or len(where) != 1:
        return where
    ((key, value),) = where.items()
    if key in ("$and", "$or"):
        return {key: [exact_where(part) for part in value]} if isinstance(value, list) else where
    if not isinstance(key, str) or key.startswith(("$", "#")):
        return where
    if isinstance(value, Mapping):
        if len(value) != 1:
            return where
        ((operator, operand),) = value.items()
    else:
        operator, operand = "$eq", value
    rewritten = _field(key, operator, operand)
    return where if rewritten is None else rewritten


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_fraction(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and not value.is_integer()


def _field(name: str, operator: str, operand: object) -> dict[str, Any] | None:
    """The exact form of `{name: {operator: operand}}`, or None when it needs no rewrite."""

    def clause(op: str, value: object) -> dict[str, Any]:
        return {name: {op: value}}

    if operator in ("$in", "$nin"):
        return _membership(clause, operator, operand)
    if not _is_fraction(operand):
        return None
    assert isinstance(operand, float)
    lo = math.floor(operand)
    hi = lo + 1
    if operator in _BELOW:
        return {"$or": [clause("$lte", lo), {"$and": [clause(operator, operand), clause("$lt", hi)]}]}
    if operator in _ABOVE:
        return {"$or": [clause("$gte", hi), {"$and": [clause(operator, operand), clause("$gt", lo)]}]}
    if operator == "$eq":
        return {"$and": [clause("$eq", operand), clause("$gt", lo), clause("$lt", hi)]}
    if operator == "$ne":
        return {"$or": [clause("$ne", operand), clause("$in", [lo, hi])]}
    return None


def _membership(clause: Any, operator: str, operand: object) -> dict[str, Any] | None:
    if not isinstance(operand, list) or not operand:
        return None
    if not all(_is_number(v) and math.isfinite(v) for v in operand):  # type: ignore[arg-type]
        return None
    fractions = list(dict.fromkeys(v for v in operand if _is_fraction(v)))
    if not fractions:
        return None
    # Integral doubles become ints: an integral filter number is exact against both types.
    integers = list(dict.fromkeys(int(v) for v in operand if not _is_fraction(v)))
    neighbours = sorted({n for v in fractions for n in (math.floor(v), math.floor(v) + 1)})
    parts: list[dict[str, Any]]
    if operator == "$in":
        parts = [clause("$in", integers)] if integers else []
        parts.append({"$and": [clause("$in", fractions), clause("$nin", neighbours)]})
        return parts[0] if len(parts) == 1 else {"$or": parts}
    parts = [clause("$nin", integers)] if integers else []
    parts.append({"$or": [clause("$nin", fractions), clause("$in", neighbours)]})
    return parts[0] if len(parts) == 1 else {"$and": parts}
