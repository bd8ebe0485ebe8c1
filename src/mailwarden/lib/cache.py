"""``@cache(ttl=…, size=…)``: remember what an ``async def`` returned, per arguments.

A policy script decorates the slow lookups it makes for every connection (a DNS query, an HTTP
call to an operator service) so that the next connection of the same worker gets the answer from
memory::

    from mailwarden.lib import cache

    @cache(ttl=300, size=10_000, namespace="partners")
    async def partner_plan(domain: str) -> str: ...

Semantics (documented in docs/library.md):

* the key is the call's arguments bound to the function's parameters, so ``f(1)``, ``f(x=1)``
  and ``f()`` with a default of 1 share one entry; every argument must be hashable, else the
  call raises TypeError naming the argument (nothing is called);
* a result is kept ``ttl`` seconds from the moment the call returned (monotonic clock, so a
  wall-clock jump neither expires nor prolongs anything), and at most ``size`` results are
  kept per decorated function: the least recently used one goes first;
* concurrent misses for one key share one call: the first starts it, the others await the
  same result, or the same exception; an exception is never cached, so the next call tries
  again;
* the state lives in this worker's memory: shared by all its connections, not by the other
  workers of the node, and started afresh by a script reload (the reloaded script's functions
  are new ones; the old caches are freed with them).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["CacheStats", "CachedFunction", "cache", "clear"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class CacheStats:
    """Counters of one cached function since it was decorated (``clear()`` keeps them).

    A call that found a live result is a hit; every other call is a miss, including one that
    joined a call already running for its key (it did not call the function, but it waited)."""

    hits: int
    misses: int
    size: int  # live (unexpired) results held now


class CachedFunction(Generic[P, R]):
    """What ``@cache(...)`` returns: awaitable like the function, plus ``clear()`` and
    ``stats()``."""

    def __init__(
        self, function: Callable[P, Awaitable[R]], ttl: float, size: int, namespace: str
    ) -> None:
        self._function = function
        self._signature = inspect.signature(function)
        self.ttl = ttl
        self.size = size
        self.namespace = namespace
        # key -> (monotonic expiry, result), least recently used first.
        self._results: OrderedDict[Hashable, tuple[float, R]] = OrderedDict()
        self._running: dict[Hashable, asyncio.Task[R]] = {}
        # Bumped by clear(): a call that was running when the cache was cleared must not put
        # its (possibly stale) result back.
        self._generation = 0
        self._hits = 0
        self._misses = 0
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._key(args, kwargs)
        found = self._results.get(key)
        if found is not None:
            if found[0] > time.monotonic():
                self._results.move_to_end(key)
                self._hits += 1
                return found[1]
            del self._results[key]
        self._misses += 1
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(self._function(*args, **kwargs))
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key, self._generation))
        # Shielded: a caller that is cancelled (its hook timed out, its client left) must not
        # cancel the call the other waiters share. Every waiter, the first included, gets the
        # task's own result or exception.
        return await asyncio.shield(task)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method: bind it as a function would be, ``self`` becoming part of the
        # key (so every instance has its own entries; instances must be hashable).
        if instance is None:
            return self
        return functools.partial(self, instance)

    def _finished(self, key: Hashable, generation: int, task: asyncio.Task[R]) -> None:
        # Runs before any waiter resumes (done callbacks run in the order they were added and
        # shield() adds its own after this one), so a waiter's next call already hits.
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled():
            return
        if task.exception() is not None:  # retrieved here, so never "never retrieved"
            return
        if generation != self._generation:
            return
        self._results[key] = (time.monotonic() + self.ttl, task.result())
        self._results.move_to_end(key)
        while len(self._results) > self.size:
            self._results.popitem(last=False)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        parts: list[tuple[str, Any]] = []
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                for key_name in sorted(value):
                    parts.append((key_name, _hashable(key_name, value[key_name], self)))
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                for index, item in enumerate(value):
                    parts.append((name, _hashable(f"{name}[{index}]", item, self)))
            else:
                parts.append((name, _hashable(name, value, self)))
        return tuple(parts)

    def clear(self) -> None:
        """Forget every result of this function (calls running now finish for their waiters
        but are not stored)."""
        self._results.clear()
        self._running.clear()
        self._generation += 1

    def stats(self) -> CacheStats:
        now = time.monotonic()
        for key in [key for key, (expiry, _) in self._results.items() if expiry <= now]:
            del self._results[key]  # expired results do not count, and are freed here
        return CacheStats(hits=self._hits, misses=self._misses, size=len(self._results))


def _hashable(name: str, value: Any, function: CachedFunction[Any, Any]) -> Any:
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{function.__qualname__}(): argument {name!r} is a {type(value).__name__}, "
            "which is not hashable, so the call cannot be cached (pass a tuple or frozenset)"
        ) from None
    return value


# Every cached function alive in this worker, for clear(namespace). Weak, so the caches of a
# script that was reloaded go away with its old module.
_registry: weakref.WeakSet[CachedFunction[Any, Any]] = weakref.WeakSet()


def clear(namespace: str | None = None) -> None:
    """Forget the results of every cached function in ``namespace`` (all of them with None)."""
    for function in list(_registry):
        if namespace is None or function.namespace == namespace:
            function.clear()


class _CacheDecorator:
    """``cache`` itself: a decorator factory that also carries ``cache.clear(namespace)``.

    A class rather than a plain function because ``from mailwarden.lib import cache`` binds
    the decorator, not this module, so the module-level clear must be reachable from it."""

    clear = staticmethod(clear)

    def __call__(
        self, ttl: float, size: int, *, namespace: str = DEFAULT_NAMESPACE
    ) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
        if not ttl > 0:
            raise ValueError(f"cache(): ttl must be > 0 seconds, got {ttl!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"cache(): size must be an integer >= 1, got {size!r}")

        def decorate(function: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
            if not inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"@cache: {getattr(function, '__qualname__', function)!r} is not an "
                    "async def function"
                )
            cached = CachedFunction(function, ttl, size, namespace)
            _registry.add(cached)
            return cached

        return decorate


cache = _CacheDecorator()
