"""Presenter mode: a teacher's view state, followed live by every student in a Socket.IO room.

A room is named by a short join code that students type or scan; only the holder of the room's
secret (returned once, to the presenter) can move it. Join codes are random, not sequential, and
the secret is 128 bits, kept only as its SHA-256 and compared in constant time, so nobody drives
a room they did not create.

Rooms live in one process's memory (:class:`MemoryTable`), or in Redis when REDIS_URL is set
(:class:`RedisTable`), so a presenter on one web process and followers on others share one room,
and a room outlives a restart of the process that made it. Its messages reach followers on every
process through the Socket.IO message queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, fields

import redis

from app.links import LinkError, normalise_query
from app.protocol import AtlasError

log = logging.getLogger(__name__)

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: read aloud and typed by students
CODE_LENGTH = 6  # ~1e9 codes
MAX_ROOMS = 200  # rooms open at once on one server (all processes of it, with Redis)
MAX_ROOMS_PER_CLIENT = 2  # rooms one connection may hold open (one presenting, one started by mistake)
MAX_ROOMS_PER_ADDRESS = 20  # rooms of one address (every lecture hall behind one NAT)
ROOM_IDLE_SECONDS = 6 * 3600  # a room nobody touches for this long is closed
ROOM_ORPHAN_SECONDS = 10 * 60  # a room whose presenter has been disconnected this long is closed


@dataclass
class Room:
    code: str
    secret_hash: str  # SHA-256 hex of the secret; the secret itself is only ever sent to the presenter
    presenter: str  # Socket.IO sid of the presenter
    state: str = ""  # the presenter's view as a share-link query string
    touched: float = 0.0  # wall-clock time (s) of the presenter's last action: processes share it
    address: str = ""  # the presenter's address when the room was made
    gone_since: float | None = None  # when the presenter disconnected (None while connected)

    def expired(self, now: float) -> bool:
        orphaned = self.gone_since is not None and now - self.gone_since > ROOM_ORPHAN_SECONDS
        return orphaned or now - self.touched > ROOM_IDLE_SECONDS


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class MemoryTable:
    """The rooms of this process, and their followers by sid."""

    def __init__(self):
        self._rooms: dict[str, Room] = {}
        self._followers: dict[str, set[str]] = {}  # code -> follower sids

    def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    def get(self, code: str) -> Room | None:
        return self._rooms.get(code)

    def add(self, room: Room) -> bool:
        """Keep a new room; False when its code is taken."""
        if room.code in self._rooms:
            return False
        self._rooms[room.code], self._followers[room.code] = room, set()
        return True

    def save(self, room: Room) -> None:
        """Rooms are shared objects here: nothing to write."""

    def remove(self, code: str) -> None:
        self._rooms.pop(code, None)
        self._followers.pop(code, None)

    def follow(self, code: str, sid: str) -> None:
        self._followers.setdefault(code, set()).add(sid)

    def unfollow(self, sid: str, code: str | None) -> list[str]:
        left = [name for name, sids in self._followers.items() if sid in sids and code in (None, name)]
        for name in left:
            self._followers[name].discard(sid)
        return left

    def count(self, code: str) -> int:
        return len(self._followers.get(code, ()))


ROOMS_KEY = "atlas:rooms"  # set of open codes
ROOM_KEY = "atlas:room:"  # + code: hash of the room's fields; + code + ":processes": processes with followers
FOLLOWERS_KEY = ":followers:"  # room key + code + this + process id: set of that process's follower sids
FOLLOWS_KEY = "atlas:follows:"  # + sid: set of codes that sid follows (found again on its disconnect)
PROCESS_KEY = "atlas:process:"  # + process id: exists while that web process runs
PROCESS_SECONDS = 6  # a process that has not renewed its key this long is gone: its followers are not counted
BEAT_SECONDS = 2  # how often a process renews it


class RedisTable:
    """Rooms in Redis, shared by every process of the server: one hash per room (its fields), per
    process the sids of its followers, and each sid's followed codes. Followers are counted only
    for processes still running (each renews ``atlas:process:<id>``), so a process that dies with
    its clients takes them out of every count. Every key expires :data:`ROOM_IDLE_SECONDS` after
    the room was last saved, so a room nobody closes still goes."""

    def __init__(self, client: redis.Redis):
        self.client, self.process = client, secrets.token_hex(8)
        self._beat()
        threading.Thread(target=self._beating, name="rooms-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        self.client.set(PROCESS_KEY + self.process, 1, ex=PROCESS_SECONDS)

    def _beating(self) -> None:
        while True:
            time.sleep(BEAT_SECONDS)
            try:
                self._beat()
            except redis.RedisError as error:
                log.warning("could not renew this process's rooms heartbeat: %s", error)

    def rooms(self) -> list[Room]:
        codes = sorted(code.decode() for code in self.client.smembers(ROOMS_KEY))
        pipe = self.client.pipeline(transaction=False)
        for code in codes:
            pipe.hgetall(ROOM_KEY + code)
        found = [_room(code, stored) for code, stored in zip(codes, pipe.execute(), strict=True)]
        gone = [code for code, room in zip(codes, found, strict=True) if room is None]
        if gone:  # their hashes expired: idle for ROOM_IDLE_SECONDS
            self.client.srem(ROOMS_KEY, *gone)
        return [room for room in found if room is not None]

    def get(self, code: str) -> Room | None:
        return _room(code, self.client.hgetall(ROOM_KEY + code))

    def add(self, room: Room) -> bool:
        if not self.client.hsetnx(ROOM_KEY + room.code, "code", room.code):
            return False
        self.save(room)
        self.client.sadd(ROOMS_KEY, room.code)
        return True

    def save(self, room: Room) -> None:
        values = {f.name: _text(getattr(room, f.name)) for f in fields(Room)}
        pipe = self.client.pipeline()
        pipe.hset(ROOM_KEY + room.code, mapping=values)
        for name in (ROOM_KEY + room.code, *self._follower_keys(room.code)):
            pipe.expire(name, ROOM_IDLE_SECONDS)
        pipe.execute()

    def remove(self, code: str) -> None:
        self.client.delete(ROOM_KEY + code, *self._follower_keys(code))
        self.client.srem(ROOMS_KEY, code)

    def follow(self, code: str, sid: str) -> None:
        pipe = self.client.pipeline()
        for name, member in ((ROOM_KEY + code + ":processes", self.process), (self._followers(code), sid)):
            pipe.sadd(name, member)
            pipe.expire(name, ROOM_IDLE_SECONDS)
        pipe.sadd(FOLLOWS_KEY + sid, code)
        pipe.expire(FOLLOWS_KEY + sid, ROOM_IDLE_SECONDS)
        pipe.execute()

    def unfollow(self, sid: str, code: str | None) -> list[str]:
        codes = [name.decode() for name in self.client.smembers(FOLLOWS_KEY + sid)]
        codes = [name for name in codes if code in (None, name)]
        if not codes:
            return []
        pipe = self.client.pipeline()
        for name in codes:
            pipe.srem(self._followers(name), sid)
        pipe.srem(FOLLOWS_KEY + sid, *codes)
        removed = pipe.execute()[:-1]
        return [name for name, was in zip(codes, removed, strict=True) if was]

    def count(self, code: str) -> int:
        """Followers on processes still running."""
        processes = self._processes(code)
        pipe = self.client.pipeline(transaction=False)
        for process in processes:
            pipe.exists(PROCESS_KEY + process)
            pipe.scard(ROOM_KEY + code + FOLLOWERS_KEY + process)
        answers = pipe.execute()
        return sum(followers for alive, followers in zip(answers[::2], answers[1::2], strict=True) if alive)

    def _followers(self, code: str) -> str:
        return ROOM_KEY + code + FOLLOWERS_KEY + self.process

    def _follower_keys(self, code: str) -> list[str]:
        """The room's set of processes and each process's set of followers."""
        return [ROOM_KEY + code + ":processes", *(ROOM_KEY + code + FOLLOWERS_KEY + p for p in self._processes(code))]

    def _processes(self, code: str) -> list[str]:
        return [name.decode() for name in self.client.smembers(ROOM_KEY + code + ":processes")]


def _text(value) -> str:
    return "" if value is None else str(value)


def _room(code: str, stored: dict[bytes, bytes]) -> Room | None:
    """A room from its Redis hash (None when absent or half-written)."""
    values = {name.decode(): value.decode() for name, value in stored.items()}
    if "secret_hash" not in values:
        return None
    gone = values.get("gone_since", "")
    return Room(
        code,
        values["secret_hash"],
        values.get("presenter", ""),
        values.get("state", ""),
        float(values.get("touched") or 0.0),
        values.get("address", ""),
        float(gone) if gone else None,
    )


class Rooms:
    """Open rooms: the rules (limits, secrets, expiry) over a table of where they live. Each
    method raises AtlasError for the user; ``busy`` when the shared table cannot be reached."""

    def __init__(self, table: MemoryTable | RedisTable | None = None):
        self.table = table or MemoryTable()
        self._lock = threading.Lock()  # one change at a time in this process (Redis orders the rest)

    @contextlib.contextmanager
    def _changing(self):
        with self._lock:
            try:
                yield
            except redis.RedisError:
                raise AtlasError(
                    "busy", "presentations are unavailable for a moment (the shared store is down); try again", 503
                ) from None

    def create(self, presenter: str, address: str = "") -> tuple[Room, str]:
        """A new room presented by ``presenter`` (a sid) from ``address``, and its secret; raises
        AtlasError ``busy`` past the server's, the address's or the client's number of rooms
        (rooms whose presenter is long gone are closed by :meth:`expire`, which callers run first)."""
        with self._changing():
            rooms = self.table.rooms()
            if len(rooms) >= MAX_ROOMS:
                raise AtlasError("busy", "too many presentations are running on this server; try again later")
            if sum(room.presenter == presenter for room in rooms) >= MAX_ROOMS_PER_CLIENT:
                raise AtlasError("busy", "this page already runs a presentation; end it before starting another", 429)
            if address and sum(room.address == address for room in rooms) >= MAX_ROOMS_PER_ADDRESS:
                raise AtlasError("busy", "too many presentations are running from this network; end one first", 429)
            secret = secrets.token_urlsafe(16)
            while True:
                code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
                room = Room(code, secret_hash(secret), presenter, touched=time.time(), address=address)
                if self.table.add(room):
                    return room, secret

    def get(self, code: object) -> Room:
        with self._changing():
            room = self.table.get(code.upper()) if isinstance(code, str) else None
        if room is None:
            raise AtlasError("not_found", "no presentation with that code is running", 404)
        return room

    def authorised(self, code: object, secret: object, presenter: str | None = None) -> Room:
        """The room of ``code`` if ``secret`` is its secret, touched now (and presented by
        ``presenter`` from now on: a presenter who reconnected keeps the room with the secret)."""
        room = self.get(code)
        if not isinstance(secret, str) or not hmac.compare_digest(secret_hash(secret), room.secret_hash):
            raise AtlasError("forbidden", "only the presenter can change this presentation", 403)
        room.touched, room.gone_since = time.time(), None
        room.presenter = presenter or room.presenter
        return room

    def update(self, code: object, secret: object, state: object, presenter: str | None = None) -> Room:
        room = self.authorised(code, secret, presenter)
        try:
            room.state = normalise_query(state) if state else ""
        except LinkError as error:
            raise AtlasError("bad_request", str(error)) from None
        with self._changing():
            self.table.save(room)
        return room

    def join(self, code: object, sid: str) -> Room:
        room = self.get(code)
        with self._changing():
            self.table.follow(room.code, sid)
        return room

    def leave(self, sid: str, code: object = None) -> list[Room]:
        """Remove ``sid`` from the room of ``code``, or from every room it follows when ``code``
        is None; returns the rooms it left (none when it does not follow that room)."""
        if code is not None and not isinstance(code, str):
            return []
        with self._changing():
            left = self.table.unfollow(sid, code.upper() if code else None)
            return [room for room in map(self.table.get, left) if room is not None]

    def followers(self, room: Room) -> int:
        with self._changing():
            return self.table.count(room.code)

    def disconnected(self, sid: str) -> list[Room]:
        """``sid`` left: it follows nothing any more, and the rooms it presents start to count
        down to :data:`ROOM_ORPHAN_SECONDS`. Returns the rooms it followed."""
        now = time.time()
        with self._changing():
            for room in self.table.rooms():
                if room.presenter == sid and room.gone_since is None:
                    room.gone_since = now
                    self.table.save(room)
        return self.leave(sid)

    def end(self, code: object, secret: object) -> Room:
        room = self.authorised(code, secret)
        with self._changing():
            self.table.remove(room.code)
        return room

    def expire(self) -> list[Room]:
        """Close rooms idle for :data:`ROOM_IDLE_SECONDS`, or whose presenter has been gone for
        :data:`ROOM_ORPHAN_SECONDS`; returns them, so their followers can be told."""
        now = time.time()
        with self._changing():
            closed = [room for room in self.table.rooms() if room.expired(now)]
            for room in closed:
                self.table.remove(room.code)
            return closed


def rooms_for(config) -> Rooms:
    """Rooms in Redis when REDIS_URL is set (every process sees them), else in this process."""
    if not config.get("REDIS_URL"):
        return Rooms()
    from app.redis_store import connect

    return Rooms(RedisTable(connect(config["REDIS_URL"])))


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
        room, secret = self.rooms.create(sid, environ.get("REMOTE_ADDR") or "unknown")
        self._to(sid, "present_started", {"rid": rid, "code": room.code, "secret": secret})

    def present_update(self, sid: str, rid, fields: dict) -> None:
        room = self.rooms.update(fields["code"], fields["secret"], fields["state"], presenter=sid)
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
        try:
            for room in self.rooms.disconnected(sid):
                self._followers(room)
        except AtlasError as error:  # the shared store is down: its rooms' counts catch up on the next join
            log.warning("could not record that %s left its rooms: %s", sid, error.message)

    def _ended(self, room: Room) -> None:
        self.server.emit("present_ended", {"code": room.code}, to=room.code, namespace=self.namespace)
        self.server.close_room(room.code, namespace=self.namespace)

    def _followers(self, room: Room) -> None:
        self._to(room.presenter, "present_followers", {"code": room.code, "followers": self.rooms.followers(room)})

    def _to(self, sid: str, event: str, payload: dict) -> None:
        self.server.emit(event, payload, to=sid, namespace=self.namespace)
