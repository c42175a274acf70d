"""The Procfile's gunicorn server (app.serving.ThreadWorker) goes on accepting connections while
peers that neither read nor close linger: gunicorn's own gthread worker spent up to 2 s per such
peer closing it on the loop that accepts, so a handful of them kept everyone else out."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from scripts.loadtest import procfile_command, procfile_environment

ROOT = Path(__file__).resolve().parents[2]
QUIET_PEERS = 8  # each held gunicorn's accepting loop for 2 s: 16 s before a newcomer got in
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def procfile_server(tmp_path):
    port = free_port()
    command = procfile_command(port)  # the Procfile's web line, as the load test reads it
    settings = {"ATLAS_CACHE_DIR": str(tmp_path), "ATLAS_PRELOAD_MODELS": "[]"}
    environment = {**os.environ, **procfile_environment(), **settings}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server's output for its lifetime
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url + "/api/models", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the Procfile server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield url, port
    server.terminate()
    server.wait(30)
    log.close()


def test_peers_that_linger_do_not_keep_newcomers_out(procfile_server):
    url, port = procfile_server
    lingering = []
    for _ in range(QUIET_PEERS):  # ask, take no answer, never close
        peer = socket.create_connection(("127.0.0.1", port))
        peer.sendall(b"GET /api/models HTTP/1.1\r\nHost: atlas\r\nConnection: close\r\n\r\n")
        lingering.append(peer)
    time.sleep(0.5)  # their answers are sent; gunicorn closes them now
    started = time.monotonic()
    with urllib.request.urlopen(url + "/api/models", timeout=60) as answer:
        assert answer.status == 200
    waited = time.monotonic() - started
    for peer in lingering:
        peer.close()
    assert waited < QUIET_PEERS, f"a newcomer waited {waited:.1f} s behind {QUIET_PEERS} lingering peers"
