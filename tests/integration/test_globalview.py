"""The global view through its transports: ``python -m app atlas`` (progress, then a second run
that computes nothing), and the ``atlas`` / ``atlas_head`` requests over Socket.IO and HTTP,
which carry binary float16 points one head at a time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.globalview import atlas
from app.globalview.corpus import read_corpus
from app.protocol import NAMESPACE
from tests.integration.conftest import collect
from tests.wire import decode_array, decode_strings

ROOT = Path(__file__).resolve().parents[2]
TEXTS = (
    "The cat sat on the mat because it was tired.",
    "Alice met Bob at the market, and later Alice told Bob about Lisbon.",
    "Water boils at 100 degrees Celsius at sea level.",
    '"Where have you been?" asked his mother.',
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "The keys to the cabinet are on the shelf.",
    "Preheat the oven, mix the flour and sugar, and bake for thirty minutes.",
    "Penguins cannot fly, but they are excellent swimmers.",
)


def write_corpus(folder: Path) -> Path:
    path = folder / "small.txt"
    path.write_text("# a small corpus for the tests\n" + "\n".join(TEXTS) + "\n")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.real_model
def test_atlas_command_shows_progress_and_a_second_run_computes_nothing(tmp_path):
    corpus = write_corpus(tmp_path)
    args = ("--cache-dir", str(tmp_path / "cache"), "atlas", "--model", "minilm", "--corpus", str(corpus))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"{len(TEXTS)}/{len(TEXTS)}" in first.stderr  # the progress bar reached the end
    assert re.search(rf"{len(TEXTS)} texts, \d+ tokens, computed in", first.stdout), first.stdout
    stored = sorted(p.name for p in (tmp_path / "cache" / "results").rglob("*") if p.is_file())
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert re.search(rf"{len(TEXTS)} texts, \d+ tokens, cached in", second.stdout), second.stdout
    assert f"1/{len(TEXTS)}" not in second.stderr  # no text went through the model
    assert "loaded minilm" not in second.stderr  # nor was the model loaded
    assert sorted(p.name for p in (tmp_path / "cache" / "results").rglob("*") if p.is_file()) == stored


def test_atlas_command_reports_a_bad_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    result = run_cli("--cache-dir", str(tmp_path / "cache"), "atlas", "--corpus", str(empty))
    assert result.returncode == 2 and "no texts" in result.stderr


@pytest.fixture(scope="module")
def built(service, tmp_path_factory):
    corpus = read_corpus(write_corpus(tmp_path_factory.mktemp("corpus")))
    done = atlas.build(service, "minilm", corpus)
    assert done.texts == len(TEXTS) and not done.cached
    return corpus, done


@pytest.mark.real_model
def test_socket_streams_the_tiles_then_one_head_at_a_time(socket_client, built):
    corpus, done = built
    socket_client.emit("atlas", {"rid": 1, "model": "minilm", "corpus": corpus.id}, namespace=NAMESPACE)
    tiles = next(e for e in collect(socket_client, until=("atlas", "error")) if e["name"] == "atlas")
    assert (tiles["layers"], tiles["heads"]) == (6, 12)
    tokens = decode_strings(tiles["tokens"])
    assert len(tokens) == done.tokens and decode_strings(tiles["texts"]) == list(TEXTS)
    assert isinstance(tiles["points"]["data"], bytes) and tiles["points"]["dtype"] == "float16"
    sample = decode_array(tiles["sample"])
    assert decode_array(tiles["points"]).shape == (6, 12, 2 * len(sample), 2)

    socket_client.emit(
        "atlas_head", {"rid": 2, "model": "minilm", "corpus": corpus.id, "layer": 3, "head": 5}, namespace=NAMESPACE
    )
    head = next(e for e in collect(socket_client, until=("atlas_head", "error")) if e["name"] == "atlas_head")
    points = decode_array(head["points"])
    assert head["points"]["dtype"] == "float16" and points.shape == (2 * done.tokens, 2)
    assert np.abs(points).max() <= 1.0
    # the tile is the same head's points at the sample's tokens (queries, then keys)
    tile = decode_array(tiles["points"])[3, 5]
    np.testing.assert_array_equal(tile, points[np.concatenate([sample, done.tokens + sample])])
    top = decode_array(head["top"])
    assert top.shape == (done.tokens, atlas.TOP_KEYS)


@pytest.mark.real_model
def test_http_answers_the_same_points_as_the_socket(client, socket_client, built):
    corpus, done = built
    answer = client.get(f"/api/atlas/minilm/1/2?corpus={corpus.id}&method=pca").get_json()
    socket_client.emit(
        "atlas_head", {"rid": 3, "model": "minilm", "corpus": corpus.id, "layer": 1, "head": 2}, namespace=NAMESPACE
    )
    head = next(e for e in collect(socket_client, until=("atlas_head", "error")) if e["name"] == "atlas_head")
    np.testing.assert_array_equal(decode_array(answer["points"]), decode_array(head["points"]))
    tiles = client.get(f"/api/atlas/minilm?corpus={corpus.id}").get_json()
    assert decode_strings(tiles["texts"]) == list(TEXTS)


@pytest.mark.real_model
def test_tsne_is_computed_once_then_served(client, service, built):
    corpus, done = built
    url = f"/api/atlas/minilm/0/0?corpus={corpus.id}&method=tsne"
    first = decode_array(client.get(url).get_json()["points"])
    assert first.shape == (2 * done.tokens, 2) and np.isfinite(first).all()
    stored = service.memo.get(done.key, "atlas:points:tsne:0:0")
    np.testing.assert_array_equal(stored["points"], first)
    np.testing.assert_array_equal(decode_array(client.get(url).get_json()["points"]), first)


@pytest.mark.real_model
def test_bad_requests_get_clear_errors(client, built):
    corpus, _ = built
    missing = client.get(f"/api/atlas/minilm?corpus={'f' * 16}")
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_computed"
    assert "python -m app atlas" in missing.get_json()["message"]
    beyond = client.get(f"/api/atlas/minilm/6/0?corpus={corpus.id}")
    assert beyond.status_code == 400 and "6 layers" in beyond.get_json()["message"]
    assert client.get(f"/api/atlas/minilm/0/0?corpus={corpus.id}&method=lda").get_json()["code"] == "bad_request"
    assert client.get("/api/atlas/minilm?corpus=../etc").get_json()["code"] == "bad_request"
    assert client.get("/api/atlas/nope").get_json()["code"] == "unknown_model"
