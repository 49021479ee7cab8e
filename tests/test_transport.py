"""PooledTransport: connections reused under concurrency, limits kept, every request released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from modelyard.configs.transport import PooledTransport, env_proxy


@dataclass
class Server:
    url: str
    delay: float
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


@asynccontextmanager
async def http_server(delay: float = 0.05) -> AsyncIterator[Server]:
    """A keep-alive HTTP/1.1 server that answers every request after `delay` seconds."""
    server = Server(url="", delay=delay)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        server.open_now += 1
        server.most_open = max(server.most_open, server.open_now)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                await reader.readexactly(length)
                await asyncio.sleep(server.delay)
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            server.open_now -= 1
            writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
    async with listening:
        yield server
        async with asyncio.timeout(5):  # let the handlers see their clients go
            while server.open_now:
                await asyncio.sleep(0.01)


async def wave(client: httpx.AsyncClient, url: str, count: int) -> None:
    responses = await asyncio.gather(*(client.post(url, json={"n": n}) for n in range(count)))
    assert all(r.json() == {"ok": True} for r in responses)


async def test_concurrent_calls_reuse_their_connections() -> None:
    transport = PooledTransport()
    async with http_server() as server, httpx.AsyncClient(transport=transport) as client:
        await wave(client, server.url, 40)
        assert server.connections == 40
        await wave(client, server.url, 40)
        await wave(client, server.url, 40)
        # httpx's own pool closes every connection past 20 as it goes idle and reconnects.
        assert server.connections == 40
        assert transport.in_flight == [0] * len(transport.pools)


async def test_one_call_at_a_time_uses_one_connection() -> None:
    async with http_server(delay=0) as server:
        async with httpx.AsyncClient(transport=PooledTransport()) as client:
            for n in range(10):
                assert (await client.get(f"{server.url}/{n}")).status_code == 200
        assert server.connections == 1


async def test_max_connections_holds_over_all_pools() -> None:
    transport = PooledTransport(max_connections=4, pool_size=2)
    assert len(transport.pools) == 2
    async with http_server() as server, httpx.AsyncClient(transport=transport) as client:
        await wave(client, server.url, 12)  # the rest wait for a connection, as in httpx
        assert server.most_open == 4
        assert transport.in_flight == [0, 0]


async def test_a_streamed_response_holds_its_pool_until_closed() -> None:
    transport = PooledTransport(pool_size=2)
    async with http_server(delay=0) as server, httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", server.url) as response:
            assert transport.in_flight[0] == 1
            second = await client.get(server.url)  # the least busy pool: the next one
            assert second.status_code == 200
            assert transport.in_flight == [1] + [0] * (len(transport.pools) - 1)
            await response.aread()
        assert transport.in_flight == [0] * len(transport.pools)


async def test_a_failed_request_is_released() -> None:
    transport = PooledTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")  # the discard port: nothing listens
    assert transport.in_flight == [0] * len(transport.pools)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PooledTransport(pool_size=0)


async def test_for_url_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    url = "http://model-server.invalid:11434"  # no such host: only the proxy can answer
    async with http_server(delay=0) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with httpx.AsyncClient(transport=PooledTransport.for_url(url)) as client:
            assert (await client.get(f"{url}/api/tags")).json() == {"ok": True}
        assert proxy.connections == 1
    assert env_proxy("https://api.openai.com/v1") is None  # HTTP_PROXY is for http only
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", "model-server.invalid,api.openai.com")
    assert env_proxy(url) is None
    assert env_proxy("https://api.openai.com/v1") is None
