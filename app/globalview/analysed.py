"""The prompts analysed on this server, per model: the global view's second corpus ("analysed
here"), so a user sees every head over their own prompts, read back from the results cache.

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
from pathlib import Path

from app.globalview.corpus import MAX_TEXT_CHARS, Corpus

log = logging.getLogger(__name__)

ANALYSED = "analysed"  # the name the page, the API and the command line use for this corpus


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
