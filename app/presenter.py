"""Presenter mode: a teacher's view state, followed live by every student in a Socket.IO room.

A room is named by a short join code that students type or scan; only the holder of the room's
secret (returned once, to the presenter) can move it. Join codes are random, not sequential, and
the secret is 128 bits compared in constant time, so nobody drives a room they did not create.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from app.links import LinkError, normalise_query
from app.protocol import AtlasError

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: read aloud and typed by students
CODE_LENGTH = 6  # ~1e9 codes
MAX_ROOMS = 200  # rooms open at once on one server
ROOM_IDLE_SECONDS = 6 * 3600  # a room nobody touches for this long is closed


@dataclass
class Room:
    code: str
    secret: str
    presenter: str  # Socket.IO sid of the presenter
    state: str = ""  # the presenter's view as a share-link query string
    followers: set[str] = field(default_factory=set)
    touched: float = field(default_factory=time.monotonic)


class Rooms:
    """Open rooms of this process. Followers are tracked by sid so a disconnect can leave."""

    def __init__(self):
        self._rooms: dict[str, Room] = {}
        self._lock = threading.Lock()

    def create(self, presenter: str) -> Room:
        with self._lock:
            self._expire()
            if len(self._rooms) >= MAX_ROOMS:
                raise AtlasError("busy", "too many presentations are running on this server; try again later")
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            while code in self._rooms:
                code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            room = self._rooms[code] = Room(code, secrets.token_urlsafe(16), presenter)
            return room

    def get(self, code: object) -> Room:
        room = self._rooms.get(code.upper()) if isinstance(code, str) else None
        if room is None:
            raise AtlasError("not_found", "no presentation with that code is running", 404)
        return room

    def authorised(self, code: object, secret: object) -> Room:
        room = self.get(code)
        if not isinstance(secret, str) or not hmac.compare_digest(secret.encode(), room.secret.encode()):
            raise AtlasError("forbidden", "only the presenter can change this presentation", 403)
        room.touched = time.monotonic()
        return room

    def update(self, code: object, secret: object, state: object) -> Room:
        room = self.authorised(code, secret)
        try:
            room.state = normalise_query(state) if state else ""
        except LinkError as error:
            raise AtlasError("bad_request", str(error)) from None
        return room

    def join(self, code: object, sid: str) -> Room:
        room = self.get(code)
        with self._lock:
            room.followers.add(sid)
        return room

    def leave(self, sid: str) -> list[Room]:
        """Remove ``sid`` from every room it follows; returns the rooms it left."""
        with self._lock:
            left = [room for room in self._rooms.values() if sid in room.followers]
            for room in left:
                room.followers.discard(sid)
            return left

    def end(self, code: object, secret: object) -> Room:
        room = self.authorised(code, secret)
        with self._lock:
            self._rooms.pop(room.code, None)
        return room

    def _expire(self) -> None:
        now = time.monotonic()
        for code in [c for c, room in self._rooms.items() if now - room.touched > ROOM_IDLE_SECONDS]:
            del self._rooms[code]


EVENTS = ("present_start", "present_join", "present_leave", "present_update", "present_end")


class RoomEvents:
    """Socket.IO side of presenter mode. ``get_server`` returns the python-socketio server (rooms
    and emits work across processes when a message queue is configured)."""

    def __init__(self, rooms: Rooms, get_server, namespace: str):
        self.rooms, self.get_server, self.namespace = rooms, get_server, namespace

    @property
    def server(self):
        return self.get_server()

    def handle(self, sid: str, event: str, rid, fields: dict) -> None:
        getattr(self, event)(sid, rid, fields)

    def present_start(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.create(sid)
        self._to(sid, "present_started", {"rid": rid, "code": room.code, "secret": room.secret})

    def present_update(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.update(fields["code"], fields["secret"], fields["state"])
        room.presenter = sid  # a presenter who reconnected keeps the room with the secret
        self.server.emit(
            "present_state", {"code": room.code, "state": room.state}, to=room.code, namespace=self.namespace
        )
        self._followers(room)

    def present_join(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.join(fields["code"], sid)
        self.server.enter_room(sid, room.code, namespace=self.namespace)
        self._to(sid, "present_state", {"rid": rid, "code": room.code, "state": room.state})
        self._followers(room)

    def present_leave(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.get(fields["code"])
        self.rooms.leave(sid)
        self.server.leave_room(sid, room.code, namespace=self.namespace)
        self._followers(room)

    def present_end(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.end(fields["code"], fields["secret"])
        self.server.emit("present_ended", {"code": room.code}, to=room.code, namespace=self.namespace)
        self.server.close_room(room.code, namespace=self.namespace)

    def disconnected(self, sid: str) -> None:
        for room in self.rooms.leave(sid):
            self._followers(room)

    def _followers(self, room: Room) -> None:
        self._to(room.presenter, "present_followers", {"code": room.code, "followers": len(room.followers)})

    def _to(self, sid: str, event: str, payload: dict) -> None:
        self.server.emit(event, payload, to=sid, namespace=self.namespace)
