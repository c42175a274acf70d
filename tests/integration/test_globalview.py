"""The global view through its transports: ``python -m app atlas`` (progress, then a second run
that computes nothing), and the ``atlas`` / ``atlas_head`` requests over Socket.IO and HTTP,
which carry binary float16 points one head at a time; a page's own analyses (``atlas_corpus``)
and the prompts analysed here as corpora, computed in the background; UMAP by its properties."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app.globalview import atlas, embedding
from app.globalview.corpus import Corpus, builtin_corpus, read_corpus
from app.protocol import NAMESPACE, AtlasError
from tests.integration.conftest import collect, live_server, release_port
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


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment
    )


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


def test_a_server_lists_no_analysed_prompts_unless_its_operator_says_so(client, service):
    """Every user would see every other's prompts: off by default (ATLAS_ANALYSED_TEXTS=0)."""
    assert (
        service.config["ANALYSED_TEXTS"] == 0
        and client.get("/api/settings").get_json()["limits"]["analysed_texts"] == 0
    )
    answer = client.get("/api/atlas/minilm?corpus=analysed")
    assert answer.status_code == 403 and "ATLAS_ANALYSED_TEXTS=0" in answer.get_json()["message"]


def knn(points: np.ndarray, k: int) -> np.ndarray:
    """[n, k] indices of each point's k nearest other points (Euclidean)."""
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1)[:, :k]


