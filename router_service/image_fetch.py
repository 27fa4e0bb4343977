"""Fetching image URLs for providers that need inline bytes, without becoming an SSRF proxy.

The router fetches nothing unless `limits.inline_image_urls` is on. When it is, a URL is
fetched under these rules, each of which closes a known hole:

* https only, no userinfo; redirects are never followed (a 3xx is a refusal), so a public
  URL cannot bounce the router to an internal one;
* the host is resolved once, every address is checked, and the connection goes to exactly
  those checked addresses (a pinned resolver), so DNS rebinding between check and connect
  has nothing to rebind; TLS still verifies the certificate against the host name;
* addresses that are not globally routable are refused: loopback, private, link-local,
  multicast, reserved, unspecified, shared (CGNAT), cloud metadata endpoints, and IPv4
  hidden inside IPv6 (mapped, 6to4, Teredo, NAT64);
* the body is capped in bytes (Content-Length checked first, then counted while reading,
  no transparent decompression) and the whole fetch in time;
* the Content-Type must be an allowed image type and the bytes must start like one.

Refusals and failures become InvalidArgumentError naming the URL's field; the message says
what rule applied, never the address a name resolved to or the remote's response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from router_service import domain as d
from router_service.validation import ALLOWED_IMAGE_TYPES
from sekha_runtime.errors import FieldViolation, InvalidArgumentError

__all__ = [
    "FetchPolicy",
    "ImageFetchError",
    "ImageFetcher",
    "ImageInliner",
    "address_refusal",
    "image_inliner_for",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata services; most are link-local or private anyway, named so the intent is explicit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CHUNK = 64 * 1024

_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda b: b.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda b: len(b) >= 12 and b[:4] == b"RIFF" and b[8:12] == b"WEBP",
}


class ImageFetchError(Exception):
    """A URL was refused or could not be fetched; `reason` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IpAddress) -> str | None:
    """Why the router must not connect to `ip`, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = address_refusal(inner)
            return f"embeds an IPv4 address that {why}" if why else None
    if ip in METADATA_ADDRESSES:
        return "is a cloud metadata address"
    checks = (
        (ip.is_unspecified, "is unspecified"),
        (ip.is_loopback, "is loopback"),
        (ip.is_link_local, "is link-local"),
        (ip.is_multicast, "is multicast"),
        (ip.is_private, "is private"),
        (ip.is_reserved, "is reserved"),
    )
    for hit, why in checks:
        if hit:
            return why
    if not ip.is_global:
        return "is not globally routable"
    return None


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch. `allowed_networks` exempts networks from the address rules: tests only."""

    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 10.0
    allowed_types: frozenset[str] = ALLOWED_IMAGE_TYPES
    allowed_networks: tuple[IpNetwork, ...] = ()

    def refusal(self, ip: IpAddress) -> str | None:
        if any(ip in network for network in self.allowed_networks):
            return None
        return address_refusal(ip)


