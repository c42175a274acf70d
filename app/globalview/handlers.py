"""The global view's requests (rows ``atlas`` and ``atlas_head`` of app/requests.py): payloads
shaped from a stored atlas. ``atlas`` answers the corpus's tokens and every head's tile (a sample
of its PCA points), or, while the server computes the atlas in the background, how far it has
come (the page asks again); ``atlas_head`` one head's points, one head at a time, as float16.

``corpus`` is ``builtin``, ``analysed`` (the prompts analysed on this server with the model, as
they are now) or the 16-hex id of either (a share link's), of a page's own analyses or of a file
given to the command. ``atlas_corpus`` turns the keys of a page's own analyses into such an id,
starting the atlas's build."""

from __future__ import annotations

import numpy as np

from app.globalview.analysed import SKIPPED, corpus_of_keys
from app.globalview.atlas import CATEGORIES, TOP_KEYS, open_atlas
from app.globalview.background import Build, known_corpus, open_or_build
from app.globalview.corpus import BUILTIN
from app.globalview.embedding import METHODS
from app.limits import MY_ANALYSES_MAX_KEYS
from app.protocol import AtlasError, Field, encode_array, encode_strings, quantize_unit

FIELDS = {"model": Field(str, required=False), "corpus": Field(str, False, BUILTIN)}
CORPUS_FIELDS = {"model": Field(str, required=False), "keys": Field(list, max_items=MY_ANALYSES_MAX_KEYS, item=str)}
HEAD_FIELDS = {
    **FIELDS,
    "layer": Field(int, minimum=0),
    "head": Field(int, minimum=0),
    "method": Field(str, False, "pca", METHODS),
}


def on_atlas(call, fields: dict) -> dict:
    """The corpus (texts, tokens, each token's text, position and category) and every head's tile:
    ``points`` float16 [L, H, 2S, 2], the PCA positions of the S ``sample`` tokens' queries, then
    their keys. While the atlas is being computed: ``computing`` {state, done, total} instead."""
    name = call.service.model_name(fields["model"])
    found = open_or_build(call.service, name, known_corpus(call.service, name, fields["corpus"]) or fields["corpus"])
    if isinstance(found, Build):
        return computing(found)
    atlas = found
    meta, index, matrix = atlas.meta, atlas.entry("atlas:index"), atlas.entry("atlas:matrix")
    return {
        "model": meta["model"],
        "corpus": meta["corpus"],
        "corpus_name": meta["name"],  # the file it was read from, or "builtin"
        "layers": meta["layers"],
        "heads": meta["heads"],
        "kv_heads": meta["kv_heads"],
        "categories": list(CATEGORIES),
        "top_keys": TOP_KEYS,
        "texts": encode_strings(meta["texts"]),
        "tokens": encode_strings(meta["tokens"]),
        "starts": encode_array(index["starts"], "int32"),  # [texts + 1] first token of each text
        "sentence": encode_array(index["sentence"], "int32"),  # [T]
        "position": encode_array(index["position"], "int32"),  # [T]
        "category": encode_array(index["category"], "uint8"),  # [T] codes of `categories`
        "spans": encode_array(index["spans"], "int32"),  # [T, 2] character offsets into its text
        "sample": encode_array(matrix["sample"], "int32"),  # [S]
        "points": encode_array(matrix["points"]),  # [L, H, 2S, 2] float16
    }


def naming(model: str, corpus_id: str, corpus_name: str) -> dict:
    return {"model": model, "corpus": corpus_id, "corpus_name": corpus_name}


def computing(build: Build) -> dict:
    """The answer while the server computes an atlas: how far its build has come."""
    return {**naming(build.model, build.corpus_id, build.corpus_name), "computing": build.payload()}


def on_atlas_corpus(call, fields: dict) -> dict:
    """The corpus of the analyses a page ran itself (``keys``, at most MY_ANALYSES_MAX_KEYS): its id,
    ``texts`` (how many of the analyses it holds) and ``skipped`` {reason: count} (SKIPPED: not
    in the cache, another model's, too long), with its atlas's build started when it is not
    there yet (``computing``, as ``atlas`` answers it). The page then asks ``atlas`` by the id,
    which anyone with a link to it may open too."""
    name = call.service.model_name(fields["model"])
    chosen = corpus_of_keys(call.service, name, fields["keys"])
    found = open_or_build(call.service, name, chosen.corpus)
    corpus = chosen.corpus
    answer = computing(found) if isinstance(found, Build) else naming(name, corpus.id, corpus.name)
    skipped = {why: chosen.skipped.get(why, 0) for why in SKIPPED}
    return {**answer, "texts": len(corpus.texts), "skipped": skipped}


def on_atlas_head(call, fields: dict) -> dict:
    """One head: ``points`` float16 [2T, 2] (every query, then every key), ``top`` uint16
    [T, TOP_KEYS] (positions, in its own text, of the keys each query attends to most; 65535 =
    none) and ``weights`` [T, TOP_KEYS] (their attention, uint8 with a scale). t-SNE and UMAP
    are computed on the first request for a head (seconds to minutes), then served from the memo."""
    name = call.service.model_name(fields["model"])
    corpus = known_corpus(call.service, name, fields["corpus"])
    atlas = open_atlas(call.service, name, corpus.id if corpus else fields["corpus"])
    meta, layer, head = atlas.meta, fields["layer"], fields["head"]
    if layer >= meta["layers"] or head >= meta["heads"]:
        raise AtlasError("bad_request", f"the model has {meta['layers']} layers of {meta['heads']} heads")
    vectors = atlas.entry(f"atlas:layer:{layer}")
    return {
        "model": meta["model"],
        "corpus": meta["corpus"],
        "layer": layer,
        "head": head,
        "method": fields["method"],
        "points": encode_array(atlas.points(layer, head, fields["method"])),
        "top": encode_array(vectors["top"][head], "uint16"),
        "weights": quantize_unit(np.asarray(vectors["weights"][head], np.float32)),
    }
