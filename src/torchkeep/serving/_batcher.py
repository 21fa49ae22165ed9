"""Dynamic batching: images of concurrent requests for one model share one forward pass.

Each image waits in the model's queue; one task per model takes up to ``max_batch`` of them and runs the
forward pass in a thread of its own, off the event loop. It waits for more images (at most ``max_wait``
after the oldest one arrived, and no longer than a forward pass takes) only while requests that
have started are still being read and decoded: a lone request never waits, and under load batches fill up
while the previous batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Batcher"]


class _Ticket:
    def __init__(self, batcher: Batcher):
        self._batcher: Batcher | None = batcher

    def release(self) -> None:
        b, self._batcher = self._batcher, None
        if b is not None:
            b._arriving -= 1
            if b._wake is not None:
                b._wake.set()


@dataclass
class _Item:
    x: torch.Tensor
    future: asyncio.Future
    arrived: float


class Batcher:
    """Gathers single images into batches for ``run`` (a batch ``(N, C, H, W)`` -> rows ``(N, K)``).

    Args:
        run: the forward pass (called in the batcher's own thread).
        max_batch: the most images in one forward pass.
        max_wait: seconds the oldest image may wait for others.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
        name: str = "model",
    ):
        self.run = run
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._arriving = 0
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"torchkeep-{name}")
        self._forward_seconds = self.max_wait  # a running estimate of a forward pass

    @property
    def depth(self) -> int:
        """Images waiting for a forward pass."""
        return len(self._queue)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def expect(self) -> Iterator[_Ticket]:
        """A request that will submit images soon (its body is being read and decoded): batches wait for it."""
        ticket = _Ticket(self)
        self._arriving += 1
        try:
            yield ticket
        finally:
            ticket.release()

    async def submit(self, images: list[torch.Tensor], ticket: _Ticket | None = None) -> list[torch.Tensor]:
        """Run ``images`` (each ``(C, H, W)``) in whatever batches form; their output rows, in order.

        ``ticket`` (from :meth:`expect`) is released as the images join the queue, in the same step.
        """
        if self._task is None or self._wake is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(x, loop.create_future(), now) for x in images]
        self._queue.extend(items)
        if ticket is not None:
            ticket.release()
        self._wake.set()
        return list(await asyncio.gather(*(it.future for it in items)))

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            # waiting longer than a forward pass takes cannot pay off (a small CNN: no wait; resnet18: max_wait)
            deadline = self._queue[0].arrived + min(self.max_wait, self._forward_seconds)
            # wait for more only while started requests may still add images, and not past the deadline
            while len(self._queue) < self.max_batch and self._arriving > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            batch = [it for it in batch if not it.future.done()]  # a cancelled request's images are dropped
            # images of different sizes (a spec that keeps aspect ratios) cannot share a tensor
            groups: dict[tuple[int, ...], list[_Item]] = {}
            for it in batch:
                groups.setdefault(tuple(it.x.shape), []).append(it)
            for group in groups.values():
                await self._run_group(loop, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Item]) -> None:
        import torch

        try:
            x = torch.stack([it.x for it in group])
            if self.on_batch is not None:
                self.on_batch(len(group))
            start = time.perf_counter()
            out = await loop.run_in_executor(self._executor, self.run, x)
            self._forward_seconds = 0.8 * self._forward_seconds + 0.2 * (time.perf_counter() - start)
        except Exception as exc:
            for it in group:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        for it, row in zip(group, out):
            if not it.future.done():
                it.future.set_result(row)
