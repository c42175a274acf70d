"""A model's atlas: every head's queries and keys over a corpus, computed once and kept in the
service's memo (memory, then the results store: disk or Redis), so every process and every later
run finds it.

Build: each text of the corpus goes through the model as its own piece of model work
(:meth:`app.service.AtlasService.model_work`, so a server keeps answering its users between
texts) and the existing capture (:func:`models.capture.run_capture`: queries and keys as the
model used them, after rotary embedding). Stored, under one key per (model, weights, corpus):

- ``atlas:index``: the corpus's tokens (text, sentence, position, category), T tokens in all;
- ``atlas:layer:L``: that layer's queries [H, T, d] and keys [KV, T, d] (float16), and each
  query's TOP_KEYS most attended keys in its own text with their weights;
- ``atlas:points:METHOD:L:H``: one head's joint embedding [2T, 2] (queries, then keys): PCA for
  every head at build time, t-SNE and UMAP when first asked for;
- ``atlas:matrix``: every head's PCA points for MATRIX_SAMPLE tokens, written last: its presence
  means the atlas is complete.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.cache import cache_key
from app.globalview.corpus import BUILTIN, ID_CHARS, Corpus, builtin_corpus
from app.globalview.embedding import joint_embedding
from app.protocol import AtlasError

log = logging.getLogger(__name__)

ATLAS_VERSION = 2  # bump when what is stored changes; part of the atlas key
TOP_KEYS = 4  # most attended keys kept per query and head (the detail view's lines)
MATRIX_SAMPLE = 200  # tokens per head in the matrix tiles (each gives a query and a key point)
NO_KEY = np.iinfo(np.uint16).max  # a top-key slot with no key (a text shorter than TOP_KEYS)
CATEGORIES = ("special", "first", "punctuation", "word", "continuation")  # token categories, by code
Arrays = dict[str, np.ndarray]
Progress = Callable[[int, int], None]  # (texts done, texts in all)


@dataclass
class Sentence:
    """What the atlas keeps of one text's capture. N tokens, L layers, H heads, KV key heads."""

    text: str
    tokens: list[str]
    spans: np.ndarray  # [N, 2] int32 character offsets into the text
    categories: np.ndarray  # [N] uint8, codes of CATEGORIES
    queries: np.ndarray  # [L, H, N, d] float16
    keys: np.ndarray  # [L, KV, N, d] float16
    top: np.ndarray  # [L, H, N, TOP_KEYS] uint16, positions in this text, NO_KEY where none
    weights: np.ndarray  # [L, H, N, TOP_KEYS] float16, their attention
    kv_map: np.ndarray  # [H] int32, the key head each query head reads


@dataclass
class Built:
    key: str
    cached: bool
    texts: int
    tokens: int
    seconds: float


def atlas_key(service, model: str, corpus_id: str) -> str:
    """The atlas's key: content-addressed like an analysis (model, weights, corpus, version)."""
    return cache_key(model, service.registry.fingerprint(model), f"atlas\x00{corpus_id}", {"atlas": ATLAS_VERSION})


def corpus_id(name: str) -> str:
    """The id a request names: ``builtin``, or the id ``python -m app atlas`` printed for a file."""
    if name == BUILTIN:
        return builtin_corpus().id
    if len(name) != ID_CHARS or any(c not in "0123456789abcdef" for c in name):
        raise AtlasError("bad_request", f"'corpus' must be '{BUILTIN}' or a {ID_CHARS}-character corpus id")
    return name


# ---- building ----


def build(service, model: str | None, corpus: Corpus, progress: Progress | None = None) -> Built:
    """Compute the atlas of ``corpus`` on ``model`` into the memo, unless it is there already.

    Raises AtlasError: ``unknown_model``, ``unsupported_model`` (an encoder-decoder model),
    ``bad_request`` (a corpus with no text the model can read), and what model work raises.
    """
    started = time.perf_counter()
    name = service.model_name(model)
    key = atlas_key(service, name, corpus.id)
    computed = []

    def compute() -> Arrays:
        computed.append(True)
        return store(service.memo, key, name, corpus, capture_texts(service, name, corpus, progress))

    service.memo.get_or_compute(key, "atlas:matrix", compute)
    meta = Atlas(service.memo, key).meta
    return Built(key, not computed, len(meta["texts"]), len(meta["tokens"]), time.perf_counter() - started)


