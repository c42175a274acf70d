"""The texts a global view is built from: the built-in corpus (``corpus.txt`` beside this file,
written for this project) or a user's file in the same format.

Format: UTF-8 text, one sentence or short passage per line; blank lines and lines starting with
``#`` are skipped. A corpus is named by the hash of its texts, so an edited file is a new corpus
(and a new cache entry), and the same texts under another file name are the same one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

BUILTIN = "builtin"  # the name the page and the API use for the built-in corpus
BUILTIN_FILE = Path(__file__).with_name("corpus.txt")
ID_CHARS = 16  # hex characters of a corpus id (64 bits of its texts' SHA-256)
MAX_TEXT_CHARS = 2000  # characters of one line: a corpus is sentences and short passages


@dataclass(frozen=True)
class Corpus:
    name: str  # the file's stem, BUILTIN, or ANALYSED (app.globalview.analysed)
    texts: tuple[str, ...]
    keys: tuple[str, ...] = ()  # the cached analyses of the texts, when they have them (not part of the id)

    @property
    def id(self) -> str:
        digest = hashlib.sha256("\x00".join(self.texts).encode()).hexdigest()
        return digest[:ID_CHARS]


def read_corpus(path: str | Path, name: str | None = None) -> Corpus:
    """The texts of a corpus file. Raises OSError when it cannot be read, ValueError (naming the
    line) for an empty corpus or a line over MAX_TEXT_CHARS."""
    path = Path(path)
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"{path}:{number}: a line has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        texts.append(text)
    if not texts:
        raise ValueError(f"{path} has no texts: write one sentence or short passage per line")
    return Corpus(name or path.stem, tuple(texts))


def builtin_corpus() -> Corpus:
    return read_corpus(BUILTIN_FILE, BUILTIN)
