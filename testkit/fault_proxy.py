"""A TCP proxy on 127.0.0.1:0 that injects network faults, switchable while traffic flows.

    async with FaultProxy("127.0.0.1", target_port) as proxy:
        proxy.set(latency_s=2.0)               # every forwarded chunk waits 2 s
        proxy.set(bandwidth_bps=10_000)        # ... or trickles at 10 kB/s
        proxy.set(reset_after_bytes=300)       # each connection is reset after 300 bytes downstream
        proxy.set(blackhole=True)              # bytes are swallowed, nothing answers
        proxy.set(refuse=True)                 # new connections are closed at once
        proxy.reset_all()                      # existing connections get a TCP RST now
        proxy.set()                            # back to a clean pipe
        proxy.retarget(new_port)               # new connections go elsewhere (a restarted server)

Faults apply to connections already open, chunk by chunk, so a test can break a
stream half way. "Downstream" is target -> client (the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Faults:
    latency_s: float = 0.0
    bandwidth_bps: int | None = None
    reset_after_bytes: int | None = None
    blackhole: bool = False
    refuse: bool = False


@dataclass(eq=False)  # identity hash: links live in a set
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    downstream_bytes: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._host = host
        self._port = port
        self.faults = Faults()
        self.port = 0
        self.connections = 0
        self.resets = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        links = list(self._links)
        for link in links:
            for task in link.tasks:
                task.cancel()
        await asyncio.gather(*(t for link in links for t in link.tasks), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def set(self, **faults: object) -> None:
        """Replace the faults (unnamed ones go back to clean)."""
        self.faults = Faults(**faults)  # type: ignore[arg-type]

    def retarget(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)

    def reset_all(self) -> None:
        """Reset every open connection, both sides."""
        for link in list(self._links):
            self._kill(link)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def _kill(self, link: _Link) -> None:
        if link not in self._links:
            return
        self.resets += 1
        _abort_with_rst(link.client)
        if link.upstream is not None:
            _abort_with_rst(link.upstream)
        self._links.discard(link)

    # .............................................................................. plumbing

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.faults.refuse:
            _abort_with_rst(writer)
            return
        link = _Link(client=writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._kill(link)
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link, downstream=False)),
            asyncio.create_task(self._pump(up_reader, writer, link, downstream=True)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for side in (writer, up_writer):
            with contextlib.suppress(Exception):
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, downstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                faults = self.faults
                if faults.blackhole:
                    continue
                if faults.latency_s > 0:
                    await asyncio.sleep(faults.latency_s)
                if downstream and faults.reset_after_bytes is not None:
                    room = faults.reset_after_bytes - link.downstream_bytes
                    if room <= len(data):
                        if room > 0:
                            writer.write(data[:room])
                            link.downstream_bytes += room
                            with contextlib.suppress(OSError):
                                await writer.drain()
                        self._kill(link)
                        return
                await self._send(writer, data, faults)
                if downstream:
                    link.downstream_bytes += len(data)
        except (OSError, asyncio.IncompleteReadError):
            self._kill(link)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, faults: Faults) -> None:
        if faults.bandwidth_bps:
            step = max(1, faults.bandwidth_bps // 20)  # 50 ms slices
            for start in range(0, len(data), step):
                writer.write(data[start : start + step])
                await writer.drain()
                await asyncio.sleep(len(data[start : start + step]) / faults.bandwidth_bps)
            return
        writer.write(data)
        await writer.drain()
