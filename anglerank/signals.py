"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

Long runs (``score``, ``train``) poll :attr:`StopOnSignal.requested` between
batches or steps, save their state and exit 130 (SIGINT) or 143 (SIGTERM),
so nothing is lost; a second signal aborts at once. Short commands that only
write an output (``rank``, ``sample``, ``merge``) use :func:`abort_on_signal`
instead: both signals unwind at once, so the same cleanup (temporary files
removed) runs for SIGTERM as for Ctrl-C. Handlers are installed only for the
``with`` block and only in the main thread.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

from anglerank.errors import Interrupted

__all__ = ["StopOnSignal", "abort_on_signal"]


@contextlib.contextmanager
def abort_on_signal(message: str) -> Iterator[None]:
    """SIGINT or SIGTERM inside the block: unwind now, then raise ``Interrupted(130 | 143, message)``.

    The signal is raised as KeyboardInterrupt where it lands, so every ``with`` and
    ``finally`` on the way out removes what it started (SIGTERM would otherwise kill
    the process on the spot and leave temporary files). Later signals are ignored
    while that cleanup runs.
    """
    got: list[int] = []

    def handler(signum, frame):
        if not got:
            got.append(signum)
            raise KeyboardInterrupt

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(143 if got and got[0] == signal.SIGTERM else 130, message) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StopOnSignal:
    """First Ctrl-C / SIGTERM: ask to stop (``notify`` is called). Second: KeyboardInterrupt now."""

    def __init__(self, notify: Callable[[], None] | None = None):
        self.signum: int | None = None
        self.notify = notify
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT (or a stop asked for otherwise), 143 for SIGTERM."""
        return 143 if self.signum == signal.SIGTERM else 130

    def __enter__(self) -> "StopOnSignal":
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
            if self.notify is not None:
                self.notify()

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
