"""Admission control: what one client may ask for, and how model work waits its turn.

- :class:`RateLimiter`: token buckets per client (a socket connection or an HTTP address), so
  one tab that loops on ``analyze`` cannot crowd out a lecture hall.
- :class:`JobQueue`: one bounded FIFO per device. Model work (loading, forward passes,
  generation) runs ``workers`` jobs at a time; at most ``capacity`` wait, later ones are told
  ``busy`` at once; waiting jobs hear their position; a job whose client left is dropped.
- :func:`cancel_scope`: marks the work of one request as abandoned when its client disconnects.

Everything here answers with :class:`AtlasError` (``rate_limited``, ``busy``), before any model
work starts. Cached answers never pass through a queue, so a slow job cannot delay them.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from app.protocol import AtlasError

QUEUE_POLL_SECONDS = 0.25  # how often a waiting job checks whether its client is still there
IDLE_CLIENT_SECONDS = 600  # buckets untouched this long are forgotten (they are full again anyway)
# The global view's "My analyses" corpus, built by the server for any page that asks: analyses one
# request may name (the page keeps as many per model), and tokens in all (a build holds each
# token's queries and keys of every layer until it stores them: ~50 KB a token on smollm2).
MY_ANALYSES_MAX_KEYS = 100
MY_ANALYSES_MAX_TOKENS = 12_000

_CANCELLED: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "atlas_cancelled", default=lambda: False
)


class JobCancelled(AtlasError):
    """The client of this job disconnected before the job started; nobody hears this error."""

    def __init__(self):
        super().__init__("busy", "the request was dropped because its client disconnected", 499)


@contextlib.contextmanager
def cancel_scope(is_cancelled: Callable[[], bool]) -> Iterator[None]:
    """Within this block (one request's thread), :func:`cancelled` asks ``is_cancelled``."""
    token = _CANCELLED.set(is_cancelled)
    try:
        yield
    finally:
        _CANCELLED.reset(token)


def cancelled() -> bool:
    """Whether the client of the current request has gone away."""
    return _CANCELLED.get()()


class QueueStage(str):
    """A progress stage that also carries the job's queue position (1 = next to run), so the
    socket layer can send it as a number while people read the text."""

    position: int
    waiting: int

    def __new__(cls, position: int, waiting: int):
        ahead = position - 1
        text = (
            "next in line for the model"
            if ahead == 0
            else f"waiting for the model: {ahead} request{'s' if ahead > 1 else ''} ahead"
        )
        stage = super().__new__(cls, text)
        stage.position, stage.waiting = position, waiting
        return stage


def wire_progress(event: str, payload: dict) -> dict:
    """``payload`` as sent: a queue stage travels as its text plus its ``position``."""
    stage = payload.get("stage") if event == "progress" else None
    if isinstance(stage, QueueStage):
        return {**payload, "stage": str(stage), "position": stage.position}
    return payload


class JobQueue:
    """A bounded FIFO of model work for one device.

    The caller's own thread waits for its turn and runs the job, so errors, progress and
    cancellation stay with the request that caused them.
    """

    def __init__(self, capacity: int, workers: int = 1, max_wait_seconds: float = 300.0):
        self.capacity = capacity  # jobs allowed to wait (running ones not counted)
        self.workers = workers  # jobs running at once
        self.max_wait_seconds = max_wait_seconds
        self._waiting: deque[object] = deque()
        self._running = 0
        self._changed = threading.Condition()

    def configure(self, capacity: int, workers: int, max_wait_seconds: float) -> JobQueue:
        """Apply limits read from the configuration (on each job, so a change applies at once)."""
        self.capacity, self.workers, self.max_wait_seconds = capacity, workers, max_wait_seconds
        return self

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    @contextlib.contextmanager
    def slot(self, report: Callable[[QueueStage], None] | None = None) -> Iterator[None]:
        """Hold one worker slot for the body of the ``with`` block.

        Raises AtlasError('busy') when ``capacity`` jobs already wait or the wait exceeds
        ``max_wait_seconds``, and :class:`JobCancelled` when the client leaves while waiting.
        ``report(stage)`` hears each change of position (not called under the queue's lock).
        """
        ticket = object()
        with self._changed:
            if self._running < self.workers and not self._waiting:
                self._running += 1
                ticket = None
            elif len(self._waiting) >= self.capacity:
                raise AtlasError(
                    "busy",
                    f"the server is busy ({len(self._waiting)} requests are waiting for the "
                    "model); try again in a minute",
                    503,
                )
            else:
                self._waiting.append(ticket)
        if ticket is not None:
            self._wait_for_turn(ticket, report or (lambda stage: None))
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _wait_for_turn(self, ticket: object, report: Callable[[QueueStage], None]) -> None:
        deadline = time.monotonic() + self.max_wait_seconds
        reported = None
        while True:
            with self._changed:
                position = self._waiting.index(ticket) + 1
                if position == 1 and self._running < self.workers:
                    self._waiting.popleft()
                    self._running += 1
                    self._changed.notify_all()  # everyone behind moves up one
                    return
                gone, late = cancelled(), time.monotonic() > deadline
                if gone or late:
                    self._waiting.remove(ticket)
                    self._changed.notify_all()
                    if gone:
                        raise JobCancelled()
                    raise AtlasError(
                        "busy",
                        f"waited {self.max_wait_seconds:.0f} s for the model without a turn; "
                        "the server is overloaded, try again later",
                        503,
                    )
                if position != reported:
                    stage, reported = QueueStage(position, len(self._waiting)), position
                else:
                    stage = None
                    self._changed.wait(QUEUE_POLL_SECONDS)
            if stage is not None:
                report(stage)


class RateLimiter:
    """Token buckets per (client, kind): ``kind`` names a limit, e.g. ``"analyze"``.

    ``limits`` maps each kind to (requests per second, burst size); it is read on every check,
    so a changed configuration applies to new buckets at once.
    """

    def __init__(self, limits: Callable[[], dict[str, tuple[float, float]]]):
        self._limits = limits
        self._buckets: dict[tuple[str, str], list[float]] = {}  # -> [tokens, last update]
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def check(self, client: str, kind: str) -> None:
        """Spend one request of ``kind`` for ``client`` or raise AtlasError('rate_limited')."""
        rate, burst = self._limits()[kind]
        if rate <= 0:
            return  # no limit
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get((client, kind), (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[(client, kind)] = [tokens, now]
                wait = (1 - tokens) / rate
                raise AtlasError(
                    "rate_limited", f"too many {kind} requests from this client; wait {wait:.1f} s and try again", 429
                )
            self._buckets[(client, kind)] = [tokens - 1, now]
            if now - self._last_sweep > IDLE_CLIENT_SECONDS:
                self._sweep(now)

    def forget(self, client: str) -> None:
        with self._lock:
            for bucket in [bucket for bucket in self._buckets if bucket[0] == client]:
                del self._buckets[bucket]

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for bucket, (_, last) in list(self._buckets.items()):
            if now - last > IDLE_CLIENT_SECONDS:
                del self._buckets[bucket]


def rate_limits(config) -> dict[str, tuple[float, float]]:
    """(rate per second, burst) per kind of request, from the configuration."""
    analyses = config["RATE_ANALYZE_PER_MINUTE"]
    events = config["RATE_EVENTS_PER_SECOND"]
    return {
        "analyze": (analyses / 60.0, max(1.0, config["RATE_ANALYZE_BURST"])),
        "event": (events, max(1.0, 2.0 * events)),
    }