def capture_texts(service, name: str, corpus: Corpus, progress: Progress | None) -> list[Sentence]:
    """Each text from its cached analysis when the corpus names one that is still cached, else
    through the model, one piece of model work at a time; a text the model cannot read (too
    long, empty after tokenizing) is skipped with a warning."""
    limit = service.token_limit(name)
    keys = corpus.keys or ("",) * len(corpus.texts)
    sentences = []
    for done, (text, key) in enumerate(zip(corpus.texts, keys, strict=True), start=1):
        try:
            cached = service.cache.get(key) if key else None
            if cached is not None:
                sentences.append(sentence_from(cached, text))
            else:
                sentences.append(service.model_work(name, lambda handle, text=text: sentence_of(handle, text, limit)))
        except AtlasError as error:
            if error.code not in ("too_long", "bad_request"):
                raise
            log.warning("atlas of %s: skipped a text (%s): %.60s", name, error.message, text)
        if progress:
            progress(done, len(corpus.texts))
    if not sentences:
        raise AtlasError("bad_request", f"{name} could read none of the corpus's texts")
    return sentences


def sentence_of(handle, text: str, limit: int) -> Sentence:
    """One text through the model, reduced to what the atlas keeps (runs inside model work)."""
    from models.capture import run_capture
    from models.errors import UnsupportedModelError

    if handle.describe()["encoder_decoder"]:
        raise UnsupportedModelError(f"the global view reads decoder-only and encoder-only models, not {handle.name}")
    return sentence_from(run_capture(handle, text, max_tokens=limit), text)


def sentence_from(capture, text: str) -> Sentence:
    """What the atlas keeps of one capture (a new one, or an analysis read from the cache)."""
    if capture.info.get("encoder_decoder"):
        raise AtlasError("unsupported_model", "the global view reads decoder-only and encoder-only models")
    attention = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])  # [L, H, N, N]
    order = np.argsort(-attention, axis=-1, kind="stable")[..., :TOP_KEYS]
    weights = np.take_along_axis(attention, order, axis=-1)
    top = np.full((*attention.shape[:3], TOP_KEYS), NO_KEY, np.uint16)
    top[..., : order.shape[-1]] = np.where(weights > 0, order, NO_KEY)
    padded = np.zeros(top.shape, np.float16)
    padded[..., : weights.shape[-1]] = weights
    return Sentence(
        text,
        list(capture.tokens),
        np.asarray(capture.spans, np.int32),
        categories(text, capture.spans, capture.special),
        np.asarray(capture.queries, np.float16),
        np.asarray(capture.keys, np.float16),
        top,
        padded,
        np.asarray(capture.kv_map, np.int32),
    )


def categories(text: str, spans: np.ndarray, special: np.ndarray) -> np.ndarray:
    """[N] uint8 codes of CATEGORIES: a token the tokenizer added; the text's first real token;
    punctuation (every character a Unicode punctuation or symbol); the start of a word (after
    whitespace or punctuation); the continuation of one."""
    codes = np.empty(len(special), np.uint8)
    first = True
    for i, (start, end) in enumerate(np.asarray(spans).tolist()):
        piece = text[start:end].strip()
        before = text[start - 1] if start > 0 else " "
        if special[i]:
            code = "special"
        elif first:
            code = "first"
        elif piece and all(unicodedata.category(c)[0] in "PS" for c in piece):
            code = "punctuation"
        elif text[start : start + 1].isspace() or before.isspace() or not before.isalnum():
            code = "word"
        else:
            code = "continuation"
        first = first and bool(special[i])
        codes[i] = CATEGORIES.index(code)
    return codes


