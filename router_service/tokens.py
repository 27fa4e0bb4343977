"""Token estimates: how many tokens a request will use, counted before routing.

Token estimates are made once per request, before routing, with LiteLLM's token counter (or the
same counts computed with tiktoken directly, `TiktokenCounter`). The count is an estimate for the
cost ceiling and the context-window check, not a bill: the real cost comes from the usage the
provider reports (`router_service.pricing`).
"""

from __future__ import annotations

import binascii
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from router_service.domain import ChatMessage, ChatRequest

__all__ = [
    "IMAGE_TOKENS_HIGH_DETAIL",
    "IMAGE_TOKENS_LOW_DETAIL",
    "TiktokenCounter",
    "TokenEstimate",
    "TokenEstimator",
    "load_encoding",
]

# Images are not tokenised locally: LiteLLM would fetch an image URL to learn its size, and
# inline bytes would have to be decoded; either is too slow and the first is network I/O on the
# request path. These fixed figures are OpenAI's published image costs: 85 tokens for a
# low-detail image, and 765 for a 1024x1024 image at high detail (4 tiles x 170 + 85). "auto"
# counts as high, so the estimate errs on the side of the caller's cost ceiling.
IMAGE_TOKENS_LOW_DETAIL = 85
IMAGE_TOKENS_HIGH_DETAIL = 765

# A model whose tokenizer is tiktoken's own (or needs no download) is counted with its own
# tokenizer; these stand-ins replace tokenizers LiteLLM would download from the Hugging Face hub
# (llama, cohere), because the router never downloads anything at run time.
_DEFAULT_TOKENIZER_MODEL = "gpt-4o"
_OFFLINE_FALLBACK_TOKENIZER_MODEL = "gpt-3.5-turbo"  # tiktoken cl100k_base, bundled with LiteLLM

TokenCounter = Callable[..., int]


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    input_tokens: int
    output_tokens: int


class TokenEstimator:
    """Counts a request's tokens once, before routing, with LiteLLM's token counter.

    The tokenizer depends on the model family, but one request is counted once (with the
    tokenizer of the model the caller names, typically the first candidate for the task), not
    once per candidate: counting is the most expensive step before the provider call, and the
    families differ by a few percent, well inside an estimate's error.

    `counter` defaults to `litellm.token_counter`; it is injectable so a caller can wrap it.
    """

    def __init__(
        self,
        default_max_tokens: int = 512,
        *,
        counter: TokenCounter | None = None,
        default_model: str = _DEFAULT_TOKENIZER_MODEL,
    ) -> None:
        self._default_max_tokens = default_max_tokens
        self._counter = counter
        self._default_model = default_model
        self._tokenizer_model: dict[str, str] = {}

    def output_tokens(self, max_tokens: int | None) -> int:
        """Estimated output: the request's max_tokens, else the configured default."""
        return max_tokens if max_tokens else self._default_max_tokens

    def tokenizer_model(self, litellm_model: str | None) -> str:
        """The model name whose tokenizer counts for `litellm_model` (cached per model)."""
        model = litellm_model or self._default_model
        chosen = self._tokenizer_model.get(model)
        if chosen is None:
            chosen = model if _tokenizer_is_offline(model) else _OFFLINE_FALLBACK_TOKENIZER_MODEL
            self._tokenizer_model[model] = chosen
        return chosen

    def count_messages(self, messages: Sequence[ChatMessage], litellm_model: str | None = None) -> int:
        """Input tokens of a conversation: one token-counter call, plus a fixed figure per image."""
        wire = [{"role": str(m.role), "content": m.text} for m in messages]
        count = int(self._count(model=self.tokenizer_model(litellm_model), messages=wire))
        for message in messages:
            for part in message.parts:
                if part.image is not None:
                    count += (
                        IMAGE_TOKENS_LOW_DETAIL if part.image.detail == "low" else IMAGE_TOKENS_HIGH_DETAIL
                    )
        return count

    def count_text(self, text: str, litellm_model: str | None = None) -> int:
        """Tokens of one text (e.g. a reply whose usage the provider did not report)."""
        if not text:
            return 0
        return int(self._count(model=self.tokenizer_model(litellm_model), text=text))

    def count_texts(self, texts: Sequence[str], litellm_model: str | None = None) -> int:
        """Input tokens of embedding inputs (one token-counter call for all of them)."""
        if not texts:
            return 0
        return int(self._count(model=self.tokenizer_model(litellm_model), text=list(texts)))

    def estimate_chat(self, request: ChatRequest, litellm_model: str | None = None) -> TokenEstimate:
        return TokenEstimate(
            input_tokens=self.count_messages(request.messages, litellm_model),
            output_tokens=self.output_tokens(request.generation.max_tokens),
        )

    def estimate_embed(self, inputs: Sequence[str], litellm_model: str | None = None) -> TokenEstimate:
        return TokenEstimate(input_tokens=self.count_texts(inputs, litellm_model), output_tokens=0)

    def preload(self) -> None:
        """Load the tokenizer every request counts with (its encoding takes 0.4-1.8 s to load).

        Loading is synchronous: done lazily by the first request, it would stall the event loop
        and every call on it, health checks included. The server calls this (in a thread) before
        health says SERVING.
        """
        self._count(model=self.tokenizer_model(None), text="preload")

    def _count(self, **kwargs: Any) -> int:
        counter = self._counter
        if counter is None:
            counter = self._counter = _default_counter()
        return counter(**kwargs)