def test_umap_is_deterministic_and_keeps_neighbourhoods():
    """UMAP by its properties (its picture has no closed form): one seed, one picture; [n, 2];
    each point's nearest neighbours in 16-D are largely its nearest in the picture, far more
    than chance (k / n), and the clusters stay apart. About 15 s: numba compiles UMAP once."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 75)
    points = (rng.normal(size=(4, 16)) * 6)[labels] + rng.normal(size=(300, 16))
    first = embedding.umap_2d(points.astype(np.float32))
    assert first.shape == (300, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(embedding.umap_2d(points.astype(np.float32)), first)
    k = 10
    high, low = knn(points, k), knn(first, k)
    kept = np.mean([len(set(a) & set(b)) / k for a, b in zip(high, low, strict=True)])
    assert kept > 0.3  # chance keeps k / n = 0.03 of them
    assert np.mean(labels[low] == labels[:, None]) > 0.95
    joint = embedding.joint_embedding(points[:150], points[150:], "umap")  # queries, then keys, in the unit box
    assert joint.shape == (300, 2) and np.isclose(np.abs(joint).max(), 1.0)


def ask_until_computed(client, url: str, timeout: float = 240) -> list[dict]:
    """The answers to ``url`` while the server computes the atlas, then the atlas itself."""
    answers = [client.get(url).get_json()]
    deadline = time.monotonic() + timeout
    while "computing" in answers[-1] and time.monotonic() < deadline:
        time.sleep(0.5)
        answers.append(client.get(url).get_json())
    return answers


@pytest.mark.real_model
def test_the_server_computes_the_prompts_analysed_here_in_the_background(client, service, monkeypatch):
    """The page asks for the atlas of the prompts analysed here: the server builds it in the
    background from their cached analyses (model work only for one no longer cached) and
    answers how far it has come until it is there; its id (a share link's) opens the same."""
    monkeypatch.setattr(service.analysed, "max_texts", 500)  # as ATLAS_ANALYSED_TEXTS=500 sets it
    mine = ("The orchestra tuned up before the concert.", "A heron stood still in the shallow river.")
    for text in mine:
        assert client.post("/api/analyze", json={"model": "minilm", "text": text}).status_code == 200
    corpus = service.analysed.corpus("minilm")
    assert set(mine) <= set(corpus.texts)
    uncached = sum(service.cache.get(key) is None for key in corpus.keys)
    model_work = []
    real = service.model_work
    monkeypatch.setattr(service, "model_work", lambda *args, **kw: model_work.append(1) or real(*args, **kw))

    answers = ask_until_computed(client, "/api/atlas/minilm?corpus=analysed")
    assert answers[0]["computing"]["state"] in ("waiting", "running") and answers[0]["corpus_name"] == "analysed"
    assert all(a["computing"]["total"] == len(corpus.texts) for a in answers[:-1])
    done = answers[-1]
    assert "computing" not in done, done
    assert decode_strings(done["texts"]) == list(corpus.texts) and done["corpus"] == corpus.id
    assert len(model_work) == uncached  # read from the cache, not the model
    by_id = client.get(f"/api/atlas/minilm?corpus={corpus.id}").get_json()
    np.testing.assert_array_equal(decode_array(by_id["points"]), decode_array(done["points"]))
    head = client.get("/api/atlas/minilm/2/1?corpus=analysed").get_json()
    assert decode_array(head["points"]).shape == (2 * len(decode_strings(done["tokens"])), 2)


@pytest.mark.real_model
def test_atlas_command_builds_the_prompts_analysed_here(tmp_path):
    cache, listed = ("--cache-dir", str(tmp_path / "cache")), {"ATLAS_ANALYSED_TEXTS": "500"}
    off = run_cli(*cache, "atlas", "--model", "minilm", "--analysed")
    assert off.returncode == 2 and "ATLAS_ANALYSED_TEXTS=0" in off.stderr
    nothing = run_cli(*cache, "atlas", "--model", "minilm", "--analysed", env=listed)
    assert nothing.returncode == 2 and "no prompt has been analysed with minilm" in nothing.stderr
    text = "Bees dance to tell each other where the flowers are."
    out = str(tmp_path / "a.npz")
    captured = run_cli(*cache, "capture", "--model", "minilm", "--text", text, "--out", out, env=listed)
    assert captured.returncode == 0, captured.stderr
    built = run_cli(*cache, "atlas", "--model", "minilm", "--analysed", env=listed)
    assert built.returncode == 0, built.stderr
    assert "1/1" in built.stderr and f"(corpus {Corpus('analysed', (text,)).id}): 1 texts" in built.stdout
    assert "loaded minilm" not in built.stderr  # its one text came from the cache


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.mark.real_model
def test_a_classroom_server_precomputes_the_atlas_and_the_page_sees_its_progress(tmp_path):
    """``ATLAS_PRECOMPUTE_ATLAS`` queues the built-in corpus's atlas at start-up: a page asking
    meanwhile hears how far that build has come (it starts no second one), then gets the atlas."""
    with live_server(tmp_path / "cache", PRECOMPUTE_ATLAS='["minilm"]') as url:
        answers = [fetch_json(f"{url}/api/atlas/minilm")]
        deadline = time.monotonic() + 240
        while "computing" in answers[-1] and time.monotonic() < deadline:
            time.sleep(0.3)
            answers.append(fetch_json(f"{url}/api/atlas/minilm"))
        total = len(builtin_corpus().texts)
        assert answers[0]["computing"]["total"] == total and answers[0]["corpus_name"] == "builtin"
        done = [a["computing"]["done"] for a in answers[:-1]]
        assert done == sorted(done) and done[-1] > 0  # progress only goes forward
        assert len(decode_strings(answers[-1]["texts"])) == total
        (log,) = tmp_path.glob("cache.*.log")
        while "atlas of minilm on builtin" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # written as the build ends, maybe just after the atlas was read
        assert log.read_text().count("atlas of minilm on builtin: computed") == 1  # one build, not two


def test_a_failed_background_build_is_told_once_then_tried_again(service):
    """A build that fails (every text over the model's token limit) answers its error to the
    next request only; the request after that starts it again."""
    corpus = Corpus("too-long", ("word " * 3000,))
    service.atlas_builds.ask(service, "minilm", corpus)
    deadline = time.monotonic() + 120
    with pytest.raises(AtlasError) as failed:
        while time.monotonic() < deadline:
            service.atlas_builds.ask(service, "minilm", corpus)
            time.sleep(0.1)
    assert failed.value.code == "bad_request" and "could read none" in failed.value.message
    assert service.atlas_builds.ask(service, "minilm", corpus).corpus == corpus  # asked again: built again


MY_TEXTS = (
    "The lighthouse keeper counted the ships.",
    "Rain fell on the tin roof all night.",
    "She said that she would call him tomorrow.",
)


def analyse(client, text: str, model: str = "minilm") -> str:
    answer = client.post("/api/analyze", json={"model": model, "text": text})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["key"]


@pytest.mark.real_model
def test_my_analyses_are_an_atlas_of_exactly_those_records(client, service, test_model, monkeypatch):
    """ "My analyses": the page names the analyses it ran by their keys; the server builds, in the
    background, the atlas of exactly those cached records (no forward pass), names it by the set
    (order and repeats do not matter) and counts what it left out: a key not cached, another
    model's analysis, a text longer than a corpus line. The id then opens it for anyone."""
    keys = [analyse(client, text) for text in MY_TEXTS]
    test_model("other-bert")
    other = analyse(client, "A prompt analysed with another model.", "other-bert")
    long = analyse(client, "Many words " * 200)  # 2,200 characters: not a corpus line
    model_work = []
    real = service.model_work
    monkeypatch.setattr(service, "model_work", lambda *args, **kw: model_work.append(1) or real(*args, **kw))

    named = [*keys[::-1], other, long, "0" * 64, keys[0]]
    first = client.post("/api/atlas/minilm/corpus", json={"keys": named}).get_json()
    corpus = Corpus("mine", tuple(sorted(MY_TEXTS)))
    assert (first["corpus"], first["corpus_name"], first["texts"]) == (corpus.id, "mine", 3), first
    assert first["skipped"] == {"not_cached": 1, "other_model": 1, "too_long": 1}
    assert first["computing"]["total"] == 3  # its build has started
    again = client.post("/api/atlas/minilm/corpus", json={"keys": keys}).get_json()
    assert again["corpus"] == corpus.id and again["skipped"] == {"not_cached": 0, "other_model": 0, "too_long": 0}

    done = ask_until_computed(client, f"/api/atlas/minilm?corpus={corpus.id}")[-1]
    assert "computing" not in done and done["corpus_name"] == "mine"
    assert decode_strings(done["texts"]) == sorted(MY_TEXTS)
    records = [service.cache.get(keys[MY_TEXTS.index(text)]) for text in sorted(MY_TEXTS)]
    assert decode_strings(done["tokens"]) == [token for record in records for token in record.tokens]
    stored = atlas.open_atlas(service, "minilm", corpus.id).entry("atlas:layer:4")
    expected = np.concatenate([record.queries[4] for record in records], axis=1).astype(np.float16)  # [H, T, d]
    np.testing.assert_array_equal(stored["queries"], expected)
    assert not model_work  # read from the cache, not the model
    head = client.get(f"/api/atlas/minilm/4/3?corpus={corpus.id}").get_json()
    assert decode_array(head["points"]).shape == (2 * expected.shape[1], 2)


@pytest.mark.parametrize(
    ("keys", "status", "says"),
    [
        ("0" * 64, 400, "'keys' must be of type list"),
        (["not-a-key"], 400, "'keys' item 0 is not the 64-character key of an analysis"),
        (["0" * 64, "F" * 64], 400, "'keys' item 1 is not"),
        ([7], 400, "'keys' must be a list of at most 100 strings"),
        (["0" * 64] * 101, 400, "'keys' must be a list of at most 100 strings"),
        (["0" * 64], 404, "none of these analyses of minilm is in the server's cache"),
    ],
)
def test_my_analyses_refuse_bad_keys_clearly(client, keys, status, says):
    answer = client.post("/api/atlas/minilm/corpus", json={"keys": keys})
    assert answer.status_code == status and says in answer.get_json()["message"], answer.get_json()


def test_my_analyses_over_the_socket_and_the_published_limit(socket_client, client):
    assert client.get("/api/settings").get_json()["limits"]["my_analyses_max_keys"] == 100
    socket_client.emit("atlas_corpus", {"rid": 7, "model": "minilm", "keys": ["nope"]}, namespace=NAMESPACE)
    (error,) = [e for e in collect(socket_client, until=("error",), rid=7) if e["name"] == "error"]
    assert error["code"] == "bad_request" and "item 0" in error["message"]


@pytest.mark.real_model
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_web_processes_sharing_redis_build_an_atlas_once_and_show_its_progress(tmp_path):
    """Scale-out: two web processes over one Redis. The built-in corpus asked on A is built there;
    B, asked for it meanwhile by name or by its id (a share link), answers A's progress and builds
    nothing (it never even loads the model); once there, B serves it from the shared store."""
    from tests.integration.test_scaleout import RedisServer, web

    redis = RedisServer(tmp_path)
    redis.start()
    try:
        with contextlib.ExitStack() as stack:
            a, b = web(stack, tmp_path / "a", redis.url), web(stack, tmp_path / "b", redis.url)
            started = fetch_json(f"{a}/api/atlas/minilm")
            total = len(builtin_corpus().texts)
            assert started["computing"]["total"] == total, started
            answers = [
                fetch_json(f"{b}/api/atlas/minilm"),
                fetch_json(f"{b}/api/atlas/minilm?corpus={started['corpus']}"),
            ]
            assert all(answer["computing"]["total"] == total for answer in answers), answers
            deadline = time.monotonic() + 300
            while "computing" in answers[-1] and time.monotonic() < deadline:
                time.sleep(0.5)
                answers.append(fetch_json(f"{b}/api/atlas/minilm?corpus={started['corpus']}"))
            done = [answer["computing"]["done"] for answer in answers[:-1]]
            assert done == sorted(done) and done[-1] > 0, done  # A's progress, heard on B
            assert len(decode_strings(answers[-1]["texts"])) == total
            head = fetch_json(f"{b}/api/atlas/minilm/3/4?corpus={started['corpus']}")
            assert decode_array(head["points"]).shape[1] == 2
        (log_a,), (log_b,) = tmp_path.glob("a.*.log"), tmp_path.glob("b.*.log")
        assert log_a.read_text().count("atlas of minilm on builtin: computed") == 1
        assert "atlas of minilm" not in log_b.read_text() and "loaded minilm" not in log_b.read_text()
    finally:
        redis.stop()
        release_port(redis.port)
