"""Whether each configured model is on its server, checked before its first call and at
start-up; a missing Ollama model is pulled when `auto_pull` is on."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from modelyard.configs.availability import (
    Availability,
    http_client,
    is_listed,
    list_server_models,
    listing_key,
)
from modelyard.configs.pull import PullError, PullProgress, pull_model
from modelyard.configs.schema import ModelConfig, ModelyardConfig
from modelyard.state import MissingModel, ModelNotOnServerError, UnknownModelError

if TYPE_CHECKING:
    from modelyard.configs.registry import ModelRegistry

logger = logging.getLogger("modelyard.pull")

PullListener = Callable[[PullProgress], None]
"""Called with each progress report of a pull."""

#: Seconds a listing that lacks a model is trusted before the server is asked again.
REFRESH_SECONDS = 5.0
#: Seconds to wait for a server's listing; past it the model is not checked this time.
LISTING_TIMEOUT = 3.0

_T = TypeVar("_T")
_Key = tuple[str, str]
_Watchers = list[tuple[PullListener, contextvars.Context]]


@dataclass(frozen=True)
class _Listing:
    """What one server said it has, and when."""

    names: set[str] | None
    """The server's models; None when it could not be asked."""
    detail: str
    """Why it could not be asked."""
    fetched_at: float


