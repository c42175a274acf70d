"""Admission and running of one request from the table (:mod:`app.requests`), the same for a
Socket.IO event and an HTTP call: per-client rate limits, the per-client job cap, the cancel
scope, the queue of its kind, and the memo of derived results.

A transport (app/events.py, app/routes.py) parses nothing and limits nothing itself: it builds
a :class:`Call` (who asks, where answers go) and hands it to :meth:`Dispatcher.run`, within
its address's turn (:attr:`Dispatcher.turns`), which it takes because sending the answer is its
part of the work.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app import limits
from app.memo import pack_payload, unpack_payload
from app.protocol import AtlasError, parse_request
from app.requests import Cost, Request

Emit = Callable[[str, dict], None]  # (event, payload) to the one client of a call

# What each kind of cost pays before it runs. ``analyze`` is the per-minute limit on model work.
RATE_LIMITS = {
    Cost.CACHED: ("event",),
    Cost.CPU: ("event",),
    Cost.MODEL: ("event", "analyze"),
    Cost.STREAM: ("event",),
    Cost.ROOM: ("event",),
}
JOB_CAPS = {
    Cost.MODEL: "MAX_JOBS_PER_CLIENT",
    Cost.STREAM: "MAX_JOBS_PER_CLIENT",
    Cost.CPU: "MAX_CPU_JOBS_PER_CLIENT",
}  # config setting capping a client's jobs of that kind


@dataclass
class Call:
    """One request in progress: who asked (a socket id or an HTTP client address), how to
    answer, and whether that client is still there."""

    service: Any  # app.service.AtlasService
    request: Request
    client: str
    rid: Any
    emit: Emit
    gone: Callable[[], bool] = lambda: False
    live: bool = True  # send progress and per-layer events (a socket; HTTP answers once)
    rooms: Any = None  # app.presenter.RoomEvents, for socket calls
    address: str | None = None  # a socket's client address, which pays limits of its own too
    cancel: Callable[[Any], bool] = lambda rid: False  # stop this client's request ``rid`` (a socket's)


@dataclass
class JobCount:
    """Jobs in progress per (client, cap), so one client cannot hold every queue place."""

    running: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def hold(self, client: str, cap: str, most: int) -> Iterator[None]:
        slot = (client, cap)
        with self.lock:
            count = self.running.get(slot, 0)
            if count >= most:
                raise AtlasError(
                    "busy",
                    f"this client already has {count} requests of this kind in progress; wait for one to finish",
                    429,
                )
            self.running[slot] = count + 1
        try:
            yield
        finally:
            with self.lock:
                self.running[slot] -= 1
                if not self.running[slot]:
                    del self.running[slot]


def rate_limits(config) -> dict[str, tuple[float, float]]:
    """(rate per second, burst) per kind of limit a request may pay: app.limits' own, and short
    links (each one is a file on the server's disk)."""
    links = config["RATE_LINKS_PER_MINUTE"]
    return {**limits.rate_limits(config), "link": (links / 60.0, max(1.0, links / 2))}


# An address's burst of requests of any kind, in seconds of its refill: a class of 60 opening the
# page at once sends a few hundred requests, where a connection's 2 s burst times 60 people (4,800)
# let a flooding machine past its refill for the first seconds of an attack (docs/reliability.md).
ADDRESS_BURST_SECONDS = 5.0
# An address that flooded before (app.events.Sockets.flooded_before) has a second's refill, for
# its requests and its new sockets: the hostile test's attacker waited out its suspension and came
# back with 100 sockets at once, which spent a refilled burst of 600 requests at once.
FLOODED_BURST_SECONDS = 1.0


FLOODED_EVENT = "event after flooding"  # the bucket an address that flooded before pays its events from


def address_limits(config) -> dict[str, tuple[float, float]]:
    """The limits of one address: a connection's times ``CLIENTS_PER_ADDRESS``, the people one
    address may stand for (a class behind one NAT), so many sockets from one machine get no more
    than a class would, and a class is never limited as if it were one person. Requests of any
    kind refill at ``ADDRESS_EVENTS_PER_PERSON`` a person, not a connection's 40 a second: a
    class may all open a page at once (the burst), but 60 people do not each click 40 times a
    second for minutes, and a client whose sockets did was answered 400 times a second."""
    people = config["CLIENTS_PER_ADDRESS"]
    limits_ = {kind: (rate * people, burst * people) for kind, (rate, burst) in rate_limits(config).items()}
    events = config["ADDRESS_EVENTS_PER_PERSON"]
    if events > 0 and limits_["event"][0] > 0:
        limits_["event"] = (events * people, events * people * ADDRESS_BURST_SECONDS)
    rate = limits_["event"][0]
    limits_[FLOODED_EVENT] = (rate, max(1.0, rate * FLOODED_BURST_SECONDS))
    return limits_


class Dispatcher:
    def __init__(self, service, limiter: limits.RateLimiter, remote=None):
        self.service = service
        self.limiter = limiter
        self.remote = remote  # app.tasks.RemoteWork: model rows run on worker processes (MODEL_WORKERS)
        self.address_limiter = limits.RateLimiter(lambda: address_limits(service.config))
        self.jobs = JobCount()
        self.flooded_before: Callable[[str], bool] = lambda address: False  # app.events.Sockets sets it
        self._cpu_queue = limits.JobQueue(1)
        self._turns = limits.Turns(1, 1)

    @property
    def turns(self) -> limits.Turns:
        """Requests one address has handled at once (:class:`app.limits.Turns`), from the
        configuration on each use; as many may wait as the address may open sockets."""
        config = self.service.config
        return self._turns.configure(config["TURNS_PER_ADDRESS"], config["MAX_SOCKETS_PER_ADDRESS"])

    @property
    def cpu_queue(self) -> limits.JobQueue:
        """The queue of CPU work, its limits read from the configuration on each use."""
        config = self.service.config
        return self._cpu_queue.configure(
            config["MAX_QUEUED_CPU_JOBS"], config["CPU_WORKERS"], config["MAX_QUEUE_WAIT_SECONDS"]
        )

    def parse(self, client: str, request: Request | None, name: str, data: Any) -> tuple[Request, dict]:
        """The table's request and its validated fields. A message that is refused here
        (unknown, malformed) still pays the event rate limit, so a flood of them is stopped too."""
        try:
            if request is None:
                raise AtlasError("bad_request", f"unknown request '{name}'", 404)
            return request, parse_request(name, request.fields, data)[1]
        except AtlasError:
            self.limiter.check(client, "event")
            raise

    @contextlib.contextmanager
    def admit(self, call: Call) -> Iterator[None]:
        """Rate limits and job cap of the call's kind of cost (and the extra limits its row
        pays), per client and, for a socket, per address; raises AtlasError (``rate_limited``,
        ``busy``) before any work starts."""
        cost, config = call.request.cost, self.service.config
        flooded = call.address is not None and self.flooded_before(call.address)
        for kind in RATE_LIMITS[cost] + call.request.pays:
            self.limiter.check(call.client, kind)
            if call.address is not None:
                self.address_limiter.check(call.address, FLOODED_EVENT if flooded and kind == "event" else kind)
        cap = JOB_CAPS.get(cost)
        with contextlib.ExitStack() as held:
            if cap:
                held.enter_context(self.jobs.hold(call.client, cap, config[cap]))
            if cap and call.address is not None:
                held.enter_context(
                    self.jobs.hold(f"address {call.address}", cap, config[cap] * config["CLIENTS_PER_ADDRESS"])
                )
            yield

    def run(self, call: Call, fields: dict) -> Any:
        """Admit the call, then answer it: returns a single answer's payload (or a file
        response), or None when the handler streamed its answer through ``call.emit``."""
        with self.admit(call):
            return self.execute(call, fields)

    def execute(self, call: Call, fields: dict) -> Any:
        """Run an admitted call within its cancel scope, queue and memo."""
        request = call.request
        with limits.cancel_scope(call.gone):
            if not request.memoised:
                return self._queued(call, fields)
            name = json.dumps({"request": request.name, **fields}, sort_keys=True)
            arrays = self.service.memo.get_or_compute(
                fields["key"], name, lambda: pack_payload(self._queued(call, fields))
            )
            return unpack_payload(arrays)

    def _here_or_remote(self, call: Call, fields: dict) -> Any:
        """A model row on a web process without models: answered here when it needs no model
        work (a stored analysis), else run on a worker. Its handler raises ModelElsewhere at its
        first model work, before it has sent anything."""
        from app.service import ModelElsewhere

        try:
            return call.request.handler(call, fields)
        except ModelElsewhere:
            return self.remote.run(call, fields)

    def _queued(self, call: Call, fields: dict) -> Any:
        """CPU work waits for a place in the CPU queue (model work takes its device's queue
        inside the service, or a worker's: ``remote``); the rest runs at once."""
        if call.request.cost is Cost.MODEL and self.remote is not None:
            return self._here_or_remote(call, fields)
        if call.request.cost is not Cost.CPU:
            return call.request.handler(call, fields)
        with self.cpu_queue.slot():
            if limits.cancelled():
                raise limits.JobCancelled()
            return call.request.handler(call, fields)
