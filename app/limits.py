"""Admission control: what one client may ask for, and how model work waits its turn.

- :class:`RateLimiter`: token buckets per client (a socket connection or an HTTP address), so
  one tab that loops on ``analyze`` cannot crowd out a lecture hall.
- :class:`JobQueue`: one bounded queue per device (and one for CPU work), served in turn by
  address. Model work (loading, forward passes, generation) runs ``workers`` jobs at a time; at
  most ``capacity`` wait, later ones are told ``busy`` at once; waiting jobs hear their
  position; a job whose client left is dropped.
- :func:`cancel_scope`: marks the work of one request as abandoned when its client disconnects.
- :class:`ModelThreads`: the threads model work runs on, at a lower CPU priority than the
  threads that answer (``MODEL_NICE``).
- :class:`Turns`: how many of an address's requests are handled at once; the others wait.

Everything here answers with :class:`AtlasError` (``rate_limited``, ``busy``), before any model
work starts. Cached answers never pass through a queue, so a slow job cannot delay them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.cores import FreeCores, sized_team
from app.protocol import AtlasError

log = logging.getLogger(__name__)

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


class Turns:
    """At most ``per_key`` threads of one address handle requests at once; the others wait.

    Python runs one thread at a time, so an address with 100 requests in progress took 100 times
    the CPU of one with a single request, whatever its rates: a client with a few flooding
    sockets made everyone's cached answers 20x slower. With a turn per request, an address gets
    no more than ``per_key`` threads however many sockets it opens, and a class behind one NAT
    loses nothing: its requests take milliseconds each, and two threads already use the one
    interpreter fully. A thread waiting here reads nothing more from its socket, so a flood
    slows itself down. Waiting for the model or the CPU queue, or for another request's
    computation, gives the turn back (:func:`turn_given_back`): a long job never holds one.
    More than ``max_waiting`` waiting threads of one address are answered ``busy``.
    """

    def __init__(self, per_key: int, max_waiting: int):
        self.per_key, self.max_waiting = per_key, max_waiting
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyTurns] = {}

    def configure(self, per_key: int, max_waiting: int) -> Turns:
        """Apply limits read from the configuration (on each use, so a change applies at once)."""
        self.per_key, self.max_waiting = per_key, max_waiting
        return self

    @contextlib.contextmanager
    def take(self, key: str) -> Iterator[None]:
        """Hold one of address ``key``'s turns for the body of the ``with`` block."""
        if self.per_key <= 0:
            yield  # no limit
            return
        self._acquire(key, refuse=True)
        token = _TURN.set(_Held(self, key))
        try:
            yield
        finally:
            _TURN.reset(token)
            self._release(key)

    def held(self, key: str) -> int:
        """Turns of ``key`` held now."""
        with self._lock:
            entry = self._keys.get(key)
            return entry.held if entry else 0

    def _acquire(self, key: str, refuse: bool) -> None:
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                entry = self._keys[key] = _KeyTurns(threading.Condition(self._lock))
            if refuse and entry.held >= self.per_key and entry.waiting >= self.max_waiting:
                raise AtlasError(
                    "busy", f"too many requests from this address are in progress ({entry.waiting} waiting)", 429
                )
            entry.waiting += 1
            while entry.held >= self.per_key:
                entry.ready.wait()
            entry.waiting -= 1
            entry.held += 1

    def _release(self, key: str) -> None:
        with self._lock:
            entry = self._keys[key]
            entry.held -= 1
            if entry.waiting:
                entry.ready.notify()
            elif not entry.held:
                del self._keys[key]


@dataclass
class _KeyTurns:
    ready: threading.Condition
    held: int = 0
    waiting: int = 0


@dataclass
class _Held:
    turns: Turns
    key: str  # the address


_TURN: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("atlas_turn", default=None)


