"""The Socket.IO namespace: check each message (rate, size of the client's share, fields), then
hand work to the streamer or the shaper. Long work runs in a background task that emits to the
requesting client only, and is dropped from the model queue when that client disconnects."""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field

import socketio as python_socketio
from flask_socketio import Namespace

from app import limits, presenter, stream
from app.extensions import socketio
from app.protocol import NAMESPACE, REQUESTS, AtlasError, parse_request, request_id
from app.service import AtlasService

log = logging.getLogger(__name__)

# A binary Socket.IO packet leaves as several Engine.IO messages (header, then attachments), and
# python-socketio sends them one by one: two threads emitting at once (a stream and a detail
# answer, or two clients' streams) can interleave them, and a client then assembles one answer
# from the pieces of another. Every send of this process takes this lock (encoding and queueing
# only; nothing here waits on the network).
_SENDING = threading.Lock()


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


MAX_STREAM_LAYERS = 64  # layers one analyze/open request may ask to have streamed with it


def check_layers(layers) -> None:
    """``layers`` of a stream request: at most MAX_STREAM_LAYERS integers (not booleans, which
    Python counts as integers and numpy reads as masks)."""
    if not layers:
        return
    if len(layers) > MAX_STREAM_LAYERS or not all(type(layer) is int for layer in layers):
        raise AtlasError("bad_request", f"'layers' must be a list of at most {MAX_STREAM_LAYERS} layer indices")


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


def client_manager(redis_url: str | None, channel: str):
    return OrderedRedisManager(redis_url, channel=channel) if redis_url else OrderedManager()


@dataclass
class Client:
    """One connection: whether it has gone, and how many of its streams are running."""

    gone: threading.Event = field(default_factory=threading.Event)
    streams: int = 0


class AtlasNamespace(Namespace):
    def __init__(self, service: AtlasService, limiter: limits.RateLimiter):
        super().__init__(NAMESPACE)
        self.service = service
        self.limiter = limiter
        self.rooms = presenter.RoomEvents(presenter.Rooms(), lambda: socketio.server, NAMESPACE)
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def trigger_event(self, event: str, *args):
        """Route every client event through validation; unknown or malformed ones get an error."""
        sid, data = args[0], (args[1] if len(args) > 1 else None)
        if event == "connect" and sid not in self._clients:  # a later "connect" is a client's message
            self._client(sid)
            return super().trigger_event(event, *args)
        if event == "disconnect" and self._left(sid):
            self._leave(sid)
            self.rooms.disconnected(sid)
            return super().trigger_event(event, *args)
        rid = request_id(data)
        try:
            self.limiter.check(sid, "event")
            if event not in REQUESTS:
                raise AtlasError("bad_request", f"unknown event '{event}'")
            rid, fields = parse_request(event, data)
            if event in presenter.EVENTS:
                self.rooms.handle(sid, event, rid, fields)
            elif event in stream.STREAMS:
                check_layers(fields.get("layers"))
                self.limiter.check(sid, "analyze")
                client = self._start_stream(sid)
                socketio.start_background_task(self._stream, stream.STREAMS[event], sid, client, rid, fields)
            else:
                self._emit(sid, event, {"rid": rid, **stream.detail(self.service, event, fields)})
        except AtlasError as error:
            self._emit(sid, "error", error.payload(rid))
        except Exception:
            log.exception("event %s failed", event)
            self._emit(sid, "error", AtlasError("internal", "the server failed on this request").payload(rid))

    def _left(self, sid: str) -> bool:
        """Whether ``sid`` is really leaving: Socket.IO passes on a client message named
        "disconnect" like any event, but marks a leaving sid as disconnected first."""
        return not self.server.manager.is_connected(sid, NAMESPACE)

    def _client(self, sid: str) -> Client:
        with self._lock:
            return self._clients.setdefault(sid, Client())

    def _leave(self, sid: str) -> None:
        with self._lock:
            client = self._clients.pop(sid, None)
        if client:
            client.gone.set()  # its queued jobs leave the queue; its streams stop sending
        self.limiter.forget(sid)

    def _start_stream(self, sid: str) -> Client:
        """Count one more running stream for this client, or refuse with ``busy``."""
        client, most = self._client(sid), self.service.config["MAX_JOBS_PER_CLIENT"]
        with self._lock:
            if client.streams >= most:
                raise AtlasError("busy", f"this client already has {client.streams} analyses in progress; wait for "
                                         "one to finish", 429)
            client.streams += 1
        return client

    def _stream(self, run, sid: str, client: Client, rid, fields: dict) -> None:
        try:
            with limits.cancel_scope(client.gone.is_set):
                run(self.service, self._emitter(sid, client), rid, fields)
        finally:
            with self._lock:
                client.streams -= 1

    def _emitter(self, sid: str, client: Client):
        def emit(event: str, payload: dict) -> None:
            if client.gone.is_set():
                return  # nobody to send to; the work that produced this is already done
            stage = payload.get("stage") if event == "progress" else None
            if isinstance(stage, limits.QueueStage):
                payload = {**payload, "stage": str(stage), "position": stage.position}
            self._emit(sid, event, payload)

        return emit

    def _emit(self, sid: str, event: str, payload: dict) -> None:
        socketio.emit(event, payload, to=sid, namespace=NAMESPACE)
