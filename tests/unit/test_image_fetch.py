"""The image URL fetcher: the address policy, and real fetches from a local HTTPS server.

The server listens on 127.0.0.1 with a throwaway certificate. Loopback is refused by the
default policy (tested first); the size, time, redirect and type caps are tested with an
allow-list override for 127.0.0.1/32 that exists only in these tests.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from router_service import domain as d
from router_service.image_fetch import (
    FetchPolicy,
    ImageFetcher,
    ImageFetchError,
    ImageInliner,
    address_refusal,
)
from sekha_runtime.errors import InvalidArgumentError
from testkit.certs import CertificateAuthority

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)
TEST_HOST = "img.sekha.test"  # resolvable only through the test's resolver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.192",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "64:ff9b::a00:1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_metadata_addresses_are_named() -> None:
    assert address_refusal(ipaddress.ip_address("169.254.169.254")) == "is a cloud metadata address"
    assert address_refusal(ipaddress.ip_address("fd00:ec2::254")) == "is a cloud metadata address"


class Site:
    """A local HTTPS server whose paths misbehave in the ways the fetcher must survive."""

    def __init__(self, tmp_path: Path) -> None:
        ca = CertificateAuthority.create("image test CA")
        cert = ca.issue("images", tmp_path / "images", dns_names=("localhost", TEST_HOST))
        self.server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ssl.load_cert_chain(cert.cert_file, cert.key_file)
        self.client_ssl = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.crt")))
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def cat(request: web.Request) -> web.Response:
            return web.Response(body=PNG, content_type="image/png")

        async def big(request: web.Request) -> web.Response:
            return web.Response(body=PNG + b"\0" * 5000, content_type="image/png")

        async def big_chunked(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(PNG)
            for _ in range(100):
                await response.write(b"\0" * 1000)
            await response.write_eof()
            return response

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(body=PNG, content_type="image/png")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound("https://169.254.169.254/latest/meta-data/")

        async def html(request: web.Request) -> web.Response:
            return web.Response(text="<html></html>", content_type="text/html")

        async def disguised(request: web.Request) -> web.Response:
            return web.Response(body=b"<html>not an image</html>", content_type="image/png")

        async def missing(request: web.Request) -> web.Response:
            return web.Response(status=404, text="sk-LEAK-in-404-body")

        routes = {
            "/cat.png": cat,
            "/big.png": big,
            "/big-chunked.png": big_chunked,
            "/slow.png": slow,
            "/redirect.png": redirect,
            "/page.html": html,
            "/disguised.png": disguised,
            "/missing.png": missing,
        }

        @web.middleware
        async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.hits.append(request.path)
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.server_ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    server = Site(tmp_path)
    await server.start()
    yield server
    await server.stop()


def fetcher(
    site: Site, *, max_bytes: int = 1024, timeout_s: float = 2.0, allow_loopback: bool = True, resolve=None
) -> ImageFetcher:  # type: ignore[no-untyped-def]
    policy = FetchPolicy(
        max_bytes=max_bytes, timeout_s=timeout_s, allowed_networks=LOOPBACK_ONLY if allow_loopback else ()
    )
    if resolve is None:
        return ImageFetcher(policy, ssl_context=site.client_ssl)
    return ImageFetcher(policy, ssl_context=site.client_ssl, resolve=resolve)


async def test_loopback_is_refused_by_default_and_nothing_is_requested(site: Site) -> None:
    default = fetcher(site, allow_loopback=False)
    with pytest.raises(ImageFetchError, match="loopback"):
        await default.fetch(site.url("/cat.png"))

    async def resolve_to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    by_name = fetcher(site, allow_loopback=False, resolve=resolve_to_loopback)
    with pytest.raises(ImageFetchError, match="resolves to an address that is loopback"):
        await by_name.fetch(site.url("/cat.png", host=TEST_HOST))

    async def one_public_one_private(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    mixed = fetcher(site, allow_loopback=False, resolve=one_public_one_private)
    with pytest.raises(ImageFetchError, match="private"):
        await mixed.fetch("https://images.example.com/cat.png")
    assert site.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example.com/cat.png",
        "ftp://images.example.com/cat.png",
        "https://user:pw@images.example.com/x.png",
        "https:///nohost.png",
        "https://[::1]:443/x.png",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
async def test_urls_outside_the_policy_are_refused_before_any_connection(site: Site, url: str) -> None:
    with pytest.raises(ImageFetchError):
        await fetcher(site, allow_loopback=False).fetch(url)
    assert site.hits == []


async def test_allowed_image_is_fetched_from_the_pinned_address_after_one_resolution(site: Site) -> None:
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    data, mime = await fetcher(site, resolve=resolve).fetch(site.url("/cat.png", host=TEST_HOST))
    assert (data, mime) == (PNG, "image/png")
    # One lookup, and the connection used its answer: the system resolver does not know the name,
    # so a second resolution at connect time would have failed the fetch.
    assert lookups == [TEST_HOST]
    assert site.hits == ["/cat.png"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/big.png", "larger than 1024 bytes"),
        ("/big-chunked.png", "larger than 1024 bytes"),
        ("/redirect.png", "redirect"),
        ("/page.html", "content type"),
        ("/disguised.png", "not a image/png image"),
        ("/missing.png", "HTTP 404"),
    ],
)
async def test_caps_and_checks(site: Site, path: str, reason: str) -> None:
    with pytest.raises(ImageFetchError) as refused:
        await fetcher(site).fetch(site.url(path))
    assert reason in refused.value.reason
    assert "sk-LEAK" not in refused.value.reason and "169.254" not in refused.value.reason
    assert site.hits == [path]  # a redirect is never followed


async def test_slow_server_hits_the_time_cap(site: Site) -> None:
    with pytest.raises(ImageFetchError, match=r"within 0\.3s"):
        await fetcher(site, timeout_s=0.3).fetch(site.url("/slow.png"))


async def test_certificate_for_another_name_is_refused(site: Site) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with pytest.raises(ImageFetchError, match="TLS"):
        await fetcher(site, resolve=resolve).fetch(site.url("/cat.png", host="other.sekha.test"))


async def test_inliner_replaces_urls_with_bytes_and_names_failing_parts(site: Site) -> None:
    inliner = ImageInliner(fetcher(site))
    url_part = d.ContentPart(image=d.ImagePart(url=site.url("/cat.png"), detail="low"))
    inline_part = d.ContentPart(image=d.ImagePart(data=PNG, mime_type="image/png"))
    request = d.ChatRequest(
        messages=(d.ChatMessage(d.Role.USER, (d.ContentPart(text="look"), url_part, inline_part)),)
    )
    inlined = await inliner.inline(request)
    image = inlined.messages[0].parts[1].image
    assert image is not None and (image.url, image.data, image.mime_type, image.detail) == (
        None,
        PNG,
        "image/png",
        "low",
    )
    assert inlined.messages[0].parts[2] == inline_part and inlined.messages[0].parts[0].text == "look"

    bad = d.ChatRequest(
        messages=(
            d.ChatMessage(
                d.Role.USER, (url_part, d.ContentPart(image=d.ImagePart(url=site.url("/page.html"))))
            ),
        )
    )
    with pytest.raises(InvalidArgumentError) as refused:
        await inliner.inline(bad)
    assert [v.field for v in refused.value.violations] == ["messages[0].parts[1].image.url"]
