"""Request validation and page tokens; every refusal names the request field it is about."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence

from embedding_service.config import DefaultsConfig
from embedding_service.domain import DocumentIn, WhereFilter
from embedding_service.store import is_valid_where
from sekha_runtime.errors import FieldViolation, InvalidArgumentError

BASE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{1,50}$")
# Chroma reserves these key prefixes for its own document/embedding fields and filter operators.
_RESERVED_KEY_PREFIXES = ("chroma:", "#", "$")


def invalid(field: str, description: str) -> InvalidArgumentError:
    """An InvalidArgumentError for one field."""
    return InvalidArgumentError(FieldViolation(field, description))


def check_base(base: str, field: str = "base") -> None:
    """A base name: lowercase letters, digits, `_` and `-`, 2 to 51 characters, starting alphanumeric."""
    if not BASE_NAME.fullmatch(base or ""):
        raise invalid(
            field, "must be 2-51 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )


def check_model(model: str, field: str) -> None:
    """A model name or `provider_id/model` key."""
    if not model or not model.strip():
        raise invalid(field, "must not be empty")
    if len(model) > 256 or any(ch.isspace() for ch in model):
        raise invalid(field, "must be a model name without whitespace, at most 256 characters")


def check_ids(ids: Sequence[str], field: str, limits: DefaultsConfig) -> None:
    """Non-empty ids within the length limit, at most max_documents_per_request of them."""
    if len(ids) > limits.max_documents_per_request:
        raise invalid(field, f"at most {limits.max_documents_per_request} ids per request")
    violations = [
        FieldViolation(f"{field}[{index}]", _id_problem(doc_id, limits))
        for index, doc_id in enumerate(ids)
        if _id_problem(doc_id, limits)
    ]
    if violations:
        raise InvalidArgumentError(violations[:20])


def _id_problem(doc_id: str, limits: DefaultsConfig) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        return "must not be empty"
    if len(doc_id) > limits.max_id_chars:
        return f"must be at most {limits.max_id_chars} characters"
    return ""


def check_documents(documents: Sequence[DocumentIn], limits: DefaultsConfig) -> None:
    """Ids unique and valid, texts non-empty and within limits, metadata of Chroma's scalar types."""
    if not documents:
        raise invalid("documents", "must not be empty")
    if len(documents) > limits.max_documents_per_request:
        raise invalid("documents", f"at most {limits.max_documents_per_request} documents per request")
    violations: list[FieldViolation] = []
    first_index: dict[str, int] = {}
    for index, document in enumerate(documents):
        where = f"documents[{index}]"
        problem = _id_problem(document.id, limits)
        if problem:
            violations.append(FieldViolation(f"{where}.id", problem))
        elif document.id in first_index:
            violations.append(
                FieldViolation(f"{where}.id", f"duplicates documents[{first_index[document.id]}].id")
            )
        else:
            first_index[document.id] = index
        if not isinstance(document.text, str) or not document.text.strip():
            violations.append(FieldViolation(f"{where}.text", "must not be empty"))
        elif len(document.text) > limits.max_text_chars:
            violations.append(
                FieldViolation(f"{where}.text", f"must be at most {limits.max_text_chars} characters")
            )
        violations.extend(_metadata_problems(document.metadata, f"{where}.metadata", limits))
        if len(violations) >= 20:
            break
    if violations:
        raise InvalidArgumentError(violations[:20])


def _metadata_problems(
    metadata: Mapping[str, object], field: str, limits: DefaultsConfig
) -> list[FieldViolation]:
    if len(metadata) > limits.max_metadata_keys:
        return [FieldViolation(field, f"at most {limits.max_metadata_keys} keys")]
    problems: list[FieldViolation] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or key.startswith(_RESERVED_KEY_PREFIXES) or len(key) > 256:
            problems.append(
                FieldViolation(
                    field, "keys must be 1-256 characters and not start with 'chroma:', '#' or '$'"
                )
            )
        elif not isinstance(value, str | int | float | bool):
            problems.append(FieldViolation(f"{field}[{key}]", "must be a string, integer, float or boolean"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(FieldViolation(f"{field}[{key}]", "must be a finite number"))
        elif isinstance(value, str) and len(value) > limits.max_metadata_value_chars:
            limit = limits.max_metadata_value_chars
            problems.append(FieldViolation(f"{field}[{key}]", f"must be at most {limit} characters"))
    return problems


def check_where(where: WhereFilter | None, field: str = "metadata_filter") -> None:
    """A Chroma `where` filter, or nothing."""
    if where and not is_valid_where(where):
        raise invalid(field, "is not a valid Chroma where filter")


def check_weights(weights: Mapping[str, float], field: str = "collection_weights") -> None:
    """Finite, non-negative weights."""
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise invalid(f"{field}[{name}]", "must be a finite number >= 0")


def resolve_page_size(requested: int, limits: DefaultsConfig, field: str = "page_size") -> int:
    """0 means the default; larger than the maximum is coerced down (AIP-158)."""
    if requested < 0:
        raise invalid(field, "must not be negative")
    if requested == 0:
        return limits.page_size
    return min(requested, limits.max_page_size)


def encode_page_token(kind: str, scope: str, offset: int) -> str:
    """An opaque token for the page starting at `offset` of `scope` (a collection or a base)."""
    raw = json.dumps({"k": kind, "s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, kind: str, scope: str, field: str = "page_token") -> int:
    """The offset in a token made by `encode_page_token` for the same kind and scope; 0 for ''."""
    return decode_page_position(token, kind, [scope], field)[1]


def decode_page_position(
    token: str, kind: str, scopes: Sequence[str], field: str = "page_token"
) -> tuple[int, int]:
    """(index in `scopes`, offset) of a token made by `encode_page_token` for one of `scopes`;
    (0, 0) for ''."""
    if not token:
        return 0, 0
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise invalid(field, "is not a token returned by this service") from None
    if (
        not isinstance(payload, dict)
        or payload.get("k") != kind
        or payload.get("s") not in scopes
        or not isinstance(payload.get("o"), int)
        or isinstance(payload.get("o"), bool)
        or payload["o"] < 0
    ):
        raise invalid(field, "does not belong to this request")
    return list(scopes).index(payload["s"]), int(payload["o"])