def _default_counter() -> TokenCounter:
    """LiteLLM's counter, in front of it the same counts for our tokenizers without importing LiteLLM."""
    lean = TiktokenCounter()

    def count(*, model: str, **kwargs: Any) -> int:
        if lean.supports(model):
            return lean(model=model, **kwargs)
        from router_service.litellm_import import import_litellm

        return int(import_litellm().token_counter(model=model, **kwargs))

    return count


class TiktokenCounter:
    """``litellm.token_counter`` for the two tokenizers the router counts with, without LiteLLM.

    Importing LiteLLM costs about 130 MB of memory and 1.5 s of start-up, and its counter spends
    three times longer per request than the encoding itself. This computes the same numbers:
    the same tiktoken encodings (loaded offline from the copy bundled with LiteLLM, as LiteLLM
    does), the same 1024-character chunks, 3 tokens per message plus its role and content, and
    3 to prime the reply.
    """

    ENCODINGS: Mapping[str, str] = {
        _DEFAULT_TOKENIZER_MODEL: "o200k_base",
        _OFFLINE_FALLBACK_TOKENIZER_MODEL: "cl100k_base",
    }
    CHUNK_CHARS = 1024  # LiteLLM's TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS: equal chunks give equal counts

    def __init__(self) -> None:
        self._encoders: dict[str, Callable[[str], list[int]]] = {}
        # Roles are a handful of short words counted for every message of every request.
        self._role_tokens: dict[tuple[str, str], int] = {}

    def supports(self, model: str) -> bool:
        return model in self.ENCODINGS

    def _encoder(self, model: str) -> Callable[[str], list[int]]:
        encoder = self._encoders.get(model)
        if encoder is None:
            encoder = self._encoders[model] = _fast_encoder(load_encoding(self.ENCODINGS[model]))
        return encoder

    def count_text(self, model: str, text: str) -> int:
        encode, step = self._encoder(model), self.CHUNK_CHARS
        if len(text) <= step:
            return len(encode(text))
        return sum(len(encode(text[start : start + step])) for start in range(0, len(text), step))

    def _count_role(self, model: str, role: str) -> int:
        key = (model, role)
        count = self._role_tokens.get(key)
        if count is None:
            count = self.count_text(model, role)
            if len(self._role_tokens) < 64:  # roles come from an enum; anything else is not kept
                self._role_tokens[key] = count
        return count

    def __call__(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]] | None = None,
        text: str | Sequence[str] | None = None,
    ) -> int:
        if text is not None:
            return self.count_text(model, text if isinstance(text, str) else "".join(text))
        total = 3  # every reply is primed with <|start|>assistant<|message|>
        for message in messages or ():
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    total += (
                        self._count_role(model, value) if key == "role" else self.count_text(model, value)
                    )
        return total


