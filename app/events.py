"""The Socket.IO namespace: validate each message, then hand work to the streamer or the
shaper. Long work runs in a background task that emits to the requesting client only."""
from __future__ import annotations

import logging

from flask_socketio import Namespace

from app import stream
from app.extensions import socketio
from app.protocol import NAMESPACE, REQUESTS, AtlasError, parse_request, request_id
from app.service import AtlasService

log = logging.getLogger(__name__)

class AtlasNamespace(Namespace):
    def __init__(self, service: AtlasService):
        super().__init__(NAMESPACE)
        self.service = service

    def trigger_event(self, event: str, *args):
        """Route every client event through validation; unknown or malformed ones get an error."""
        if event in ("connect", "disconnect"):
            return super().trigger_event(event, *args)
        sid, data = args[0], (args[1] if len(args) > 1 else None)
        rid = request_id(data)
        try:
            if event not in REQUESTS:
                raise AtlasError("bad_request", f"unknown event '{event}'")
            rid, fields = parse_request(event, data)
            if event in stream.STREAMS:
                socketio.start_background_task(stream.STREAMS[event], self.service, self._emitter(sid), rid, fields)
            else:
                self._emit(sid, event, {"rid": rid, **stream.detail(self.service, event, fields)})
        except AtlasError as error:
            self._emit(sid, "error", error.payload(rid))
        except Exception:
            log.exception("event %s failed", event)
            self._emit(sid, "error", AtlasError("internal", "the server failed on this request").payload(rid))

    def _emitter(self, sid: str):
        return lambda event, payload: self._emit(sid, event, payload)

    def _emit(self, sid: str, event: str, payload: dict) -> None:
        socketio.emit(event, payload, to=sid, namespace=NAMESPACE)
