"""The Socket.IO transport: each event is looked up in the request table (app/requests.py) and
handed to the dispatcher, which admits it and runs its handler; answers go to the requesting
client only. Work other than a cached answer runs in a background task and is dropped from its
queue when that client disconnects."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import socketio as python_socketio
from flask_socketio import Namespace

from app import limits, presenter
from app.dispatch import FLOODED_BURST_SECONDS, Call, Dispatcher
from app.extensions import socketio
from app.protocol import NAMESPACE, AtlasError, request_id
from app.requests import SOCKET_EVENTS, Cost

log = logging.getLogger(__name__)
SOCKETIO_CHANNEL = "attention-atlas"  # the Redis pub/sub channel of Socket.IO messages (web processes and workers)

# A binary Socket.IO packet leaves as several Engine.IO messages (header, then attachments), and
# python-socketio sends them one by one: two threads emitting at once (a stream and a detail
# answer, or two clients' streams) can interleave them, and a client then assembles one answer
# from the pieces of another. Every send of this process takes this lock (encoding and queueing
# only; nothing here waits on the network).
_SENDING = threading.Lock()
FLOODS_BEFORE_SUSPENSION = 5  # sockets of one address closed for flooding before it is suspended...
SUSPENSION_SECONDS = 60  # ...from opening new ones for this long, doubled each time it floods again...
MAX_SUSPENSION_SECONDS = 3600  # ...up to an hour
FLOODING_REMEMBERED_SECONDS = 3600  # an address suspended this long ago or less has flooded before
REFUSALS_AFTER_FLOODING = 3  # refusals in a row a connection from such an address may have
REFUSALS = ("rate_limited", "busy")  # answers that tell a client to wait: counted per connection
CLOSED_FOR_REFUSALS = "this connection kept sending after being told to wait, so the server closed it; reload the page"


class OrderedManager(python_socketio.Manager):
    """The default client manager, sending each packet's messages back to back."""

    def emit(self, *args, **kwargs):
        with _SENDING:
            return super().emit(*args, **kwargs)


class OrderedRedisManager(python_socketio.RedisManager):
    """The Redis message queue, delivering each packet's messages back to back (a local emit
    and one arriving from another process both end in ``_handle_emit``)."""

    def _handle_emit(self, message):
        with _SENDING:
            return super()._handle_emit(message)


def no_delay(wsgi_app):
    """Send each WebSocket frame at once on Werkzeug's server (``python -m app serve``).

    An answer with binary arrays is several frames; with Nagle's algorithm on, the second waits
    for the client's delayed ACK, adding ~40 ms to every request. Gunicorn already sets
    TCP_NODELAY on its sockets; Werkzeug does not.
    """

    def app(environ, start_response):
        connection = environ.get("werkzeug.socket")
        if connection is not None and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return wsgi_app(environ, start_response)

    return app