def store(memo, key: str, model: str, corpus: Corpus, sentences: list[Sentence]) -> Arrays:
    """Write the index, each layer, every head's PCA points; returns the matrix entry (the last)."""
    memo.get_or_compute(key, "atlas:index", lambda: index_arrays(model, corpus, sentences))
    layers, heads = sentences[0].queries.shape[:2]
    for layer in range(layers):
        memo.get_or_compute(key, f"atlas:layer:{layer}", lambda layer=layer: layer_arrays(sentences, layer))
    total = sum(len(s.tokens) for s in sentences)
    sample = np.sort(np.random.default_rng(0).choice(total, min(MATRIX_SAMPLE, total), replace=False))
    atlas = Atlas(memo, key)
    points = np.stack(
        [
            np.stack(
                [atlas.points(layer, head, "pca")[np.concatenate([sample, total + sample])] for head in range(heads)]
            )
            for layer in range(layers)
        ]
    )  # [L, H, 2S, 2]
    return {"sample": sample.astype(np.int32), "points": points.astype(np.float16)}


def index_arrays(model: str, corpus: Corpus, sentences: list[Sentence]) -> Arrays:
    lengths = np.array([len(s.tokens) for s in sentences])
    layers, heads = sentences[0].queries.shape[:2]
    meta = {
        "model": model,
        "corpus": corpus.id,
        "name": corpus.name,
        "layers": int(layers),
        "heads": int(heads),
        "kv_heads": int(sentences[0].keys.shape[1]),
        "texts": [s.text for s in sentences],
        "tokens": [token for s in sentences for token in s.tokens],
    }
    return {
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
        "starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),  # [texts + 1]
        "sentence": np.repeat(np.arange(len(sentences)), lengths).astype(np.int32),  # [T]
        "position": np.concatenate([np.arange(n) for n in lengths]).astype(np.int32),  # [T]
        "category": np.concatenate([s.categories for s in sentences]),  # [T] uint8
        "spans": np.concatenate([s.spans for s in sentences]),  # [T, 2] int32, offsets into its text
    }


def layer_arrays(sentences: list[Sentence], layer: int) -> Arrays:
    return {
        "queries": np.concatenate([s.queries[layer] for s in sentences], axis=1),  # [H, T, d]
        "keys": np.concatenate([s.keys[layer] for s in sentences], axis=1),  # [KV, T, d]
        "kv_map": sentences[0].kv_map,  # [H]
        "top": np.concatenate([s.top[layer] for s in sentences], axis=1),  # [H, T, TOP_KEYS]
        "weights": np.concatenate([s.weights[layer] for s in sentences], axis=1),  # [H, T, TOP_KEYS]
    }


# ---- reading ----


class Atlas:
    """A stored atlas, read through the memo (entries load on first use)."""

    def __init__(self, memo, key: str):
        self.memo, self.key = memo, key

    def entry(self, name: str) -> Arrays:
        found = self.memo.get(self.key, name)
        if found is None:
            raise AtlasError("not_computed", "part of this atlas is missing from the cache; compute it again")
        return found

    @property
    def meta(self) -> dict:
        return json.loads(self.entry("atlas:index")["meta"].tobytes())

    def points(self, layer: int, head: int, method: str) -> np.ndarray:
        """[2T, 2] float16 joint embedding of one head, computed on first request."""

        def compute() -> Arrays:
            vectors = self.entry(f"atlas:layer:{layer}")
            queries = vectors["queries"][head].astype(np.float32)
            keys = vectors["keys"][vectors["kv_map"][head]].astype(np.float32)
            return {"points": joint_embedding(queries, keys, method).astype(np.float16)}

        return self.memo.get_or_compute(self.key, f"atlas:points:{method}:{layer}:{head}", compute)["points"]


def open_atlas(service, model: str | None, corpus: str) -> Atlas:
    """The complete atlas of a model and corpus; AtlasError ``not_computed`` when there is none."""
    name = service.model_name(model)
    key = atlas_key(service, name, corpus_id(corpus))
    if service.memo.get(key, "atlas:matrix") is None:
        raise AtlasError(
            "not_computed",
            f"the global view of {name} on this corpus is not computed yet; run "
            f"`python -m app atlas --model {name}` (or start the server with ATLAS_PRECOMPUTE_ATLAS='[\"{name}\"]')",
            404,
        )
    return Atlas(service.memo, key)
