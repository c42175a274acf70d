"""Presenter mode over real Socket.IO test clients: follow, count, refuse strangers, end."""

from __future__ import annotations

import time

import pytest

from app.extensions import socketio
from app.presenter import Rooms
from app.protocol import NAMESPACE, AtlasError


def received(client, name: str, timeout: float = 5.0) -> dict:
    """The latest ``name`` event among those waiting (earlier ones are stale)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matches = [event["args"][0] for event in client.get_received(NAMESPACE) if event["name"] == name]
        if matches:
            return matches[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {name} within {timeout} s")


@pytest.fixture()
def clients(app):
    opened = [socketio.test_client(app, namespace=NAMESPACE) for _ in range(3)]
    yield opened
    for client in opened:
        if client.is_connected(NAMESPACE):
            client.disconnect(namespace=NAMESPACE)


def test_students_follow_the_presenter_and_strangers_cannot_drive(clients):
    teacher, student, stranger = clients
    teacher.emit("present_start", {"rid": 1}, namespace=NAMESPACE)
    room = received(teacher, "present_started")
    assert len(room["code"]) == 6 and len(room["secret"]) >= 20
    student.emit("present_join", {"code": room["code"].lower()}, namespace=NAMESPACE)
    assert received(student, "present_state")["state"] == ""
    assert received(teacher, "present_followers")["followers"] == 1
    teacher.emit("present_update", {**room, "state": "model=minilm&text=Hi&view=head&layer=3"}, namespace=NAMESPACE)
    assert received(student, "present_state")["state"] == "model=minilm&text=Hi&view=head&layer=3"
    stranger.emit(
        "present_update", {"code": room["code"], "secret": "guess", "state": "view=model"}, namespace=NAMESPACE
    )
    assert received(stranger, "error")["code"] == "forbidden"
    student.disconnect(namespace=NAMESPACE)
    assert received(teacher, "present_followers")["followers"] == 0
    stranger.emit("present_join", {"code": room["code"]}, namespace=NAMESPACE)
    received(stranger, "present_state")
    teacher.emit("present_end", room, namespace=NAMESPACE)
    assert received(stranger, "present_ended")["code"] == room["code"]
    stranger.emit("present_join", {"code": room["code"]}, namespace=NAMESPACE)
    assert received(stranger, "error")["code"] == "not_found"


def test_room_states_are_share_link_queries():
    rooms = Rooms()
    room, secret = rooms.create("sid")
    with pytest.raises(AtlasError) as error:
        rooms.update(room.code, secret, "<script>=1")
    assert error.value.code == "bad_request"
    codes = {rooms.create(f"sid{i}")[0].code for i in range(50)}
    assert len(codes) == 50 and not any(set(code) & set("01IO") for code in codes)