class Sockets:
    """Engine.IO connections open in this process, per client address.

    Every connection holds a thread for its life (the threading server of the Procfile), so the
    process caps them below its thread count and pages always find a free thread; one address
    gets at most ``MAX_SOCKETS_PER_ADDRESS`` (a class behind one NAT, two tabs each), opens new
    ones at :func:`connect_limit`'s rate, and none for a while after its sockets were closed for
    flooding (:meth:`closed_for_flooding`). A refused connection is answered 401 with a message
    saying why, before it holds anything.
    """

    def __init__(self, config):
        self.config = config
        self.connects = limits.RateLimiter(
            lambda: {
                "connect": connect_limit(config),
                "connect after flooding": connect_limit(config, FLOODED_BURST_SECONDS),
                "closed": (1 / 60, FLOODS_BEFORE_SUSPENSION - 1),
            }
        )
        self._suspensions: dict[str, tuple[int, float]] = {}  # address -> (suspensions in a row, last flood)
        self._address: dict[str, str] = {}  # engine.io sid -> client address
        self._per_address: dict[str, int] = {}
        self._lock = threading.Lock()

    def install(self, server) -> None:
        """Wrap the python-socketio server's Engine.IO handlers: connect and disconnect count,
        and a malformed packet costs one log line instead of a traceback."""
        eio = server.eio
        connect, disconnect, message = (eio.handlers[name] for name in ("connect", "disconnect", "message"))

        def on_connect(eio_sid, environ, *args):
            refusal = self.admit(eio_sid, environ.get("REMOTE_ADDR") or "unknown")
            return refusal if refusal else connect(eio_sid, environ, *args)

        def on_disconnect(eio_sid, *args):
            self.release(eio_sid)
            return disconnect(eio_sid, *args)

        def on_message(eio_sid, data):
            try:
                return message(eio_sid, data)
            except Exception as error:  # the packet did not parse, or named what it cannot
                log.warning("malformed Socket.IO packet from %s: %s: %s", eio_sid, type(error).__name__, error)

        eio.on("connect", on_connect)
        eio.on("disconnect", on_disconnect)
        eio.on("message", on_message)

    def admit(self, eio_sid: str, address: str) -> str | None:
        """Count a new connection; returns the refusal message when it is over a cap."""
        with self._lock:
            here = self._per_address.get(address, 0)
            if len(self._address) >= self.config["MAX_SOCKETS"]:
                refusal = "the server holds as many connections as it can; try again in a minute"
            elif here >= self.config["MAX_SOCKETS_PER_ADDRESS"]:
                refusal = f"too many connections ({here}) from this address; close some tabs and reload"
            elif self._suspended_until(address) > time.monotonic():
                refusal = "connections from this address kept flooding the server; wait a minute and reload"
            elif not self.connects.spend(address, "connect after flooding" if self._flooded(address) else "connect"):
                refusal = "too many new connections from this address; wait a minute and reload"
            else:
                self._address[eio_sid] = address
                self._per_address[address] = here + 1
                return None
        log.warning("refused a Socket.IO connection from %s: %s", address, refusal)
        return refusal

    def closed_for_flooding(self, address: str) -> None:
        """One of ``address``'s sockets was closed for flooding. After
        :data:`FLOODS_BEFORE_SUSPENSION` in a row (one a minute is forgiven), the address may open
        no new socket for :data:`SUSPENSION_SECONDS`: a client that reconnects to flood again
        cost the server a handshake and a burst of refusals each time. Sockets already open stay
        open, so the rest of a class behind that address keeps working. Each suspension that
        begins within :data:`FLOODING_REMEMBERED_SECONDS` of its last flood is twice as long: a client
        that waits out its minute to flood again (every 70 s in the hostile load test) finds
        the next one longer."""
        if self.connects.spend(address, "closed"):
            return
        with self._lock:
            now = time.monotonic()
            remembered = now - FLOODING_REMEMBERED_SECONDS
            self._suspensions = {key: value for key, value in self._suspensions.items() if value[1] >= remembered}
            count = self._suspensions.get(address, (0, now))[0]
            if self._suspended_until(address) <= now:  # a new suspension, not one extended
                count += 1
                log.warning("suspended new Socket.IO connections from %s for %d s", address, suspension_seconds(count))
            self._suspensions[address] = (count, now)  # suspended until now + suspension_seconds(count)

    def flooded_before(self, address: str) -> bool:
        """Whether ``address`` flooded (was suspended) within :data:`FLOODING_REMEMBERED_SECONDS`:
        its connections are then closed after :data:`REFUSALS_AFTER_FLOODING` refusals in a row,
        not ``REFUSALS_BEFORE_CLOSING``. The hostile load test's attacker came back with 100
        sockets when its minute was up, and each was answered 20 refusals before it was closed."""
        with self._lock:
            return self._flooded(address)

    def _suspended_until(self, address: str) -> float:
        """When ``address``'s suspension ends (in the past when it has none), under the lock."""
        count, last = self._suspensions.get(address, (0, 0.0))
        return last + suspension_seconds(count) if count else 0.0

    def _flooded(self, address: str) -> bool:
        """:meth:`flooded_before`, under the lock. Such an address also opens new sockets with a
        second's burst (the attacker came back with 100 at once when its suspension was up)."""
        suspension = self._suspensions.get(address)
        return suspension is not None and time.monotonic() - suspension[1] <= FLOODING_REMEMBERED_SECONDS

    def release(self, eio_sid: str) -> None:
        with self._lock:
            address = self._address.pop(eio_sid, None)
            if address is not None:
                self._per_address[address] -= 1
                if not self._per_address[address]:
                    del self._per_address[address]

    @property
    def open(self) -> int:
        return len(self._address)