def _fast_encoder(encoding: Any) -> Callable[[str], list[int]]:
    """`encoding.encode_ordinary` without its Python wrapper (a third of the time for a short text);
    the wrapper's fallback for text with lone surrogates stays."""
    core = getattr(encoding, "_core_bpe", None)
    if core is None:  # another tiktoken version: the public method
        return cast(Callable[[str], list[int]], encoding.encode_ordinary)
    core_encode = core.encode_ordinary
    public_encode = encoding.encode_ordinary

    def encode(text: str) -> list[int]:
        try:
            return cast(list[int], core_encode(text))
        except UnicodeEncodeError:
            return cast(list[int], public_encode(text))

    return encode


_encoding_lock = threading.Lock()


def load_encoding(name: str) -> Any:
    """tiktoken's encoding `name`, built once per process and shared through tiktoken's registry.

    Built like `tiktoken.get_encoding` (same constructor, same bundled file, same hash check),
    but the rank file is parsed about twice as fast (`_read_ranks`): o200k_base takes about
    0.3 s instead of 0.47. Most of what remains is tiktoken's Rust constructor, which holds the
    GIL throughout, so building in a thread alongside the start-up imports gained nothing
    measurable (issue 19). Concurrent callers wait for the one that builds it.
    """
    import tiktoken
    from tiktoken.registry import ENCODINGS

    encoding = ENCODINGS.get(name)
    if encoding is not None:
        return encoding
    with _encoding_lock:
        encoding = ENCODINGS.get(name)
        if encoding is None:
            _use_bundled_tiktoken_files()
            arguments = _encoding_arguments(name)
            if arguments is None:
                return tiktoken.get_encoding(name)
            encoding = ENCODINGS.setdefault(name, tiktoken.Encoding(**arguments))
        return encoding


def _encoding_arguments(name: str) -> dict[str, Any] | None:
    """tiktoken_ext.openai_public's constructor for `name`, run with `_read_ranks` as its loader.

    A copy of the constructor function with the faster loader in its globals: tiktoken's own
    module is left alone. None when the constructor is not one this applies to (tiktoken's
    plain path is taken then).
    """
    from tiktoken_ext import openai_public

    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if (
        not isinstance(constructor, types.FunctionType)
        or constructor.__closure__ is not None
        or "load_tiktoken_bpe" not in constructor.__code__.co_names
    ):
        return None
    namespace = dict(constructor.__globals__, load_tiktoken_bpe=_read_ranks)
    arguments: dict[str, Any] = types.FunctionType(constructor.__code__, namespace)()
    return arguments


def _read_ranks(tiktoken_bpe_file: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """`tiktoken.load.load_tiktoken_bpe`, the same dict built from whole-file splits.

    The file ("<base64 token> <rank>" per line) is read through tiktoken's cache with its
    hash check; decoding all tokens with one `map` instead of a Python loop per line halves
    the time (0.27 -> 0.12 s for o200k_base).
    """
    from tiktoken.load import read_file_cached

    fields = read_file_cached(tiktoken_bpe_file, expected_hash).split()
    if len(fields) % 2:
        raise ValueError(f"{tiktoken_bpe_file}: not one token and one rank per line")
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def _use_bundled_tiktoken_files() -> None:
    """Point tiktoken at the encodings LiteLLM ships (what LiteLLM itself does on import)."""
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.find_spec("litellm")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return
    bundled = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    directory = os.environ.get("CUSTOM_TIKTOKEN_CACHE_DIR") or str(bundled)
    if os.environ.get("TIKTOKEN_CACHE_DIR") != directory:
        os.environ["TIKTOKEN_CACHE_DIR"] = directory


def _tokenizer_is_offline(model: str) -> bool:
    """Whether LiteLLM counts this model without downloading a tokenizer."""
    if model in TiktokenCounter.ENCODINGS:
        return True
    from router_service.litellm_import import import_litellm

    kind: str | None
    try:
        import_litellm()
        from litellm.utils import huggingface_tokenizer_kind  # present in the pinned LiteLLM

        kind = huggingface_tokenizer_kind(model)
    except Exception:
        lowered = model.lower()
        downloads = "llama" in lowered or "replicate" in lowered or "command-r" in lowered
        kind = "download" if downloads else None
    # tiktoken (None) ships with LiteLLM, and so does the Anthropic tokenizer; the others are
    # fetched from the Hugging Face hub on first use.
    return kind is None or kind == "anthropic"
