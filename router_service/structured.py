"""Structured output: is a requested JSON Schema usable, and does an answer conform to it?

The router checks every answer to a JSON response format itself, with a real validator
(`jsonschema`, Draft 2020-12), whatever the provider promised: a provider's "strict" mode is
a generation constraint, not a guarantee the router can pass on. The verdict names where and
which rule failed (`$.age: minimum`), never the answer's content, since it ends up in logs
and responses.

Schemas are compiled once per distinct schema (by its canonical JSON) and kept in a small
bounded cache: agents send the same schema with every request.

`jsonschema` (with `referencing` and the bundled meta-schemas, about 45 ms) is imported by the
first request that names a JSON schema, not when the router starts: most deployments never
send one, and start-up is on the clock (issue 19).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from router_service.domain import Conformance, ResponseFormat, ResponseFormatType

__all__ = ["check_conformance", "schema_problem"]

_CACHE_SIZE = 256
_validators: OrderedDict[str, Any] = OrderedDict()

CONFORMS = Conformance(conforms=True)
NOT_JSON = Conformance(conforms=False, reason="not JSON")
NOT_AN_OBJECT = Conformance(conforms=False, reason="not a JSON object")


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a usable JSON Schema (Draft 2020-12), or None when it is."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path if exc.path else "$"
        return f"not a valid JSON Schema: {where}: {exc.validator} rule of the meta-schema"
    return None


def _validator(schema: dict[str, Any]) -> Any:
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    validator = _validators.get(key)
    if validator is None:
        from jsonschema import Draft202012Validator

        validator = Draft202012Validator(schema)
        _validators[key] = validator
        if len(_validators) > _CACHE_SIZE:
            _validators.popitem(last=False)
    else:
        _validators.move_to_end(key)
    return validator


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's parser accepts NaN and Infinity


def check_conformance(response_format: ResponseFormat, text: str) -> Conformance | None:
    """The answer's text checked against the format; None for a text format (nothing to check).

    A JSON object format needs a JSON object; a JSON schema needs JSON valid against it. The
    text is parsed as it is: an answer wrapped in a Markdown code fence does not conform.
    """
    if response_format.type is ResponseFormatType.TEXT:
        return None
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return NOT_JSON
    if response_format.type is ResponseFormatType.JSON_OBJECT:
        return CONFORMS if isinstance(value, dict) else NOT_AN_OBJECT
    from jsonschema.exceptions import best_match

    error = best_match(_validator(response_format.schema or {}).iter_errors(value))
    if error is None:
        return CONFORMS
    return Conformance(conforms=False, reason=f"{error.json_path}: {error.validator}")
