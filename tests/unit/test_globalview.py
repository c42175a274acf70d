"""The global view's joint embedding against the AttentionViz construction (Yeh et al., 2023)
written out here from its definition, PCA against numpy's SVD, what the atlas keeps of one
capture (top keys, token categories) against the capture itself, and the index of the prompts
analysed here (the second corpus)."""

from __future__ import annotations

import numpy as np
import pytest

from app.cache import CaptureCache, DiskStore
from app.globalview import atlas, embedding
from app.globalview.analysed import AnalysedIndex
from app.globalview.corpus import MAX_TEXT_CHARS, Corpus, builtin_corpus, read_corpus
from app.memo import Memo
from models.capture import run_capture

RNG = np.random.default_rng(7)


def clouds(n: int = 120, m: int = 90, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Queries and keys as heads make them: offset from each other, of different sizes."""
    queries = RNG.normal(size=(n, d)) * 3.0 + RNG.normal(size=d) * 5
    keys = RNG.normal(size=(m, d)) * 0.5 - RNG.normal(size=d) * 2
    return queries, keys


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)


def test_normalisation_follows_the_papers_formulas():
    """Scale queries by c and keys by 1/c with c = sqrt(mean ||k|| / mean ||q||), then move the
    key centroid onto the query centroid."""
    queries, keys = clouds()
    c = np.sqrt(np.mean(np.linalg.norm(keys, axis=1)) / np.mean(np.linalg.norm(queries, axis=1)))
    expected_queries = c * queries
    expected_keys = keys / c - np.mean(keys / c, axis=0) + np.mean(c * queries, axis=0)
    got_queries, got_keys = embedding.normalise(queries, keys)
    np.testing.assert_allclose(got_queries, expected_queries, rtol=1e-12)
    np.testing.assert_allclose(got_keys, expected_keys, rtol=1e-12, atol=1e-12)


def test_normalisation_overlaps_the_clouds_and_keeps_attention():
    queries, keys = clouds()
    got_queries, got_keys = embedding.normalise(queries, keys)
    np.testing.assert_allclose(got_queries.mean(axis=0), got_keys.mean(axis=0), atol=1e-9)  # centroids coincide
    c = np.linalg.norm(got_queries[0]) / np.linalg.norm(queries[0])
    assert np.isclose(np.linalg.norm(c * queries, axis=1).mean(), np.linalg.norm(keys / c, axis=1).mean())  # norms
    np.testing.assert_allclose(softmax_rows(got_queries @ got_keys.T), softmax_rows(queries @ keys.T), atol=1e-9)


def test_pca_matches_numpys_svd():
    points = RNG.normal(size=(300, 12)) @ RNG.normal(size=(12, 12))  # correlated axes
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:2].T
    got = embedding.pca_2d(points)
    signs = np.sign(np.sum(got * reference, axis=0))  # an axis is defined up to its sign
    np.testing.assert_allclose(got, reference * signs, atol=1e-8)
    assert got[:, 0].var() >= got[:, 1].var()


def test_pca_axes_do_not_depend_on_the_solvers_signs():
    """One head always gives one picture: each axis's largest loading is positive, so mirrored
    points (same covariance, same axes) give the mirrored picture, not the solver's choice."""
    points = RNG.normal(size=(200, 8)) * np.arange(1, 9)
    got = embedding.pca_2d(points)
    np.testing.assert_allclose(embedding.pca_2d(-points), -got, atol=1e-9)
    centred = points - points.mean(axis=0)
    loadings = np.linalg.lstsq(centred, got, rcond=None)[0]  # [8, 2], the axes
    assert np.all(loadings[np.abs(loadings).argmax(axis=0), [0, 1]] > 0)


def test_joint_embedding_lists_queries_then_keys_in_the_unit_box():
    queries, keys = clouds()
    positions = embedding.joint_embedding(queries, keys, "pca")
    assert positions.shape == (len(queries) + len(keys), 2) and positions.dtype == np.float32
    assert np.isclose(np.abs(positions).max(), 1.0)
    reference = embedding.pca_2d(np.concatenate(embedding.normalise(queries, keys)))
    centred = reference - (reference.max(axis=0) + reference.min(axis=0)) / 2  # the box's centre at 0
    np.testing.assert_allclose(positions, centred / np.abs(centred).max(), atol=1e-5)  # PCA runs in float32


def test_categories_name_special_first_punctuation_and_word_pieces():
    text = "Hello, worldwide friends!"
    spans = np.array([[0, 0], [0, 5], [5, 6], [6, 12], [12, 16], [16, 24], [24, 25], [25, 25]])
    special = np.array([True, False, False, False, False, False, False, True])
    names = [atlas.CATEGORIES[code] for code in atlas.categories(text, spans, special)]
    assert names == ["special", "first", "punctuation", "word", "continuation", "word", "punctuation", "special"]


@pytest.fixture(scope="module")
def sentence(tiny_models):
    return atlas.sentence_of(tiny_models["tiny-llama"], "The cat sat on the mat because it was tired.", 128)


def test_a_sentence_keeps_each_querys_most_attended_keys(tiny_models, sentence):
    capture = run_capture(tiny_models["tiny-llama"], sentence.text)
    layer, head = 1, 3
    attention = capture.head_attention(layer, head)  # [N, N], causal
    for query in range(capture.n_tokens):
        visible = min(query + 1, atlas.TOP_KEYS)
        top = sentence.top[layer, head, query]
        assert list(top[visible:]) == [atlas.NO_KEY] * (atlas.TOP_KEYS - visible)  # future keys are never attended
        np.testing.assert_allclose(
            np.sort(attention[query, top[:visible].astype(int)]), np.sort(attention[query])[-visible:], atol=1e-3
        )
    assert sentence.keys.shape[1] == 2 and list(sentence.kv_map) == [0, 0, 1, 1]  # grouped-query heads


def test_stored_atlas_reads_back_every_head(tmp_path, sentence):
    """store() writes index, layers and every head's PCA, and a second memo over the same disk
    (another process, a restart) reads the same points."""
    cache = CaptureCache(DiskStore(tmp_path, 1 << 30), 1 << 30)
    memo = Memo(cache, 1 << 30)
    corpus = Corpus("two", (sentence.text, sentence.text))
    matrix = atlas.store(memo, "k" * 64, "tiny-llama", corpus, [sentence, sentence])
    n = len(sentence.tokens)
    layers, heads = sentence.queries.shape[:2]
    assert matrix["points"].shape == (layers, heads, 2 * min(atlas.MATRIX_SAMPLE, 2 * n), 2)
    cache.flush()
    again = atlas.Atlas(Memo(CaptureCache(DiskStore(tmp_path, 1 << 30), 1 << 30), 1 << 30), "k" * 64)
    assert again.meta["tokens"] == sentence.tokens * 2 and again.meta["heads"] == heads
    layer, head = 1, 2
    queries = np.concatenate([sentence.queries[layer, head]] * 2).astype(np.float32)
    keys = np.concatenate([sentence.keys[layer, sentence.kv_map[head]]] * 2).astype(np.float32)
    expected = embedding.joint_embedding(queries, keys, "pca")
    np.testing.assert_allclose(again.points(layer, head, "pca").astype(np.float32), expected, atol=2e-3)
    np.testing.assert_array_equal(again.entry("atlas:index")["starts"], [0, n, 2 * n])


def test_corpus_files(tmp_path):
    corpus = builtin_corpus()
    assert len(corpus.texts) >= 300 and len(set(corpus.texts)) == len(corpus.texts)
    path = tmp_path / "mine.txt"
    path.write_text("# a comment\n\nOne.\n  Two.  \n")
    mine = read_corpus(path)
    assert mine.texts == ("One.", "Two.") and mine.name == "mine" and len(mine.id) == 16
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no texts"):
        read_corpus(path)


def test_an_analysis_from_the_cache_gives_the_sentence_the_model_gives(tiny_models, sentence):
    """The "analysed here" corpus reads cached analyses instead of running the model again: the
    same capture, reduced, is the same sentence."""
    capture = run_capture(tiny_models["tiny-llama"], sentence.text, max_tokens=128)
    again = atlas.sentence_from(capture, sentence.text)
    assert again.tokens == sentence.tokens
    for name in ("spans", "categories", "queries", "keys", "top", "weights", "kv_map"):
        np.testing.assert_array_equal(getattr(again, name), getattr(sentence, name))


def test_the_analysed_index_keeps_the_latest_distinct_texts_per_model(tmp_path):
    index = AnalysedIndex(tmp_path, max_texts=3)
    for i, text in enumerate(["b", "a", "c", "a", "d"]):
        index.add("m1", f"{i:064x}", text)
    index.add("m2", "f" * 64, "other model")
    index.add("m1", "e" * 64, "x" * (MAX_TEXT_CHARS + 1))  # longer than a corpus line: left out
    assert index.entries("m1") == {"d": f"{4:064x}", "a": f"{3:064x}", "c": f"{2:064x}"}  # "b" is the oldest
    corpus = index.corpus("m1")
    assert corpus.texts == ("a", "c", "d") and corpus.keys == (f"{3:064x}", f"{2:064x}", f"{4:064x}")
    assert corpus.id == Corpus("other", ("a", "c", "d")).id  # named by its texts, not their keys or order
    assert index.corpus("m2").texts == ("other model",) and index.corpus("nobody").texts == ()
    # another process (a restarted server) reads the same; the file never holds twice the bound
    reopened = AnalysedIndex(tmp_path, max_texts=3)
    assert reopened.entries("m1") == index.entries("m1")
    (path,) = [p for p in tmp_path.iterdir() if '"d"' in p.read_text()]
    for i in range(4):
        reopened.add("m1", f"{i:064x}", f"new {i}")
        assert len(path.read_text().splitlines()) <= 2 * 3
    assert sorted(reopened.entries("m1")) == ["new 1", "new 2", "new 3"]
    off = AnalysedIndex(tmp_path / "off", max_texts=0)  # ANALYSED_TEXTS=0: a public server lists nothing
    off.add("m1", "a" * 64, "private")
    assert off.entries("m1") == {} and not (tmp_path / "off").exists()


def test_the_analysed_index_skips_a_line_cut_short(tmp_path):
    index = AnalysedIndex(tmp_path, 10)
    index.add("m", "a" * 64, "kept")
    (path,) = tmp_path.iterdir()
    with path.open("a") as file:
        file.write('{"key": "b", "te')  # a crash in the middle of a write
    assert index.entries("m") == {"kept": "a" * 64}