@contextlib.contextmanager
def turn_given_back() -> Iterator[None]:
    """Give the current thread's turn (:class:`Turns`) back for the body of the ``with`` block,
    and wait for one again after it: for waiting on a queue or on another thread's work."""
    held = _TURN.get()
    if held is None:
        yield
        return
    held.turns._release(held.key)
    token = _TURN.set(None)
    try:
        yield
    finally:
        _TURN.reset(token)
        held.turns._acquire(held.key, refuse=False)


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
    """A bounded queue of work for one device (the model's) or for the CPU.

    The caller's own thread waits for its turn and runs the job, so errors, progress and
    cancellation stay with the request that caused them. Waiting jobs are served in turn by
    owner (the client address holding the caller's :class:`Turns`): round ``k`` runs each
    owner's ``k``-th job, owners served longest ago first, so one address with many jobs waiting
    delays another's next job by at most one of its own. One owner holds at most half the places.
    """

    def __init__(self, capacity: int, workers: int = 1, max_wait_seconds: float = 300.0):
        self.capacity = capacity  # jobs allowed to wait (running ones not counted)
        self.workers = workers  # jobs running at once
        self.max_wait_seconds = max_wait_seconds
        self._waiting: list[_Ticket] = []
        self._running = 0
        self._arrivals = 0
        self._served: dict[str, int] = {}  # owner -> arrival number of its last job to start
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

        Raises AtlasError('busy') when ``capacity`` jobs already wait (or half of them are the
        owner's) or the wait exceeds ``max_wait_seconds``, and :class:`JobCancelled` when the
        client leaves while waiting. ``report(stage)`` hears each change of position (not
        called under the queue's lock). The caller's turn (:class:`Turns`) is given back while
        it waits and works here.
        """
        held = _TURN.get()
        owner = held.key if held else ""
        with turn_given_back():
            with self._changed:
                self._arrivals += 1
                ticket = _Ticket(owner, self._arrivals)
                queued = self._running >= self.workers or bool(self._waiting)
                if queued:
                    self._enqueue(ticket)
                else:
                    self._start(ticket)
            if queued:
                self._wait_for_turn(ticket, report or (lambda stage: None))
            try:
                yield
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()

    def _enqueue(self, ticket: _Ticket) -> None:
        if len(self._waiting) >= self.capacity:
            raise AtlasError(
                "busy",
                f"the server is busy ({len(self._waiting)} requests are waiting for the model); try again in a minute",
                503,
            )
        mine = sum(waiting.owner == ticket.owner for waiting in self._waiting)
        if ticket.owner and mine >= max(1, self.capacity // 2):
            raise AtlasError(
                "busy", f"{mine} requests from this address are already waiting; try again when they are done", 429
            )
        self._waiting.append(ticket)

    def _start(self, ticket: _Ticket) -> None:
        self._running += 1
        self._served[ticket.owner] = ticket.arrival
        if len(self._served) > 4 * max(1, self.capacity):  # forget owners served long ago
            for owner in sorted(self._served, key=self._served.get)[: len(self._served) // 2]:
                del self._served[owner]

    def _order(self) -> list[_Ticket]:
        """The waiting jobs in the order they will run (round robin by owner)."""
        rounds: dict[str, int] = {}
        keyed = []
        for ticket in self._waiting:  # in arrival order
            rank = rounds[ticket.owner] = rounds.get(ticket.owner, -1) + 1
            keyed.append(((rank, self._served.get(ticket.owner, 0), ticket.arrival), ticket))
        return [ticket for _, ticket in sorted(keyed, key=lambda pair: pair[0])]

    def _wait_for_turn(self, ticket: _Ticket, report: Callable[[QueueStage], None]) -> None:
        deadline = time.monotonic() + self.max_wait_seconds
        reported = None
        while True:
            with self._changed:
                position = self._order().index(ticket) + 1
                if position == 1 and self._running < self.workers:
                    self._waiting.remove(ticket)
                    self._start(ticket)
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


@dataclass(eq=False)
class _Ticket:
    owner: str
    arrival: int


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
        wait = self._take(client, kind)
        if wait > 0:
            raise AtlasError(
                "rate_limited", f"too many {kind} requests from this client; wait {wait:.1f} s and try again", 429
            )

    def spend(self, client: str, kind: str) -> bool:
        """Spend one request of ``kind`` for ``client``; False (nothing spent) when over the limit."""
        return self._take(client, kind) == 0

    def _take(self, client: str, kind: str) -> float:
        """Spend one token and return 0, or return the seconds until one is there."""
        rate, burst = self._limits()[kind]
        if rate <= 0:
            return 0.0  # no limit
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get((client, kind), (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[(client, kind)] = [tokens, now]
                return (1 - tokens) / rate
            self._buckets[(client, kind)] = [tokens - 1, now]
            if now - self._last_sweep > IDLE_CLIENT_SECONDS:
                self._sweep(now)
            return 0.0

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


class ModelThreads:
    """The threads model work runs on (loading, forward passes, generation), niced by ``nice``.

    A forward pass keeps both cores busy for seconds (its thread, torch's OpenMP team, the blocked
    pass's threads), while the answers every other client waits for (cached analyses, details,
    pages) take milliseconds. At a lower priority the pass gives those a core at once instead of
    sharing it with them (docs/reliability.md). Niceness is a thread's on Linux and is inherited
    by the threads it starts, so these threads are niced when they start, before torch makes
    their OpenMP team; an unprivileged thread could not lower it again, so they only do model
    work. Elsewhere (no per-thread niceness) they run at the process's priority.
    """

    def __init__(self, workers: int, nice: int):
        self._pool = ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="atlas-model", initializer=lower_priority, initargs=(nice,)
        )
        self._cores: FreeCores | None = None
        if nice > 0 and sys.platform == "linux":
            import torch

            self._cores = FreeCores(torch.get_num_threads())

    def run(self, work: Callable, *args):
        """``work(*args)`` on a model thread, in the caller's context (its cancel scope); waits."""
        return self._pool.submit(contextvars.copy_context().run, self._sized, work, *args).result()

    def _sized(self, work: Callable, *args):
        """``work(*args)`` with torch's team sized to the cores free now (:mod:`app.cores`): a
        niced team on a core that other work keeps busy makes every operation wait for it."""
        if self._cores is None:
            return work(*args)
        with sized_team(self._cores):
            return work(*args)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's priority by ``nice`` (Linux; elsewhere nothing): for threads
    that do background work only, since an unprivileged thread cannot raise it again."""
    if nice <= 0 or sys.platform != "linux":  # elsewhere PRIO_PROCESS with a thread id names a process
        return
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
    except OSError as error:  # a container without the right to change it: run at the usual priority
        log.warning("a background thread keeps the process's priority: %s", error)
