"""The run's file writes, off the training thread.

A single background thread runs the write jobs in the order they were submitted, so the order that makes the
run kill-safe holds as before: an epoch's model files, then its ``checkpoint.pt``, then ``metrics.csv``, each
atomic. Jobs get snapshots (copies of the weights and optimizer state taken when the epoch ended), so training
goes on while they are written. A failed write (disk full) stops every later job - no checkpoint is written
after a model file that failed - and is raised in the training thread at the next submit or wait.
``wait()`` comes before anything that needs the files on disk (Ctrl-C's checkpoint, the plots, the result).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["FileWriter"]


class FileWriter:
    """Runs write jobs in order: on a background thread, or at once with ``background=False``."""

    def __init__(self, background: bool):
        self.background = background
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._work, name="torchkeep-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as exc:  # kept for the training thread, which raises it
                self._error = exc
            finally:
                self._q.task_done()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self.raise_error()
        if self._thread is None:
            job()
        else:
            self._q.put(job)

    def wait(self) -> None:
        """Every job submitted so far is done (its files are on disk); raises a write's error."""
        if self._thread is not None:
            self._q.join()
        self.raise_error()

    def close(self) -> None:
        """Finish the jobs and stop the thread (errors stay for :meth:`raise_error`)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
