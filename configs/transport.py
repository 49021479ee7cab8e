"""An httpx transport that spreads many concurrent model calls over small connection pools.

httpx's own pool (httpcore's) walks all of its connections several times on every request
and every response, and while it holds more connections than `max_keepalive_connections`
(20 by default) it closes each one that goes idle. With 64 calls at once to one model
server, nearly every call opened a new TCP connection, and the bookkeeping cost more CPU
than the call itself. `PooledTransport` keeps several small pools and gives each request
to the one with the fewest requests under way: a pool never holds more connections than
it keeps alive, its walks stay short, and connections are reused.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

#: Connections per pool: short walks, and few pools for a server's usual concurrency.
POOL_SIZE = 8


class PooledTransport(httpx.AsyncBaseTransport):
    """Several `httpx.AsyncHTTPTransport` pools of about `pool_size` connections each.

    An httpx client given a transport no longer reads proxies from the environment: build
    it with `PooledTransport.for_url(url)`, which does, for the one server it talks to.

    Args:
        max_connections: Connections open at once, over all pools (httpx's default: 100,
            rounded up to whole pools); a request beyond them waits for one, as in httpx.
        pool_size: Connections per pool.
        keepalive_expiry: Seconds an idle connection stays open.
        **kwargs: For each `httpx.AsyncHTTPTransport` (`proxy`, `verify`, `cert`, ...).
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        pool_size: int = POOL_SIZE,
        keepalive_expiry: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if max_connections < 1 or pool_size < 1:
            raise ValueError(
                f"max_connections and pool_size must be at least 1, not {max_connections} "
                f"and {pool_size}"
            )
        count = math.ceil(max_connections / pool_size)
        limits = httpx.Limits(
            max_connections=pool_size,
            max_keepalive_connections=pool_size,
            keepalive_expiry=keepalive_expiry,
        )
        # One TLS context for all pools: loading the CA certificates takes tens of ms each.
        kwargs["verify"] = httpx.create_ssl_context(
            verify=kwargs.get("verify", True),
            cert=kwargs.pop("cert", None),
            trust_env=kwargs.get("trust_env", True),
        )
        self.pools = [httpx.AsyncHTTPTransport(limits=limits, **kwargs) for _ in range(count)]
        #: Requests under way in each pool: sent, and their response not closed yet.
        self.in_flight = [0] * count

    @classmethod
    def for_url(cls, url: str, **kwargs: Any) -> PooledTransport:
        """Return a transport for the server at `url`, through the proxy the environment
        names for it (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, less `NO_PROXY`), as an
        httpx client without a transport of its own would go."""
        return cls(proxy=env_proxy(url), **kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The least busy pool; the first of equals, so calls one at a time reuse one connection.
        index = self.in_flight.index(min(self.in_flight))
        self.in_flight[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[index] -= 1

        try:
            response = await self.pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that tells its pool the request is over when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


def env_proxy(url: str) -> str | None:
    """Return the proxy the environment names for `url`, or None (none, or `NO_PROXY`)."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # In CPython's urllib.request since 3.0, but not in its type stubs.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxy or bypass(parts.netloc, proxies):
        return None
    return proxy
