"""A work queue of keyed reconciles: one at a time per key, a bounded number at once, with requeues.

Triggers of a key that arrive while its reconcile runs coalesce into one more
pass (level-based reconciles need no more: each reads everything fresh).  A
requeue keeps only the earliest pending wake-up of a key.  Like
controller-runtime's rate-limited queue, minus the rate limits: the reconciler
spaces its own retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Key = tuple[str, str]  # (namespace, name)


@dataclass
class WorkQueue:
    """Runs ``work(namespace, name)`` for triggered keys; never two passes of one key at once."""

    work: Callable[[str, str], Awaitable[None]]
    max_concurrent: int
    _running: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    _dirty: set[Key] = field(default_factory=set)
    _timers: dict[Key, tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)
    _sem: asyncio.Semaphore | None = None

    def trigger(self, namespace: str, name: str) -> None:
        """Run soon; coalesces with a pass already running."""
        key = (namespace, name)
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(
            self._run(key), name=f"reconcile {namespace}/{name}"
        )

    def requeue(self, namespace: str, name: str, seconds: float) -> None:
        """Trigger after ``seconds``, unless an earlier wake-up is already pending."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, seconds)
        current = self._timers.get(key)
        if current is not None and current[0] <= due:
            return
        if current is not None:
            current[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def cancel_requeue(self, namespace: str, name: str) -> None:
        timer = self._timers.pop((namespace, name), None)
        if timer is not None:
            timer[1].cancel()

    def cancel_all(self) -> None:
        """Cancel every running pass (shutdown)."""
        for task in list(self._running.values()):
            task.cancel()

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.trigger(*key)

    async def _run(self, key: Key) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent)
        try:
            while True:
                self._dirty.discard(key)
                async with self._sem:
                    await self.work(*key)
                if key not in self._dirty:
                    break
        finally:
            self._running.pop(key, None)