class _PinnedResolver(AbstractResolver):
    """Answers only for the checked host, with only the checked addresses."""

    def __init__(self, host: str, addresses: Sequence[IpAddress]) -> None:
        self._host = host
        self._addresses = list(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError("host was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in self._addresses
        ]

    async def close(self) -> None:
        return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host:port (TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class ImageFetcher:
    """Fetches one image URL under a FetchPolicy; see the module docstring for the rules."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolve: Resolve = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolve
        self._ssl = ssl_context or ssl.create_default_context()
        self._accept = ", ".join(sorted(policy.allowed_types))

    async def check_url(self, url: str) -> tuple[str, int, list[IpAddress]]:
        """The host, port and the checked addresses to connect to; raises ImageFetchError."""
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ImageFetchError("must be an https URL")
        if parts.username is not None or parts.password is not None:
            raise ImageFetchError("must not carry credentials")
        host = parts.hostname
        if not host:
            raise ImageFetchError("has no host")
        try:
            port = parts.port or 443
        except ValueError:
            raise ImageFetchError("has an invalid port") from None
        try:
            literal: IpAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IpAddress] = [literal]
        else:
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    resolved = await self._resolve(host, port)
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
            except (OSError, TimeoutError, ValueError):
                raise ImageFetchError("host name could not be resolved") from None
            if not addresses:
                raise ImageFetchError("host name could not be resolved")
        for ip in addresses:
            # One bad address refuses the URL: the connection could land on any of them.
            why = self.policy.refusal(ip)
            if why is not None:
                prefix = "address" if literal is not None else "resolves to an address that"
                raise ImageFetchError(f"{prefix} {why}")
        return host, port, addresses

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """The image bytes and their mime type; raises ImageFetchError."""
        host, _port, addresses = await self.check_url(url)
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(host, addresses),
            ssl=self._ssl,
            use_dns_cache=False,
            force_close=True,
            limit=1,
        )
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        try:
            async with (
                asyncio.timeout(self.policy.timeout_s),
                aiohttp.ClientSession(
                    connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
                ) as session,
                session.get(
                    url,
                    allow_redirects=False,
                    headers={"Accept": self._accept, "Accept-Encoding": "identity"},
                ) as response,
            ):
                return await self._read(response)
        except ImageFetchError:
            raise
        except TimeoutError:
            raise ImageFetchError(f"was not fetched within {self.policy.timeout_s:g}s") from None
        except aiohttp.ClientSSLError:
            raise ImageFetchError("TLS verification of the host failed") from None
        except (aiohttp.ClientError, OSError):
            raise ImageFetchError("could not be fetched") from None

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[bytes, str]:
        if 300 <= response.status < 400:
            raise ImageFetchError("answered with a redirect; redirects are not followed")
        if response.status != 200:
            raise ImageFetchError(f"answered HTTP {response.status}")
        mime = (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if mime not in self.policy.allowed_types:
            raise ImageFetchError(f"content type must be one of {self._accept}")
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ImageFetchError("answered with a content encoding; only identity is accepted")
        limit = self.policy.max_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise ImageFetchError(f"is larger than {limit} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body.extend(chunk)
            if len(body) > limit:
                raise ImageFetchError(f"is larger than {limit} bytes")
        if not body:
            raise ImageFetchError("answered with an empty body")
        if not _MAGIC[mime](bytes(body[:16])):
            raise ImageFetchError(f"content is not a {mime} image")
        return bytes(body), mime


class ImageInliner:
    """Replaces every https image URL of a chat request with the fetched bytes, concurrently."""

    def __init__(self, fetcher: ImageFetcher) -> None:
        self._fetcher = fetcher

    async def inline(self, request: d.ChatRequest) -> d.ChatRequest:
        jobs: dict[tuple[int, int], str] = {}
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                image = part.image
                if image is None or image.data is not None or not image.url or image.url.startswith("data:"):
                    continue
                jobs[(i, j)] = image.url
        if not jobs:
            return request
        fetches = [self._fetcher.fetch(url) for url in jobs.values()]
        results = await asyncio.gather(*fetches, return_exceptions=True)
        fetched: dict[tuple[int, int], tuple[bytes, str]] = {}
        violations: list[FieldViolation] = []
        for (i, j), result in zip(jobs, results, strict=True):
            if isinstance(result, ImageFetchError):
                violations.append(FieldViolation(f"messages[{i}].parts[{j}].image.url", result.reason))
            elif isinstance(result, BaseException):
                raise result
            else:
                fetched[(i, j)] = result
        if violations:
            raise InvalidArgumentError(violations)
        messages = []
        for i, message in enumerate(request.messages):
            parts: list[d.ContentPart] = []
            for j, part in enumerate(message.parts):
                if (i, j) in fetched and part.image is not None:
                    data, mime = fetched[(i, j)]
                    image = d.ImagePart(url=None, data=data, mime_type=mime, detail=part.image.detail)
                    part = dataclasses.replace(part, image=image)
                parts.append(part)
            messages.append(dataclasses.replace(message, parts=tuple(parts)))
        return dataclasses.replace(request, messages=tuple(messages))


def image_inliner_for(
    inline_image_urls: bool, max_image_bytes: int, timeout_s: float, fetcher: ImageFetcher | None = None
) -> ImageInliner | None:
    """The inliner the limits config asks for (None: the router never fetches a URL)."""
    if not inline_image_urls:
        return None
    return ImageInliner(fetcher or ImageFetcher(FetchPolicy(max_bytes=max_image_bytes, timeout_s=timeout_s)))
