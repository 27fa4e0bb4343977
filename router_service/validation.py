"""Request limits, checked before any routing or provider call.

Each violation names the request field by its proto path, so a caller sees
`messages[3].parts[0].image.data: 6291456 bytes, limit 5242880` and nothing
reaches a provider.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from router_service import domain as d
from sekha_runtime.errors import FieldViolation, InvalidArgumentError

ALLOWED_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# OpenAI's rule for function names; the other providers accept at least these.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:(?P<mime>[a-z]+/[a-z0-9.+-]+);base64,(?P<data>[A-Za-z0-9+/]*={0,2})$")


@dataclass(frozen=True)
class Limits:
    """The limits section of the router config, as the checks need it."""

    max_messages: int = 256
    max_message_chars: int = 200_000
    max_images: int = 8
    max_image_bytes: int = 5 * 1024 * 1024
    max_output_tokens: int = 32_768
    max_embed_inputs: int = 2048
    max_input_chars: int = 100_000
    max_metadata_entries: int = 64
    max_metadata_key_chars: int = 256
    max_metadata_value_chars: int = 1024
    max_request_id_chars: int = 128
    max_tools: int = 128
    max_tool_schema_chars: int = 65_536
    max_tool_description_chars: int = 8192
    max_response_schema_chars: int = 65_536
    max_tool_call_argument_chars: int = 200_000
    max_stop_sequences: int = 16
    max_stop_sequence_chars: int = 256
    max_user_chars: int = 256


def _check_metadata(
    metadata: dict[str, str], request_id: str, limits: Limits, out: list[FieldViolation]
) -> None:
    if len(metadata) > limits.max_metadata_entries:
        out.append(
            FieldViolation("metadata", f"{len(metadata)} entries, limit {limits.max_metadata_entries}")
        )
    for key, value in metadata.items():
        if len(out) >= 20:
            break
        if len(key) > limits.max_metadata_key_chars:
            # The key itself is what is too long: the path cannot name it.
            out.append(
                FieldViolation(
                    "metadata", f"a key of {len(key)} characters, limit {limits.max_metadata_key_chars}"
                )
            )
        elif len(value) > limits.max_metadata_value_chars:
            out.append(
                FieldViolation(
                    f"metadata[{key}]", f"{len(value)} characters, limit {limits.max_metadata_value_chars}"
                )
            )
    if len(request_id) > limits.max_request_id_chars:
        out.append(
            FieldViolation("request_id", f"{len(request_id)} characters, limit {limits.max_request_id_chars}")
        )


def _check_image(image: d.ImagePart, path: str, limits: Limits, out: list[FieldViolation]) -> int:
    """Validate one image; return its size in bytes when inline (0 for a URL)."""
    if image.data is not None:
        if image.mime_type not in ALLOWED_IMAGE_TYPES:
            out.append(
                FieldViolation(
                    f"{path}.mime_type", f"must be one of {', '.join(sorted(ALLOWED_IMAGE_TYPES))}"
                )
            )
        if not image.data:
            out.append(FieldViolation(f"{path}.data", "is empty"))
        elif len(image.data) > limits.max_image_bytes:
            out.append(
                FieldViolation(f"{path}.data", f"{len(image.data)} bytes, limit {limits.max_image_bytes}")
            )
        return len(image.data)
    url = image.url or ""
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None or match["mime"] not in ALLOWED_IMAGE_TYPES:
            out.append(FieldViolation(f"{path}.url", "data URL must be data:<image mime>;base64,<base64>"))
            return 0
        try:
            size = len(base64.b64decode(match["data"], validate=True))
        except binascii.Error:
            out.append(FieldViolation(f"{path}.url", "data URL is not valid base64"))
            return 0
        if size > limits.max_image_bytes:
            out.append(FieldViolation(f"{path}.url", f"{size} bytes, limit {limits.max_image_bytes}"))
        return size
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        out.append(FieldViolation(f"{path}.url", "must be an https URL or a base64 data URL"))
    elif len(url) > 8192:
        out.append(FieldViolation(f"{path}.url", "longer than 8192 characters"))
    return 0


def check_chat(request: d.ChatRequest, limits: Limits) -> None:
    """Raise InvalidArgumentError listing every limit the chat request breaks."""
    out: list[FieldViolation] = []
    if len(request.messages) > limits.max_messages:
        out.append(
            FieldViolation("messages", f"{len(request.messages)} messages, limit {limits.max_messages}")
        )
    images = 0
    for i, message in enumerate(request.messages):
        chars = 0
        for k, call in enumerate(message.tool_calls):
            if len(call.arguments) > limits.max_tool_call_argument_chars:
                out.append(
                    FieldViolation(
                        f"messages[{i}].tool_calls[{k}].arguments",
                        f"{len(call.arguments)} characters, limit {limits.max_tool_call_argument_chars}",
                    )
                )
            chars += len(call.arguments)
        for j, part in enumerate(message.parts):
            if part.text is not None:
                chars += len(part.text)
            elif part.image is not None:
                images += 1
                _check_image(part.image, f"messages[{i}].parts[{j}].image", limits, out)
        if chars > limits.max_message_chars:
            out.append(
                FieldViolation(f"messages[{i}]", f"{chars} characters, limit {limits.max_message_chars}")
            )
    if images > limits.max_images:
        out.append(FieldViolation("messages", f"{images} images, limit {limits.max_images}"))
    max_tokens = request.generation.max_tokens
    if max_tokens is not None and max_tokens > limits.max_output_tokens:
        out.append(FieldViolation("generation.max_tokens", f"{max_tokens}, limit {limits.max_output_tokens}"))
    _check_stop_sequences(request.generation.stop_sequences, limits, out)
    _check_tools(request, limits, out)
    schema = request.response_format.schema
    if schema is not None:
        size = _json_chars(schema)
        if size > limits.max_response_schema_chars:
            out.append(
                FieldViolation(
                    "response_format.json_schema.schema",
                    f"{size} characters as JSON, limit {limits.max_response_schema_chars}",
                )
            )
    if len(request.user) > limits.max_user_chars:
        out.append(FieldViolation("user", f"{len(request.user)} characters, limit {limits.max_user_chars}"))
    _check_metadata(request.metadata, request.request_id, limits, out)
    if out:
        raise InvalidArgumentError(out)


def _json_chars(value: object) -> int:
    """The size of a JSON value as the provider receives it (compact, UTF-8 kept)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _check_stop_sequences(stops: tuple[str, ...], limits: Limits, out: list[FieldViolation]) -> None:
    if len(stops) > limits.max_stop_sequences:
        out.append(
            FieldViolation(
                "generation.stop_sequences", f"{len(stops)} sequences, limit {limits.max_stop_sequences}"
            )
        )
    for i, stop in enumerate(stops):
        if not stop:
            out.append(FieldViolation(f"generation.stop_sequences[{i}]", "is empty"))
        elif len(stop) > limits.max_stop_sequence_chars:
            out.append(
                FieldViolation(
                    f"generation.stop_sequences[{i}]",
                    f"{len(stop)} characters, limit {limits.max_stop_sequence_chars}",
                )
            )


