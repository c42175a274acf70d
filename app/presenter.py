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
MAX_ROOMS_PER_CLIENT = 2  # rooms one connection may hold open (one presenting, one started by mistake)
MAX_ROOMS_PER_ADDRESS = 20  # rooms of one address (every lecture hall behind one NAT)
ROOM_IDLE_SECONDS = 6 * 3600  # a room nobody touches for this long is closed
ROOM_ORPHAN_SECONDS = 10 * 60  # a room whose presenter has been disconnected this long is closed


@dataclass
class Room:
    code: str
    secret: str
    presenter: str  # Socket.IO sid of the presenter
    state: str = ""  # the presenter's view as a share-link query string
    followers: set[str] = field(default_factory=set)
    touched: float = field(default_factory=time.monotonic)
    address: str = ""  # the presenter's address when the room was made
    gone_since: float | None = None  # when the presenter disconnected (None while connected)

    def expired(self, now: float) -> bool:
        orphaned = self.gone_since is not None and now - self.gone_since > ROOM_ORPHAN_SECONDS
        return orphaned or now - self.touched > ROOM_IDLE_SECONDS


class Rooms:
    """Open rooms of this process. Followers are tracked by sid so a disconnect can leave."""

    def __init__(self):
        self._rooms: dict[str, Room] = {}
        self._lock = threading.Lock()

    def create(self, presenter: str, address: str = "") -> Room:
        """A new room presented by ``presenter`` (a sid) from ``address``; raises AtlasError
        ``busy`` past the server's, the address's or the client's number of rooms (rooms
        whose presenter is long gone are closed by :meth:`expire`, which callers run first)."""
        with self._lock:
            rooms = self._rooms.values()
            if len(self._rooms) >= MAX_ROOMS:
                raise AtlasError("busy", "too many presentations are running on this server; try again later")
            if sum(room.presenter == presenter for room in rooms) >= MAX_ROOMS_PER_CLIENT:
                raise AtlasError("busy", "this page already runs a presentation; end it before starting another", 429)
            if address and sum(room.address == address for room in rooms) >= MAX_ROOMS_PER_ADDRESS:
                raise AtlasError("busy", "too many presentations are running from this network; end one first", 429)
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            while code in self._rooms:
                code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            room = self._rooms[code] = Room(code, secrets.token_urlsafe(16), presenter, address=address)
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
        room.touched, room.gone_since = time.monotonic(), None
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

    def leave(self, sid: str, code: object = None) -> list[Room]:
        """Remove ``sid`` from the room of ``code``, or from every room it follows when ``code``
        is None; returns the rooms it left (none when it does not follow that room)."""
        with self._lock:
            left = [
                room
                for room in self._rooms.values()
                if sid in room.followers and (code is None or (isinstance(code, str) and room.code == code.upper()))
            ]
            for room in left:
                room.followers.discard(sid)
            return left

    def disconnected(self, sid: str) -> list[Room]:
        """``sid`` left: it follows nothing any more, and the rooms it presents start to count
        down to :data:`ROOM_ORPHAN_SECONDS`. Returns the rooms it followed."""
        now = time.monotonic()
        with self._lock:
            for room in self._rooms.values():
                if room.presenter == sid and room.gone_since is None:
                    room.gone_since = now
        return self.leave(sid)

    def end(self, code: object, secret: object) -> Room:
        room = self.authorised(code, secret)
        with self._lock:
            self._rooms.pop(room.code, None)
        return room

    def expire(self) -> list[Room]:
        """Close rooms idle for :data:`ROOM_IDLE_SECONDS`, or whose presenter has been gone for
        :data:`ROOM_ORPHAN_SECONDS`; returns them, so their followers can be told."""
        now = time.monotonic()
        with self._lock:
            closed = [room for room in self._rooms.values() if room.expired(now)]
            for room in closed:
                del self._rooms[room.code]
            return closed


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
        for closed in self.rooms.expire():
            self._ended(closed)
        environ = self.server.get_environ(sid, self.namespace) or {}
        room = self.rooms.create(sid, environ.get("REMOTE_ADDR") or "unknown")
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
        """Stop following the room of ``code``; another room's code leaves nothing."""
        room = self.rooms.get(fields["code"])
        if self.rooms.leave(sid, room.code):
            self.server.leave_room(sid, room.code, namespace=self.namespace)
            self._followers(room)

    def present_end(self, sid: str, rid, fields: dict) -> None:
        self._ended(self.rooms.end(fields["code"], fields["secret"]))

    def disconnected(self, sid: str) -> None:
        for room in self.rooms.disconnected(sid):
            self._followers(room)

    def _ended(self, room: Room) -> None:
        self.server.emit("present_ended", {"code": room.code}, to=room.code, namespace=self.namespace)
        self.server.close_room(room.code, namespace=self.namespace)

    def _followers(self, room: Room) -> None:
        self._to(room.presenter, "present_followers", {"code": room.code, "followers": len(room.followers)})

    def _to(self, sid: str, event: str, payload: dict) -> None:
        self.server.emit(event, payload, to=sid, namespace=self.namespace)