class ServerModels:
    """What each model's server has, asked once per server and kept; pulls what is missing.

    A `ModelRegistry` holds one as `registry.server_models`. Models with a client passed
    to the registry (scripted models) and `init_chat_model` providers are never checked.
    """

    def __init__(
        self,
        config: ModelyardConfig,
        *,
        unchecked: Collection[str] = (),
        refresh_seconds: float = REFRESH_SECONDS,
        listing_timeout: float = LISTING_TIMEOUT,
    ) -> None:
        """Hold the config; ask no server yet.

        Args:
            config: The checked config.
            unchecked: Model names never to check (those with a client of their own).
            refresh_seconds: How long a listing that lacks a model is trusted.
            listing_timeout: Seconds to wait for a server's listing.
        """
        self.config = config
        self.refresh_seconds = refresh_seconds
        self.listing_timeout = listing_timeout
        self.clock: Callable[[], float] = time.monotonic
        self._models = {model.name: model for model in config.models}
        self._given_unchecked = frozenset(unchecked)
        self._unchecked = self._given_unchecked | {
            model.name for model in config.models if listing_key(config, model) is None
        }
        # Models found on their servers, or never checked: `ensure` returns at once.
        self._ready = set(self._unchecked)
        self._listings: dict[_Key, _Listing] = {}
        self._listeners: list[PullListener] = []
        self._lock = threading.Lock()
        # Listings and pulls under way, per event loop, so that callers wait on one of each.
        self._flights: dict[asyncio.AbstractEventLoop, dict[Any, Any]] = {}

    def add_listener(self, listener: PullListener) -> Callable[[], None]:
        """Call `listener` with every pull's progress; return a function that stops it."""
        self._listeners.append(listener)
        return functools.partial(self._remove_listener, listener)

    def _remove_listener(self, listener: PullListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def ensure(self, name: str, *, listener: PullListener | None = None) -> None:
        """Make sure model `name` is on its server before a call to it.

        The first call asks the model's server what it has; later calls for a model found
        there return at once. A server that cannot be asked is not an error here (the call
        itself says what is wrong). A missing model is pulled when its `auto_pull` is on,
        once however many tasks wait for it.

        Args:
            name: A configured model's name.
            listener: Also called with this pull's progress, in the caller's context (so a
                LangGraph stream writer it looks up reaches the caller's own run).

        Raises:
            ModelNotOnServerError: the server lacks the model and it may not be pulled, or
                pulling it failed; says what the server has and what to do.
        """
        if name in self._ready:
            return
        model = self._model(name)
        listing = await self._listing(model, max_age=self.refresh_seconds)
        if listing.names is None:
            return
        if is_listed(model, listing.names):
            self._ready.add(name)
            return
        if not model.pulls_missing:
            raise ModelNotOnServerError([self._missing(model, listing.names)])
        await self._pull(model, listener)
        self._ready.add(name)

    def update_config(self, config: ModelyardConfig, name: str) -> None:
        """Take a config in which model `name` changed; check it again if it moved.

        A model whose id, server or provider changed is asked for again before its next
        call; any other change keeps what its server said.
        """
        model = next(m for m in config.models if m.name == name)
        with self._lock:
            old = self._models.get(name)
            moved = old is None or (listing_key(self.config, old), old.model) != (
                listing_key(config, model),
                model.model,
            )
            self.config = config
            self._models = {m.name: m for m in config.models}
            if not moved:
                return
            if name in self._given_unchecked or listing_key(config, model) is None:
                self._unchecked |= {name}
                self._ready.add(name)
            else:
                self._unchecked -= {name}
                self._ready.discard(name)

    def forget(self, name: str) -> None:
        """Check model `name` again before its next call (its server said it lacks it)."""
        if name not in self._unchecked:
            self._ready.discard(name)

    async def check_all(self) -> list[Availability]:
        """Ask every model's server, once per server and all at once, what it has.

        Pulls nothing: a missing model with `auto_pull` on is pulled before the first task
        that needs it. A server that cannot be asked is reported, not raised.

        Returns:
            Each configured model's availability, in config order.

        Raises:
            ModelNotOnServerError: listing every model its server lacks that may not be
                pulled.
        """
        asked: dict[_Key, ModelConfig] = {}
        for model in self.config.models:
            key = listing_key(self.config, model)
            if key is not None and model.name not in self._unchecked:
                asked.setdefault(key, model)
        listings = await asyncio.gather(*(self._listing(m, max_age=0.0) for m in asked.values()))
        by_key = dict(zip(asked, listings, strict=True))
        results: list[Availability] = []
        missing: list[MissingModel] = []
        for model in self.config.models:
            url = self.config.base_url_for(model)
            key = listing_key(self.config, model)
            listing = by_key.get(key) if key is not None else None
            if listing is None or model.name in self._unchecked:
                results.append(Availability(model.name, url, None, None, "not checked"))
            elif listing.names is None:
                results.append(Availability(model.name, url, False, None, listing.detail))
            elif is_listed(model, listing.names):
                self._ready.add(model.name)
                results.append(Availability(model.name, url, True, True))
            else:
                detail = "not on the server"
                if model.pulls_missing:
                    detail += "; pulled before the first task that needs it (auto_pull)"
                else:
                    missing.append(self._missing(model, listing.names))
                results.append(Availability(model.name, url, True, False, detail))
        if missing:
            raise ModelNotOnServerError(missing)
        return results

    async def _listing(self, model: ModelConfig, *, max_age: float) -> _Listing:
        """Return what the model's server has, asking it when the kept answer is older."""
        key = self._key(model)
        kept = self._listings.get(key)
        if kept is not None and self.clock() - kept.fetched_at < max_age:
            return kept
        task, _ = self._join(("listing", key), lambda _: self._fetch_listing(model, key))
        return await asyncio.shield(task)

    async def _fetch_listing(self, model: ModelConfig, key: _Key) -> _Listing:
        async with http_client(key[1], self.listing_timeout) as client:
            names, detail = await list_server_models(client, self.config, model)
        listing = _Listing(names, detail, self.clock())
        self._listings[key] = listing
        return listing

    async def _pull(self, model: ModelConfig, listener: PullListener | None) -> None:
        """Pull a model into its Ollama server, or wait for the pull already under way."""
        url = self.config.base_url_for(model) or ""
        task, watchers = self._join(
            ("pull", url, model.model), lambda watchers: self._run_pull(model, url, watchers)
        )
        watcher = (listener, contextvars.copy_context()) if listener is not None else None
        if watcher is not None:
            watchers.append(watcher)
        try:
            await asyncio.shield(task)
        finally:
            if watcher is not None and watcher in watchers:
                watchers.remove(watcher)

    async def _run_pull(self, model: ModelConfig, url: str, watchers: _Watchers) -> None:
        logger.info("%s (%s) is not on %s; pulling it", model.name, model.model, url)
        key = self._key(model)
        last_status = ""

        def report(progress: PullProgress) -> None:
            nonlocal last_status
            if progress.status != last_status:
                logger.info("%s", progress)
                last_status = progress.status
            for listener in [*self._listeners]:
                _tell(listener, progress)
            for listener, context in [*watchers]:
                context.run(_tell, listener, progress)

        try:
            await pull_model(url, model.name, model.model, report)
        except PullError as exc:
            logger.info("pulling %s (%s) into %s failed: %s", model.name, model.model, url, exc)
            kept = self._listings.get(key)
            names = kept.names if kept is not None and kept.names is not None else set()
            raise ModelNotOnServerError([self._missing(model, names, str(exc))]) from None
        kept = self._listings.get(key)
        if kept is not None and kept.names is not None:
            self._listings[key] = _Listing({*kept.names, model.model}, "", kept.fetched_at)
        # Before the task ends, so that no caller arriving meanwhile pulls it again.
        self._ready.update(
            other.name
            for other in self.config.models
            if listing_key(self.config, other) == key and other.model == model.model
        )

    def _join(
        self, key: tuple[Any, ...], work: Callable[[_Watchers], Coroutine[Any, Any, _T]]
    ) -> tuple[asyncio.Task[_T], _Watchers]:
        """Return the task doing `key` in this event loop, starting it when none is."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for stale in [other for other in self._flights if other.is_closed()]:
                del self._flights[stale]
            flights = self._flights.setdefault(loop, {})
            flight: tuple[asyncio.Task[_T], _Watchers] | None = flights.get(key)
            if flight is None:
                watchers: _Watchers = []
                task = loop.create_task(work(watchers))
                flight = flights[key] = (task, watchers)
                task.add_done_callback(functools.partial(_land, flights, key))
        return flight

    def _key(self, model: ModelConfig) -> _Key:
        key = listing_key(self.config, model)
        if key is None:
            raise ValueError(f"model {model.name!r} is on no server that lists its models")
        return key

    def _model(self, name: str) -> ModelConfig:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModelError(name, list(self._models)) from None

    def _missing(
        self, model: ModelConfig, names: set[str], pull_error: str | None = None
    ) -> MissingModel:
        url = self.config.base_url_for(model) or ""
        return MissingModel(
            model.name, model.model, url, model.protocol, tuple(sorted(names)), pull_error
        )


def _land(flights: dict[Any, Any], key: Any, task: asyncio.Task[Any]) -> None:
    """Forget a finished listing or pull, so that the next caller starts afresh."""
    if flights.get(key, (None,))[0] is task:
        del flights[key]


def _tell(listener: PullListener, progress: PullProgress) -> None:
    """Call a listener; a failing listener is logged, and does not stop the pull."""
    try:
        listener(progress)
    except Exception:
        logger.exception("a pull progress listener failed")


async def check_configured_models(registry: ModelRegistry) -> list[Availability]:
    """Check every configured model against its server, as a runner does at start-up.

    One listing per server, all at once; nothing is pulled (a missing model with
    `auto_pull` on is pulled before the first task that needs it); a server that cannot be
    asked is in the result, not an error. The listings are kept, so that the first task's
    check of each model found costs nothing.

    Returns:
        Each configured model's availability, in config order.

    Raises:
        ModelNotOnServerError: listing every model its server lacks that may not be pulled,
            with what each server has and what to do.
    """
    return await registry.server_models.check_all()
