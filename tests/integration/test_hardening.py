"""Issue 15: no request, upload or connection pattern takes the server from other users. One
regression test (or more) per numbered point of the issue, each in seconds; the long modes
(1,000 idle sockets, a hostile client beside a class) are ``scripts/loadtest.py``'s."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
from werkzeug.http import parse_options_header

from app.cache import CaptureCache
from app.extensions import socketio
from app.links import MAX_LINK_BYTES, LinkError, LinkStore, normalise_query
from app.presenter import ROOM_ORPHAN_SECONDS, Rooms
from app.protocol import NAMESPACE, AtlasError
from models.record import HEAD_STATS, Capture, RecordLimits
from tests.integration.conftest import Blocker, collect, live_server, socket_client

PROMPT = "Hardening keeps the lecture running."


@pytest.fixture(autouse=True)
def unlimited_uploads(limit):
    """Uploads pay the analyze limit; these tests upload more than one client may in a minute
    (the tests of a limit set their own)."""
    limit(RATE_ANALYZE_PER_MINUTE=0)


def answers(client, rids: list[str], names: tuple[str, ...]) -> dict[str, dict]:
    """The final answer (an event in ``names`` or ``error``) to each of ``rids``."""
    found, deadline = {}, time.monotonic() + 60
    while len(found) < len(rids):
        assert time.monotonic() < deadline, f"answers to {sorted(set(rids) - set(found))} never came"
        for event in client.get_received(NAMESPACE):
            payload = event["args"][0]
            if event["name"] in (*names, "error") and payload.get("rid") in rids:
                found[payload["rid"]] = {"name": event["name"], **payload}
        time.sleep(0.01)
    return found


@pytest.fixture(scope="module")
def key(service) -> str:
    return service.analyze("minilm", PROMPT).key


def record(layers=2, heads=3, n=5, d=4, model="minilm", **changes) -> dict[str, np.ndarray]:
    """A small consistent record as the arrays an upload carries, written here from the schema
    (random attention inputs, one bidirectional mask), with ``changes`` applied to its text fields."""
    rng = np.random.default_rng(0)
    tokens = [f"t{i}" for i in range(n)]
    meta = {
        "model": model,
        "text": " ".join(tokens),
        "tokens": tokens,
        "pieces": tokens,
        "layer_names": [f"layer.{i}" for i in range(layers)],
        "info": {"causal": False},
        **changes,
    }
    side = min(n, 8)
    queries = rng.standard_normal((layers, heads, n, d)).astype(np.float32)
    keys = rng.standard_normal((layers, 1, n, d)).astype(np.float32)
    scores = np.einsum("lhqd,lkd->lhqk", queries, keys[:, 0])
    lse = np.log(np.exp(scores).sum(-1)).astype(np.float32)
    return {
        "spans": np.stack([np.arange(n) * 3, np.arange(n) * 3 + 2], axis=1).astype(np.int32),
        "special": np.zeros(n, bool),
        "queries": queries,
        "keys": keys,
        "kv_map": np.zeros(heads, np.int32),
        "scaling": np.ones(layers, np.float32),
        "masks": np.ones((1, n, n), bool),
        "mask_index": np.zeros(layers, np.int32),
        "row_lse": lse,
        "output_norms": np.ones((layers, heads, n), np.float32),
        "hidden_norms": np.ones((layers + 1, n), np.float32),
        "received": np.ones((layers, n), np.float32),
        "thumbnails": rng.random((layers, heads, side, side)).astype(np.float16),
        "head_stats": rng.random((layers, heads, len(HEAD_STATS))).astype(np.float32),
        "key_shares": np.full((layers, heads, n), 1 / max(n, 1), np.float32),
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, body: bytes, content_type="application/octet-stream", **headers):
    return client.post("/api/captures", data=body, content_type=content_type, headers=headers)


# --- 1. uploads are bounded by a real model's limits, and so is every analysis of them ---------


def test_an_upload_with_more_heads_than_a_model_has_is_refused(client, app):
    response = upload(client, npz(record(layers=1, heads=app.config["MAX_HEADS"] + 1, n=2, d=1)))
    assert response.status_code == 400 and "heads per layer" in response.get_json()["message"]
    many = int(np.sqrt(app.config["MAX_MODEL_HEADS"])) + 1  # layers x heads just over the limit
    response = upload(client, npz(record(layers=many, heads=many, n=2, d=1)))
    assert response.status_code == 400 and "heads in all" in response.get_json()["message"]


@pytest.mark.parametrize(
    "dimension, shape",
    [("layers", (4, 1, 2, 1)), ("tokens", (1, 1, 9, 1)), ("head size", (1, 1, 2, 9))],
)
def test_every_dimension_of_a_record_is_bounded(dimension, shape):
    layers, heads, n, d = shape
    capture = Capture.from_arrays(record(layers, heads, n, d))
    limits = RecordLimits(tokens=8, layers=3, heads=4, model_heads=12, head_size=8, chars=1000)
    with pytest.raises(ValueError, match=dimension):
        capture.validate(limits)


def test_an_upload_within_the_limits_opens_and_its_analyses_run(client, connect):
    answer = upload(client, npz(record())).get_json()
    heads = client.get(f"/api/analysis/{answer['key']}/heads")
    assert heads.status_code == 200 and heads.get_json()["roles"]


# --- 3. the logit lens checks the server's token limit whatever the record claims --------------


def test_the_lens_of_an_uploaded_record_keeps_to_the_token_limit(client, limit):
    answer = upload(client, npz(record(n=16, model="smollm2"))).get_json()
    limit(MAX_TOKENS=8)
    response = client.get(f"/api/analysis/{answer['key']}/lens?start=10&count=4")
    assert response.status_code == 400 and response.get_json()["code"] == "too_long"


# --- 4. lens pays the analyze limit and the job cap; a gone client's jobs leave the queue -------


def test_lens_pays_the_analyze_rate_limit(connect, limit, key):
    limit(RATE_ANALYZE_BURST=2, RATE_ANALYZE_PER_MINUTE=1)
    client = connect()
    rids = [f"l{i}" for i in range(4)]
    for rid in rids:
        client.emit("lens", {"rid": rid, "key": key}, namespace=NAMESPACE)
    codes = [answer.get("code") for answer in answers(client, rids, ("lens",)).values()]
    assert codes.count("rate_limited") == 2


def test_lens_jobs_of_a_client_that_left_are_dropped(connect, service, minilm, key, limit):
    limit(MAX_JOBS_PER_CLIENT=1)
    blocker = Blocker(service)
    queued = blocker.queue.waiting  # an earlier test's request may wait too, behind the blocker
    try:
        client = connect()
        client.emit("lens", {"rid": "a", "key": key}, namespace=NAMESPACE)
        client.emit("lens", {"rid": "b", "key": key, "start": 1}, namespace=NAMESPACE)
        assert collect(client, ("error",), rid="b")[-1]["code"] == "busy"  # the job cap
        deadline = time.monotonic() + 30  # a guard against hanging, not a speed target: the machine may be busy
        while blocker.queue.waiting <= queued:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.disconnect(namespace=NAMESPACE)
        deadline = time.monotonic() + 30
        while blocker.queue.waiting > queued:
            assert time.monotonic() < deadline, "the job of a gone client stayed in the queue"
            time.sleep(0.05)
    finally:
        blocker.release()


# --- 5. rooms per client and address; rooms end soon after their presenter left ---------------


def test_one_client_cannot_hold_every_room(connect):
    client = connect()
    for i in range(3):
        client.emit("present_start", {"rid": f"p{i}"}, namespace=NAMESPACE)
    events = collect(client, ("error",), rid="p2")
    assert [e["name"] for e in events].count("present_started") == 2 and events[-1]["code"] == "busy"


def test_rooms_per_address_are_bounded():
    rooms = Rooms()
    for i in range(20):
        rooms.create(f"sid{i}", "10.0.0.9")
    with pytest.raises(AtlasError, match="this network"):
        rooms.create("one more", "10.0.0.9")
    rooms.create("elsewhere", "10.0.0.10")


def test_a_room_ends_minutes_after_its_presenter_left():
    rooms = Rooms()
    (kept, _), (orphaned, _) = rooms.create("teacher"), rooms.create("gone")
    rooms.disconnected("gone")
    assert rooms.expire() == []
    orphaned.gone_since -= ROOM_ORPHAN_SECONDS + 1
    assert rooms.expire() == [orphaned] and rooms.get(kept.code) is kept


def test_leaving_another_rooms_code_keeps_a_follower_in_their_room(connect, app):
    teacher, other, student = connect(), connect(), connect()
    teacher.emit("present_start", {"rid": "t"}, namespace=NAMESPACE)
    other.emit("present_start", {"rid": "o"}, namespace=NAMESPACE)
    mine = collect(teacher, ("present_started",))[-1]["code"]
    theirs = collect(other, ("present_started",))[-1]["code"]
    student.emit("present_join", {"rid": "j", "code": mine}, namespace=NAMESPACE)
    collect(student, ("present_state",))
    student.emit("present_leave", {"rid": "l", "code": theirs}, namespace=NAMESPACE)
    student.emit("present_leave", {"rid": "x", "code": "NOSUCH"}, namespace=NAMESPACE)
    assert collect(student, ("error",), rid="x")[-1]["code"] == "not_found"  # answered after the first
    rooms = socketio.server.namespace_handlers[NAMESPACE].rooms.rooms
    assert rooms.followers(rooms.get(mine)) == 1 and not rooms.followers(rooms.get(theirs))


# --- 6 and 11. uploads: real unpacked size, one schema, content type and origin, own budget ----


def test_a_small_upload_claiming_huge_arrays_is_refused_before_unpacking(client):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("queries.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
    response = upload(client, body.getvalue())
    assert response.status_code == 400 and "unpack to" in response.get_json()["message"]


def test_an_upload_larger_than_any_model_here_is_refused_before_unpacking(client, monkeypatch):
    """The hostile mode's upload: 200 MB of zeros, a few hundred KB zipped, claiming 1,000
    layers. Its headers alone refuse it; nothing is unpacked."""
    body = io.BytesIO()
    np.savez_compressed(body, queries=np.zeros((1000, 100, 64, 8), np.float32))
    unpacked = []
    monkeypatch.setattr(np.lib.format, "read_array", lambda *args, **kwargs: unpacked.append(1))
    response = upload(client, body.getvalue())
    assert response.status_code == 400 and "larger than this server accepts" in response.get_json()["message"]
    assert unpacked == []


def mutate(arrays: dict, name: str, value) -> dict:
    return {**arrays, name: value}


MALFORMED = {
    "tokens that are not strings": lambda a: record(tokens=[1, 2, 3, 4, 5]),
    "info as a list": lambda a: record(info=[1]),
    "meta as a list": lambda a: mutate(a, "meta", np.frombuffer(b"[1, 2]", np.uint8)),
    "float kv_map": lambda a: mutate(a, "kv_map", a["kv_map"].astype(np.float32)),
    "zero layers": lambda a: record(layers=0),
    "an extra array": lambda a: mutate(a, "extra.summary", np.zeros(3)),
    "a missing array": lambda a: {k: v for k, v in a.items() if k != "row_lse"},
    "not finite": lambda a: mutate(a, "thumbnails", np.full_like(a["thumbnails"], np.nan)),
    "a half-declared encoder-decoder": lambda a: record(info={"encoder_decoder": True}),
    "pickled objects": lambda a: mutate(a, "spans", np.array([object()] * 5)),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_uploads_are_refused_with_a_reason(client, case):
    arrays = MALFORMED[case](record())
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=True, **arrays)
    response = upload(client, buffer.getvalue())
    assert response.status_code == 400 and response.get_json()["code"] == "bad_request", response.get_json()


def test_uploads_need_their_content_type_and_this_servers_origin(client):
    body = npz(record())
    assert upload(client, body, content_type="text/plain").status_code == 415
    assert upload(client, body, content_type="multipart/form-data").status_code == 415
    assert upload(client, body, Origin="https://evil.example").status_code == 403
    assert upload(client, body, Origin="http://localhost").status_code == 200  # this server's own page
    assert upload(client, body).status_code == 200  # a script (the notebook bridge) sends no Origin


def test_an_upload_is_on_disk_in_its_own_budget_when_its_link_comes_back(client, app, cache_root):
    answer = upload(client, npz(record(n=7))).get_json()
    stored = cache_root / "uploads" / answer["key"][:2] / f"{answer['key']}.atlas"
    assert stored.exists() and not (cache_root / "results" / answer["key"][:2] / f"{answer['key']}.atlas").exists()


class SlowStore:
    """A store whose writes wait until released, to fill the write queue."""

    def __init__(self):
        self.release, self.written = threading.Event(), []

    def read(self, key):
        return None

    def write(self, key, arrays) -> bool:
        self.release.wait(10)
        self.written.append(key)
        return True


def test_the_background_write_queue_is_bounded():
    store = SlowStore()
    cache = CaptureCache(store, max_bytes=1, max_pending_bytes=10_000)
    for i in range(50):
        cache.write_later(f"{i:064x}", {"a": np.zeros(1000, np.uint8)})
    assert cache._pending_bytes <= 10_000 and len(cache._pending) <= 10
    store.release.set()
    assert cache.flush(10) and cache._pending_bytes == 0


# --- 7. short links: bounded size, a share of the disk budget, a rate limit --------------------


def test_a_link_longer_than_its_bound_is_refused():
    with pytest.raises(LinkError, match="too long"):
        normalise_query("text=" + "東" * (MAX_LINK_BYTES // 9 + 1))  # 9 bytes each once encoded


def test_links_are_pruned_within_their_budget(tmp_path):
    store = LinkStore(tmp_path, 2_000)
    ids = [store.create(f"text={i}-" + "x" * 500) for i in range(8)]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 2_000
    assert store.resolve(ids[-1]) is not None and store.resolve(ids[0]) is None


def test_link_creation_is_rate_limited(client, limit):
    limit(RATE_LINKS_PER_MINUTE=4)  # a burst of 2
    codes = [client.post("/api/links", json={"query": f"text={i}"}).status_code for i in range(4)]
    assert codes[:2] == [200, 200] and 429 in codes[2:]


# --- 8. CPU work: bounded queue, a per-client share, dropped when the client left --------------


def test_cpu_work_has_a_per_client_share_and_leaves_with_its_client(connect, app, key, limit):
    limit(MAX_CPU_JOBS_PER_CLIENT=1)
    queue = app.extensions["atlas_dispatcher"].cpu_queue
    with queue.slot():  # the only CPU worker is busy
        client = connect()
        client.emit("rollout", {"rid": "a", "key": key, "position": 1}, namespace=NAMESPACE)
        client.emit("rollout", {"rid": "b", "key": key, "position": 2}, namespace=NAMESPACE)
        assert collect(client, ("error",), rid="b")[-1]["code"] == "busy"
        deadline = time.monotonic() + 10
        while queue.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.disconnect(namespace=NAMESPACE)
        while queue.waiting:
            assert time.monotonic() < deadline, "CPU work of a gone client stayed in the queue"
            time.sleep(0.05)


# --- 9. HTTP generate pays the analyze limit ---------------------------------------------------


def test_http_generate_is_rate_limited_like_analyze(client, limit):
    limit(RATE_ANALYZE_BURST=2, RATE_ANALYZE_PER_MINUTE=1)
    codes = [client.post("/api/generate", json={"model": "minilm", "text": " "}).status_code for _ in range(3)]
    assert codes == [400, 400, 429]  # an empty prompt, twice, then the limit


# --- 10. the JSON export's download name cannot be injected ------------------------------------


@pytest.mark.parametrize("model", ['evil".html', "ev\r\nil: x", "modèle-東京", "../../etc/passwd"])
def test_the_json_export_name_is_safe_whatever_the_model_name(client, model):
    answer = upload(client, npz(record(model=model))).get_json()
    response = client.get(f"/api/analysis/{answer['key']}/export.json")
    assert response.status_code == 200
    kind, options = parse_options_header(response.headers["Content-Disposition"])
    assert kind == "attachment" and options["filename"].endswith(".json")
    assert all(c not in options["filename"] for c in '"/\\\r\n') and options["filename"].isascii()


# --- 12. the SVG export's text: tests/browser/test_exports_xml.py (it needs Chromium) ------------


# --- also: sockets per address, headers on Socket.IO answers, malformed packets ----------------


def test_sockets_per_address_are_capped_with_a_clear_refusal(tmp_path):
    with live_server(tmp_path / "cache", MAX_SOCKETS_PER_ADDRESS="2") as url:
        first, second = socket_client(url), socket_client(url)
        with pytest.raises(Exception, match="401"):  # the message says why: test_a_refusal_says_why
            socket_client(url, transport="polling")
        second.close()
        third = socket_client(url)  # a place came free
        first.close(), third.close()


def flood(client, events: int) -> object:
    """Send ``events`` requests at once from ``client``, past its rate limit; returns it once the
    server has closed it (or after 10 s)."""
    for index in range(events):
        client.emit("cancel", {"rid": f"c{index}", "request": 0}, namespace=NAMESPACE)
    deadline = time.monotonic() + 10
    while client.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


def flood_until_closed(url: str, events: int = 12) -> object:
    """A new client that sends ``events`` requests at once (:func:`flood`), once it is closed."""
    return flood(socket_client(url), events)


def test_a_connection_that_keeps_sending_after_refusals_is_closed_and_a_flooding_address_suspended(tmp_path):
    """Point 8, the hostile mode: each refusal is an answer the server pays for, so a socket that
    goes on sending after ``REFUSALS_BEFORE_CLOSING`` refusals is told why and closed; an address
    whose sockets are closed for this time after time may open no new one for a minute, while
    its sockets already open keep working (the rest of a class behind that address)."""
    from app.events import CLOSED_FOR_REFUSALS, FLOODS_BEFORE_SUSPENSION

    with live_server(
        tmp_path / "cache", PRELOAD_MODELS="[]", RATE_EVENTS_PER_SECOND="1", REFUSALS_BEFORE_CLOSING="3"
    ) as url:
        bystander = socket_client(url)
        flooder = flood_until_closed(url)
        assert not flooder.connected
        refused = [a for a in flooder.answers if a["name"] == "error" and a["code"] == "rate_limited"]
        assert 3 <= len(refused) <= 5 and refused[-1]["message"] == CLOSED_FOR_REFUSALS
        flooder.close()
        for _ in range(FLOODS_BEFORE_SUSPENSION - 1):
            flood_until_closed(url).close()
        with pytest.raises(Exception, match="401"):
            socket_client(url, transport="polling")
        bystander.emit("cancel", {"rid": "still here", "request": 0}, namespace=NAMESPACE)
        assert bystander.wait("still here", until=("cancel",))[-1]["cancelled"] is False
        bystander.close()
    log = next(tmp_path.glob("cache.*.log")).read_text()
    assert "kept sending after being refused" in log and "suspended new Socket.IO connections" in log


def test_an_address_that_flooded_before_has_fewer_refusals_and_longer_suspensions(tmp_path):
    """The hostile load test's attacker waited out its minute and came back with 100 sockets, each
    answered 20 refusals before it was closed: after a suspension, a connection from that
    address is closed after REFUSALS_AFTER_FLOODING refusals, and each suspension that follows
    within the hour is twice as long as the last (up to an hour)."""
    from app.events import (
        FLOODS_BEFORE_SUSPENSION,
        MAX_SUSPENSION_SECONDS,
        REFUSALS_AFTER_FLOODING,
        SUSPENSION_SECONDS,
        suspension_seconds,
    )

    assert [suspension_seconds(count) for count in (1, 2, 3)] == [
        SUSPENSION_SECONDS,
        2 * SUSPENSION_SECONDS,
        4 * SUSPENSION_SECONDS,
    ]
    assert suspension_seconds(40) == MAX_SUSPENSION_SECONDS
    with live_server(
        tmp_path / "cache", PRELOAD_MODELS="[]", RATE_EVENTS_PER_SECOND="1", REFUSALS_BEFORE_CLOSING="10"
    ) as url:
        spare = socket_client(url)  # opened before the address floods: it stays open through the suspension
        for _ in range(FLOODS_BEFORE_SUSPENSION):
            flooder = flood_until_closed(url, events=20)
            refused = [a for a in flooder.answers if a["name"] == "error" and a["code"] == "rate_limited"]
            assert len(refused) >= 10
            flooder.close()
        flood(spare, events=20)
        assert not spare.connected
        refused = [a for a in spare.answers if a["name"] == "error" and a["code"] == "rate_limited"]
        assert REFUSALS_AFTER_FLOODING <= len(refused) <= REFUSALS_AFTER_FLOODING + 2
        spare.close()


def test_an_address_back_from_a_suspension_opens_a_second_of_sockets_at_once(app, monkeypatch):
    """The attacker waited out its minute and came back with 100 sockets at once: an address that
    flooded before opens new ones at its usual rate, but with one second of it at once."""
    from app import events

    monkeypatch.setattr(events, "SUSPENSION_SECONDS", 0.2)
    sockets = events.Sockets(app.config)
    rate, _ = events.connect_limit(app.config)

    def opened_at_once(address: str) -> int:
        for index in range(app.config["MAX_SOCKETS_PER_ADDRESS"]):
            if sockets.admit(f"{address}-{index}", address) is not None:
                return index
        return app.config["MAX_SOCKETS_PER_ADDRESS"]

    for _ in range(events.FLOODS_BEFORE_SUSPENSION):
        sockets.closed_for_flooding("10.8.8.1")
    assert sockets.admit("during", "10.8.8.1") is not None  # suspended
    time.sleep(0.3)  # the suspension is over; the flood is remembered
    assert sockets.flooded_before("10.8.8.1") and not sockets.flooded_before("10.8.8.2")
    assert 1 <= opened_at_once("10.8.8.1") <= rate * events.FLOODED_BURST_SECONDS + 1
    assert opened_at_once("10.8.8.2") >= 10 * rate * events.FLOODED_BURST_SECONDS


def test_new_connections_per_address_are_rate_limited(tmp_path):
    with live_server(
        tmp_path / "cache", PRELOAD_MODELS="[]", CLIENTS_PER_ADDRESS="1", RATE_CONNECTS_PER_MINUTE="1"
    ) as url:
        socket_client(url).close()
        with pytest.raises(Exception, match="401"):
            socket_client(url, transport="polling")


def test_socket_io_answers_carry_the_security_headers(client):
    response = client.get("/socket.io/?EIO=4&transport=polling")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_a_malformed_packet_logs_one_line(tmp_path):
    cache = tmp_path / "cache"
    with live_server(cache, PRELOAD_MODELS="[]") as url:
        client = socket_client(url)
        client.eio.send("2/atlas,{broken")
        client.eio.send('2/atlas,{"a": 1}')
        time.sleep(0.5)
        client.close()
    log = next(tmp_path.glob("cache.*.log")).read_text()
    assert log.count("malformed Socket.IO packet") == 2 and "Traceback" not in log


def test_socket_limits_apply_per_address_with_a_classroom_allowance(app):
    from app.dispatch import ADDRESS_BURST_SECONDS, address_limits, rate_limits

    people = app.config["CLIENTS_PER_ADDRESS"]
    for kind, (rate, burst) in rate_limits(app.config).items():
        if kind == "event":  # a class's requests per second, and a few seconds of them at once
            rate = app.config["ADDRESS_EVENTS_PER_PERSON"]
            burst = rate * ADDRESS_BURST_SECONDS
        assert address_limits(app.config)[kind] == (rate * people, burst * people)


def test_an_address_that_flooded_before_has_a_second_of_requests_at_once_not_five(app, monkeypatch):
    """After waiting out a suspension, the hostile test's attacker spent the refilled burst of
    its address (5 s of its refill) on head summaries at once; an address that flooded before
    has one second's."""
    from app.dispatch import ADDRESS_BURST_SECONDS, FLOODED_BURST_SECONDS, Call
    from app.requests import TABLE

    dispatcher = app.extensions["atlas_dispatcher"]
    rate = app.config["ADDRESS_EVENTS_PER_PERSON"] * app.config["CLIENTS_PER_ADDRESS"]
    request = next(row for row in TABLE if row.name == "token")

    def admitted_at_once(address: str) -> int:
        for index in range(10 * int(rate * ADDRESS_BURST_SECONDS)):
            call = Call(
                dispatcher.service, request, f"{address} socket {index}", index, lambda *_: None, address=address
            )
            try:
                with dispatcher.admit(call):
                    pass
            except AtlasError as error:
                assert error.code == "rate_limited"
                return index
        raise AssertionError("never refused")

    assert admitted_at_once("10.7.7.1") >= rate * ADDRESS_BURST_SECONDS
    monkeypatch.setattr(dispatcher, "flooded_before", lambda address: address == "10.7.7.2")
    assert rate * FLOODED_BURST_SECONDS <= admitted_at_once("10.7.7.2") < rate * ADDRESS_BURST_SECONDS / 2


def test_a_query_value_spelled_with_a_superscript_digit_is_refused_not_a_crash(client, key):
    """The long fuzzing mode's finding: ``str.isdigit()`` is true for "¹", and ``int()`` failed."""
    response = client.get(f"/api/analysis/{key}/compare?other={key}&layer=¹")
    assert response.status_code < 500
