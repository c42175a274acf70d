"""The request table decides what every request costs, identically over Socket.IO and HTTP:
walk it, and check that each `model` request pays the analyze rate limit and the per-client job
cap, and that each `cpu` request is computed once per key whichever transport asks."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from app.protocol import NAMESPACE
from app.requests import REQUESTS, SOCKET_EVENTS, TABLE, Cost
from tests.integration.conftest import ANSWER_SECONDS, Blocker, collect

MODEL_ROWS = [row for row in TABLE if row.cost is Cost.MODEL]
CPU_ROWS = [row for row in TABLE if row.cost is Cost.CPU and row.memo]
FILE_ROWS = {"export_npz", "export_json", "upload"}  # cpu rows answering with a file: rebuilt, not memoised
OWN_MEMO_ROWS = {"atlas_head"}  # cpu rows keeping their own results in the memo (a global-view head, by method)
BUILD_ROWS = {"atlas_corpus"}  # cpu rows that start a background build: their answer changes as it goes
TRANSPORTS = ("socket", "http")
MODEL_CASES = [  # (row, transport) for every transport a model row is served on
    pytest.param(row, transport, id=f"{row.name}-{transport}")
    for row in MODEL_ROWS
    for transport in TRANSPORTS
    if (row.socket if transport == "socket" else row.http)
]
_addresses = iter(range(1, 250))


def test_every_row_is_served_and_costed():
    assert {row.cost for row in TABLE} == set(Cost)
    unmemoised = {row.name for row in TABLE if row.cost is Cost.CPU and not row.memo}
    assert unmemoised == FILE_ROWS | OWN_MEMO_ROWS | BUILD_ROWS
    assert {"analyze", "generate", "lens"} <= {row.name for row in MODEL_ROWS}
    assert all(row.socket or row.http for row in TABLE)


@pytest.fixture(scope="module")
def key(service) -> str:
    return service.analyze("minilm", "The table decides what this costs.").key


@pytest.fixture(scope="module")
def causal_key(service) -> str:
    """A short causal-LM analysis, for the rows that need a decoder before they queue (patch)."""
    return service.analyze("smollm2", CLEAN).key


CLEAN = "Call 4141 ends the table"


def fresh_corruption() -> str:
    """A corrupted prompt as long as CLEAN that no other test asked for (not memoised)."""
    return f"Call {1000 + time.time_ns() % 9000} ends the table"


def fields_for(name: str, key: str, causal_key: str = "") -> dict:
    """Valid fields of a row (the work may still fail after admission: minilm has no lens)."""
    return {
        "ablate": {"key": key, "heads": [0], "mode": "zero"},
        "patch": {"key": causal_key, "corrupt": "Call 4242 ends the table"},
        "analyze": {"model": "minilm", "text": "The table decides what this costs."},
        "generate": {"model": "minilm", "text": "Once upon", "max_new_tokens": 1},
        "lens": {"key": key},
        "probe": {"model": "minilm"},
        "rollout": {"key": key, "position": 1},
        "flow": {"key": key, "position": 1},
        "compare": {"key": key, "other": key},
        "mixing": {"key": key, "layer": 0},
        "feedforward": {"key": key, "layer": 0},
        "routes": {"key": key, "token": 1},
    }.get(name, {"key": key})


class Client:
    """One client of one transport: a Socket.IO test client, or HTTP from its own address."""

    def __init__(self, app, connect, transport: str):
        self.transport = transport
        self.socket = connect() if transport == "socket" else None
        self.http = app.test_client()
        self.address = f"10.0.0.{next(_addresses)}"

    def send(self, name: str, fields: dict, rid: str) -> None:
        self.socket.emit(name, {"rid": rid, **fields}, namespace=NAMESPACE)

    def ask(self, name: str, fields: dict, rid: str = "r") -> dict:
        """The final answer ({"name": event or "http", **payload}, with "status" over HTTP)."""
        if self.transport == "socket":
            self.send(name, fields, rid)
            return collect(self.socket, until=("done", "error", name), rid=rid)[-1]
        method, rule = REQUESTS[name].http
        url = "/api" + rule.replace("<key>", fields.get("key", ""))
        others = {field: value for field, value in fields.items() if field != "key"}
        environ = {"REMOTE_ADDR": self.address}
        response = (
            self.http.post(url, json=fields, environ_base=environ)
            if method == "POST"
            else self.http.get(url, query_string=others, environ_base=environ)
        )
        return {"name": "http", "status": response.status_code, **(response.get_json(silent=True) or {})}


@pytest.mark.parametrize("row, transport", MODEL_CASES)
def test_model_requests_pay_the_analyze_limit(app, connect, limit, key, causal_key, row, transport):
    limit(RATE_ANALYZE_BURST=1, RATE_ANALYZE_PER_MINUTE=0.01)
    client = Client(app, connect, transport)
    first = client.ask(row.name, fields_for(row.name, key, causal_key), rid="1")
    assert first.get("code") != "rate_limited", first
    second = client.ask(row.name, fields_for(row.name, key, causal_key), rid="2")
    assert second.get("code") == "rate_limited", second
    assert second.get("status", 429) == 429


@pytest.mark.parametrize("row, transport", MODEL_CASES)
def test_model_requests_pay_the_job_cap(app, connect, limit, key, causal_key, service, minilm, row, transport):
    """With the device busy, a client's first model request waits in the queue; its second is
    refused at once, whatever the transport."""
    limit(MAX_JOBS_PER_CLIENT=1)
    client = Client(app, connect, transport)
    fields = {**fields_for(row.name, key, causal_key)}
    if row.name == "analyze":
        fields["text"] = f"Not cached yet: {uuid.uuid4()}"
    if row.name == "generate":  # a continuation no other test generated (memoised) or is generating
        fields["text"] = f"Once upon {uuid.uuid4().hex[:8]}"
    if row.name == "lens":
        fields["start"] = int(time.time_ns() % 4)  # a window not memoised by another test
    if row.name == "ablate":
        fields["heads"] = [1 + time.time_ns() % 71]  # minilm has 72 heads; [0] is the other test's
    if row.name == "patch":
        fields["corrupt"] = fresh_corruption()
    if row.name in ("mixing", "feedforward", "routes"):  # memoised per analysis: a fresh one must queue
        fields["key"] = service.analyze("minilm", f"Not weighed yet: {uuid.uuid4()}").key
    blocker = Blocker(service)
    queued = blocker.queue.waiting  # an earlier test's request may wait too, behind the blocker
    try:
        if transport == "socket":
            client.send(row.name, fields, "waits")
            waiting = None
        else:
            waiting = threading.Thread(target=client.ask, args=(row.name, fields, "waits"))
            waiting.start()
        deadline = time.monotonic() + ANSWER_SECONDS
        while blocker.queue.waiting <= queued:
            assert time.monotonic() < deadline, "the first request never reached the device queue"
            time.sleep(0.01)
        refused = client.ask(row.name, fields, rid="refused")
        assert refused.get("code") == "busy" and "already has" in refused["message"], refused
    finally:
        blocker.release()
        if waiting is not None:
            waiting.join(ANSWER_SECONDS)


@pytest.fixture()
def counted(monkeypatch) -> dict[str, int]:
    """How many times each cpu row's handler runs during the test (it still runs)."""
    counts = {row.name: 0 for row in CPU_ROWS}

    def counting(row):
        def handler(call, fields):
            counts[row.name] += 1
            return row.handler(call, fields)

        return dataclasses.replace(row, handler=handler)

    for row in CPU_ROWS:
        replaced = counting(row)
        monkeypatch.setitem(REQUESTS, row.name, replaced)
        if row.socket:
            monkeypatch.setitem(SOCKET_EVENTS, row.name, replaced)
    return counts


@pytest.mark.parametrize("row", CPU_ROWS, ids=lambda row: row.name)
def test_cpu_requests_are_computed_once_per_key_over_both_transports(app, connect, service, counted, row):
    fresh = service.analyze("minilm", f"Each analysis of this is computed once: {uuid.uuid4()}").key
    fields = fields_for(row.name, fresh)
    if row.name == "compare":
        fields["other"] = fresh
    answers = [
        Client(app, connect, transport).ask(row.name, fields, rid=str(i)) for i, transport in enumerate(TRANSPORTS * 2)
    ]
    assert all("code" not in answer for answer in answers), answers
    assert counted[row.name] == 1
    assert len({str(answer.get("key")) for answer in answers}) == 1


def test_concurrent_identical_cpu_requests_share_one_computation(app, connect, service, counted):
    fresh = service.analyze("minilm", f"Asked by many at once: {uuid.uuid4()}").key
    clients = [Client(app, connect, "http") for _ in range(4)]
    threads = [threading.Thread(target=client.ask, args=("heads", {"key": fresh})) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ANSWER_SECONDS)
    assert counted["heads"] == 1
