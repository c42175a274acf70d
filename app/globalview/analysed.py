"""Corpora of analyses read back from the results cache, so a user sees every head over their own
prompts: "My analyses" (:func:`corpus_of_keys`, the analyses a page ran itself, which it names by
their keys) and "Analysed here" (:class:`AnalysedIndex`, every prompt analysed on this server).

The first is private to the page that knows the keys (and to whoever it shares the corpus's link
with); the second shows every user's prompts to every user, so it is off unless the operator turns
it on (config ``ANALYSED_TEXTS``, docs in README "The global view").

The results cache knows captures only by their content address; this index keeps, beside it, the
(key, text) of each analysis, the most recent ``max_texts`` distinct texts per model (config
``ANALYSED_TEXTS``; every user of the server sees them, so 0, for a public server, keeps none). One JSON-lines
file per model (appended to, rewritten when it holds twice the bound), so every process on this
disk and a restarted server see the same list. The corpus is the set of texts (sorted), so
analysing a prompt again does not make a new corpus. Texts longer than a corpus line
(:data:`app.globalview.corpus.MAX_TEXT_CHARS`) are left out: the atlas is of sentences and short
passages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.cache import is_key
from app.globalview.corpus import MAX_TEXT_CHARS, Corpus
from app.limits import MY_ANALYSES_MAX_TOKENS
from app.protocol import AtlasError

log = logging.getLogger(__name__)

ANALYSED = "analysed"  # the name the page, the API and the command line use for this corpus
MINE = "mine"  # the name of a corpus of the analyses a page names by their keys
SKIPPED = ("not_cached", "other_model", "too_long")  # why a named analysis is left out, as counted


@dataclass(frozen=True)
class Chosen:
    """The corpus of the analyses a page named, and how many it named were left out, by reason."""

    corpus: Corpus
    skipped: dict[str, int] = field(default_factory=dict)  # reason (SKIPPED) -> count


def corpus_of_keys(service, model: str, keys: list[str]) -> Chosen:
    """The analyses named by ``keys`` that are plain analyses of ``model`` (its current weights,
    no decoder text, no heads switched off) still in the cache, as a corpus of their texts
    (sorted, so the set of analyses names it, whatever the order). Left out and counted: keys not
    cached (any more), analyses of another model or run, and texts over MAX_TEXT_CHARS or past
    MY_ANALYSES_MAX_TOKENS in all (the corpus is sentences and short passages, and the server builds it).

    ``keys`` are at most MY_ANALYSES_MAX_KEYS (the request's field checks it). Raises AtlasError
    ``bad_request`` for one that is not an analysis key, ``not_computed`` when none is left."""
    bad = next((i for i, key in enumerate(keys) if not is_key(key)), None)
    if bad is not None:
        raise AtlasError("bad_request", f"'keys' item {bad} is not the 64-character key of an analysis")
    skipped: Counter[str] = Counter()
    found: dict[str, tuple[str, int]] = {}  # text -> (key, tokens)
    for key in sorted(set(keys)):
        capture = service.cache.get(key)
        if capture is None:
            skipped["not_cached"] += 1
        elif capture.model != model or service.key_for(model, capture.text) != key:
            skipped["other_model"] += 1
        elif len(capture.text) > MAX_TEXT_CHARS:
            skipped["too_long"] += 1
        else:
            found[capture.text] = (key, capture.n_tokens)
    texts, tokens = [], 0
    for text in sorted(found):
        if tokens + found[text][1] > MY_ANALYSES_MAX_TOKENS:
            skipped["too_long"] += 1
            continue
        tokens += found[text][1]
        texts.append(text)
    if not texts:
        message = f"none of these analyses of {model} is in the server's cache now; analyse some prompts again"
        raise AtlasError("not_computed", message, 404)  # not `not_found`: the page would run its prompt again
    return Chosen(Corpus(MINE, tuple(texts), tuple(found[text][0] for text in texts)), dict(skipped))


class AnalysedIndex:
    """Thread-safe; a file that cannot be written is logged and never fails an analysis."""

    def __init__(self, folder: str | Path, max_texts: int):
        self.folder = Path(folder)
        self.max_texts = max_texts
        self._lines: dict[str, int] = {}  # model -> lines in its file (counted on first add)
        self._lock = threading.Lock()

    def _path(self, model: str) -> Path:
        return self.folder / f"{hashlib.sha256(model.encode()).hexdigest()[:24]}.jsonl"

    def add(self, model: str, key: str, text: str) -> None:
        """Note one analysis of ``text`` on ``model``, stored under ``key`` (nothing when the
        index is off: ``max_texts`` 0)."""
        if not self.max_texts or len(text) > MAX_TEXT_CHARS:
            return
        with self._lock:
            try:
                path = self._path(model)
                if model not in self._lines:
                    self._lines[model] = len(self._read(path))
                self.folder.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps({"key": key, "text": text}) + "\n")
                self._lines[model] += 1
                if self._lines[model] > 2 * self.max_texts:
                    self._compact(path, model)
            except OSError as error:
                log.warning("could not note an analysis of %s for the global view: %s", model, error)

    def entries(self, model: str) -> dict[str, str]:
        """text -> cache key of the most recent ``max_texts`` distinct texts analysed on ``model``."""
        with self._lock:
            return self._latest(self._read(self._path(model)))

    def corpus(self, model: str) -> Corpus:
        """The texts as a corpus (sorted: the set names it), with their analyses' keys."""
        entries = self.entries(model)
        texts = tuple(sorted(entries))
        return Corpus(ANALYSED, texts, tuple(entries[text] for text in texts))

    def _latest(self, lines: list[dict]) -> dict[str, str]:
        latest: dict[str, str] = {}
        for line in reversed(lines):
            if line["text"] not in latest:
                latest[line["text"]] = line["key"]
                if len(latest) == self.max_texts:
                    break
        return latest

    def _compact(self, path: Path, model: str) -> None:
        kept = [{"key": key, "text": text} for text, key in reversed(self._latest(self._read(path)).items())]
        temp = path.with_suffix(".tmp")
        temp.write_text("".join(json.dumps(line) + "\n" for line in kept), encoding="utf-8")
        temp.replace(path)
        self._lines[model] = len(kept)

    @staticmethod
    def _read(path: Path) -> list[dict]:
        """The file's lines, oldest first; a line cut short by a crash is skipped."""
        try:
            raw = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        lines = []
        for text in raw:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and isinstance(line.get("key"), str) and isinstance(line.get("text"), str):
                lines.append(line)
        return lines