def suspension_seconds(count: int) -> float:
    """How long an address's ``count``-th suspension in a row lasts."""
    return min(MAX_SUSPENSION_SECONDS, SUSPENSION_SECONDS * 2 ** min(count - 1, 16))


def connect_limit(config, burst_seconds: float | None = None) -> tuple[float, float]:
    """(new connections per second, burst) of one address: a person's reloads times the people
    it may stand for, so a class may all connect at once but a client that is closed for
    flooding cannot come straight back with new sockets. ``burst_seconds``: a burst of that
    many seconds of the rate instead (an address that flooded before)."""
    people, per_minute = config["CLIENTS_PER_ADDRESS"], config["RATE_CONNECTS_PER_MINUTE"]
    rate = people * per_minute / 60.0
    if burst_seconds is not None:
        return rate, max(1.0, rate * burst_seconds)
    return rate, people * max(1.0, per_minute / 3)


def client_manager(redis_url: str | None, channel: str):
    return OrderedRedisManager(redis_url, channel=channel) if redis_url else OrderedManager()


class AtlasNamespace(Namespace):
    def __init__(self, dispatcher: Dispatcher, sockets: Sockets):
        super().__init__(NAMESPACE)
        self.dispatcher, self.sockets = dispatcher, sockets
        self.rooms = presenter.RoomEvents(
            presenter.rooms_for(dispatcher.service.config), lambda: socketio.server, NAMESPACE
        )
        self._gone: dict[str, threading.Event] = {}  # sid -> set when that client disconnects
        self._stops: dict[tuple[str, object], threading.Event] = {}  # (sid, rid) -> set when cancelled
        self._lock = threading.Lock()
        config = dispatcher.service.config
        self.refusals = limits.RateLimiter(
            lambda: {
                "refusal": (config["REFUSALS_PER_SECOND"], config["REFUSALS_BEFORE_CLOSING"]),
                "refusal after flooding": (
                    config["REFUSALS_PER_SECOND"],
                    min(REFUSALS_AFTER_FLOODING, config["REFUSALS_BEFORE_CLOSING"]),
                ),
            }
        )

    def trigger_event(self, event: str, *args):
        """Route every client event through the table; unknown or malformed ones get an error."""
        sid, data = args[0], (args[1] if len(args) > 1 else None)
        if event == "connect" and sid not in self._gone:  # a later "connect" is a client's message
            with self._lock:
                self._gone[sid] = threading.Event()
            return super().trigger_event(event, *args)
        if event == "disconnect" and self._left(sid):
            self._leave(sid)
            self.rooms.disconnected(sid)
            return super().trigger_event(event, *args)
        rid = request_id(data)
        try:
            address = self._address(sid)
            with self.dispatcher.turns.take(address):
                request, fields = self.dispatcher.parse(sid, SOCKET_EVENTS.get(event), event, data)
                stop = threading.Event()
                call = self._call(sid, address, request, rid, stop)
                if request.cost in (Cost.CACHED, Cost.ROOM):
                    self._answer(call, self.dispatcher.run(call, fields))
                    return
                admission = contextlib.ExitStack()  # limits are checked now, the job held until the task ends
                admission.enter_context(self.dispatcher.admit(call))
                if rid is not None:
                    with self._lock:
                        self._stops[(sid, rid)] = stop
            socketio.start_background_task(self._work, call, fields, admission)
        except AtlasError as error:
            self._emit(sid, "error", error.payload(rid))
            if error.code in REFUSALS:
                self._struck(sid)
        except Exception:
            log.exception("event %s failed", event)
            self._emit(sid, "error", AtlasError("internal", "the server failed on this request").payload(rid))

    def _work(self, call: Call, fields: dict, admission: contextlib.ExitStack) -> None:
        """A background task: run an admitted call; every failure becomes one ``error`` event."""
        try:
            with self.dispatcher.turns.take(call.address):
                self._answer(call, self.dispatcher.execute(call, fields))
        except AtlasError as error:
            call.emit("error", error.payload(call.rid))
        except Exception:
            log.exception("request %s %r failed", call.request.name, call.rid)
            call.emit(
                "error",
                AtlasError("internal", "the server failed on this request; it has been logged").payload(call.rid),
            )
        finally:
            admission.close()
            with self._lock:
                self._stops.pop((call.client, call.rid), None)

    def _answer(self, call: Call, payload: dict | None) -> None:
        if payload is not None:  # None: the handler streamed its answer, or a room answered itself
            call.emit(call.request.name, {"rid": call.rid, **payload})

    def _call(self, sid: str, address: str, request, rid, stop: threading.Event) -> Call:
        """A call that ends when its client leaves or cancels it (``stop``)."""
        with self._lock:
            gone = self._gone.setdefault(sid, threading.Event())

        def ended() -> bool:
            return gone.is_set() or stop.is_set()

        return Call(
            self.dispatcher.service,
            request,
            sid,
            rid,
            self._emitter(sid, ended),
            ended,
            live=True,
            rooms=self.rooms,
            address=address,
            cancel=lambda target: self._cancel(sid, target),
        )

    def _address(self, sid: str) -> str:
        environ = self.server.get_environ(sid, NAMESPACE) or {}
        return environ.get("REMOTE_ADDR") or "unknown"

    def _struck(self, sid: str) -> None:
        """A refused request: a connection refused more often than the ``refusal`` limit allows
        (it kept sending after being told to wait) is told so and closed. Each refusal is an
        answer, and a flood of them cost the server as much as answering the requests would.
        A connection from an address that has flooded before has fewer (:meth:`Sockets.flooded_before`)."""
        address = self._address(sid)
        kind = "refusal after flooding" if self.sockets.flooded_before(address) else "refusal"
        if self.refusals.spend(sid, kind):
            return
        log.warning("closed Socket.IO connection %s: it kept sending after being refused", sid)
        self._emit(sid, "error", AtlasError("rate_limited", CLOSED_FOR_REFUSALS, 429).payload(None))
        self.sockets.closed_for_flooding(address)
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is not None:
            self.server.eio.disconnect(eio_sid)

    def _cancel(self, sid: str, rid) -> bool:
        """Stop ``sid``'s request ``rid`` if it is still running: it leaves the queue, or stops at
        its next check (between generated tokens), and sends nothing more."""
        with self._lock:
            stop = self._stops.get((sid, rid))
        if stop is not None:
            stop.set()
        return stop is not None

    def _left(self, sid: str) -> bool:
        """Whether ``sid`` is really leaving: Socket.IO passes on a client message named
        "disconnect" like any event, but marks a leaving sid as disconnected first."""
        return not self.server.manager.is_connected(sid, NAMESPACE)

    def _leave(self, sid: str) -> None:
        with self._lock:
            gone = self._gone.pop(sid, None)
        if gone:
            gone.set()  # its queued jobs leave the queue; its streams stop sending
        self.dispatcher.limiter.forget(sid)
        self.refusals.forget(sid)

    def _emitter(self, sid: str, ended: Callable[[], bool]):
        def emit(event: str, payload: dict) -> None:
            if ended():
                return  # nobody to send to; the work that produced this is already done
            self._emit(sid, event, limits.wire_progress(event, payload))

        return emit

    def _emit(self, sid: str, event: str, payload: dict) -> None:
        socketio.emit(event, payload, to=sid, namespace=NAMESPACE)