def _check_tools(request: d.ChatRequest, limits: Limits, out: list[FieldViolation]) -> None:
    if len(request.tools) > limits.max_tools:
        out.append(FieldViolation("tools", f"{len(request.tools)} tools, limit {limits.max_tools}"))
        return  # the per-tool sizes of a list that is refused anyway add nothing
    for i, tool in enumerate(request.tools):
        if not _TOOL_NAME.match(tool.name):
            out.append(FieldViolation(f"tools[{i}].name", "use 1 to 64 letters, digits, '_' or '-'"))
        if len(tool.description) > limits.max_tool_description_chars:
            out.append(
                FieldViolation(
                    f"tools[{i}].description",
                    f"{len(tool.description)} characters, limit {limits.max_tool_description_chars}",
                )
            )
        if tool.parameters is not None:
            size = _json_chars(tool.parameters)
            if size > limits.max_tool_schema_chars:
                out.append(
                    FieldViolation(
                        f"tools[{i}].parameters",
                        f"{size} characters as JSON, limit {limits.max_tool_schema_chars}",
                    )
                )


def check_embed(request: d.EmbedRequest, limits: Limits) -> None:
    """Raise InvalidArgumentError listing every limit the embed request breaks."""
    out: list[FieldViolation] = []
    if len(request.inputs) > limits.max_embed_inputs:
        out.append(FieldViolation("inputs", f"{len(request.inputs)} inputs, limit {limits.max_embed_inputs}"))
    for i, text in enumerate(request.inputs):
        if not text:
            out.append(FieldViolation(f"inputs[{i}]", "is empty"))
        elif len(text) > limits.max_input_chars:
            out.append(
                FieldViolation(f"inputs[{i}]", f"{len(text)} characters, limit {limits.max_input_chars}")
            )
        if len(out) >= 20:  # enough to fix the request; a huge list of violations helps nobody
            break
    _check_metadata(request.metadata, request.request_id, limits, out)
    if out:
        raise InvalidArgumentError(out)
