"""Atlases computed by the server in the background, when the page asks for one that is not
computed yet (or at start-up: ``PRECOMPUTE_ATLAS``), so nobody has to run ``python -m app atlas``.

Bounded: one build at a time, in one thread, and at most MAX_WAITING atlases waiting or running.
Each text of a build is its own piece of model work (:func:`app.globalview.atlas.capture_texts`),
so the device queue serves the analyses users ask for between texts: a build never starves
them. Only corpora whose texts the server knows can be built (the built-in one, the prompts
analysed here); a corpus read from a file is built by the command. A build that failed
answers its error once, to the next request, which may start it again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from app.globalview import atlas
from app.globalview.analysed import ANALYSED
from app.globalview.corpus import BUILTIN, Corpus, builtin_corpus
from app.protocol import AtlasError

log = logging.getLogger(__name__)

MAX_WAITING = 8  # atlases waiting or being built at once, all models together
MAX_FAILED = 32  # failures kept until a request hears them


@dataclass
class Build:
    """How far one background build has come: ``state`` is "waiting" (behind another build) or
    "running"; ``done`` of ``total`` texts through the model."""

    key: str
    model: str
    corpus: Corpus
    state: str = "waiting"
    done: int = 0
    total: int = 0

    def payload(self) -> dict:
        return {"state": self.state, "done": self.done, "total": self.total or len(self.corpus.texts)}


class Builds:
    """The queue of background builds of one service (thread-safe)."""

    def __init__(self):
        self._builds: dict[str, Build] = {}  # atlas key -> its build, in the order asked
        self._failed: dict[str, AtlasError] = {}
        self._lock = threading.Lock()
        self._running = False

    def ask(self, service, model: str, corpus: Corpus) -> Build:
        """The build of ``corpus`` on ``model`` (started, or found already under way). Raises the
        AtlasError of its last failure once, and ``busy`` when MAX_WAITING builds are queued."""
        key = atlas.atlas_key(service, model, corpus.id)
        with self._lock:
            if key in self._failed:
                raise self._failed.pop(key)
            if key in self._builds:
                return self._builds[key]
            if len(self._builds) >= MAX_WAITING:
                raise AtlasError("busy", "the server is computing other global views; try again in a few minutes", 503)
            build = self._builds[key] = Build(key, model, corpus)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, args=(service,), name="atlas-builds", daemon=True).start()
            return build

    def _run(self, service) -> None:
        while True:
            with self._lock:
                build = next(iter(self._builds.values()), None)
                if build is None:
                    self._running = False
                    return
                build.state = "running"
            self._build(service, build)
            with self._lock:
                del self._builds[build.key]

    def _build(self, service, build: Build) -> None:
        def progress(done: int, total: int) -> None:
            build.done, build.total = done, total

        what = f"the atlas of {build.model} on {build.corpus.name}"
        try:
            done = atlas.build(service, build.model, build.corpus, progress)
            log.info("%s: %s in %.1f s", what, "cached" if done.cached else "computed", done.seconds)
        except AtlasError as error:
            log.error("could not compute %s: %s", what, error.message)
            self._fail(build.key, error)
        except Exception:  # never let the one build thread die with builds queued behind it
            log.exception("%s failed", what)
            self._fail(build.key, AtlasError("internal", f"computing {what} failed; the error has been logged", 500))

    def _fail(self, key: str, error: AtlasError) -> None:
        with self._lock:
            while len(self._failed) >= MAX_FAILED:
                del self._failed[next(iter(self._failed))]
            self._failed[key] = error


def known_corpus(service, model: str, name: str) -> Corpus | None:
    """The corpus a request names when the server knows its texts: the built-in one, or the
    prompts analysed here on ``model``; None for a corpus id (a file given to the command)."""
    if name == BUILTIN:
        return builtin_corpus()
    if name == ANALYSED:
        if not service.analysed.max_texts:
            message = "this server does not list the prompts analysed on it (ATLAS_ANALYSED_TEXTS=0)"
            raise AtlasError("forbidden", message, 403)
        corpus = service.analysed.corpus(model)
        if not corpus.texts:
            message = f"no prompt has been analysed with {model} on this server yet; analyse some first"
            raise AtlasError("not_computed", message, 404)
        return corpus
    return None


def open_or_build(service, model: str | None, corpus_name: str) -> atlas.Atlas | Build:
    """The complete atlas, or the background build that is computing it (started now if needed).
    Raises AtlasError ``not_computed`` for a corpus the server cannot build (a file's id, or any
    corpus on a web process whose models live on workers), and what :meth:`Builds.ask` raises."""
    name = service.model_name(model)
    corpus = known_corpus(service, name, corpus_name)
    try:
        return atlas.open_atlas(service, name, corpus.id if corpus else corpus_name)
    except AtlasError as error:
        if error.code != "not_computed" or corpus is None or service.config["MODEL_WORKERS"]:
            raise
    return service.atlas_builds.ask(service, name, corpus)


def precompute(service, models: list[str]) -> None:
    """``PRECOMPUTE_ATLAS``: queue the built-in corpus's atlas of each model (a page opened
    meanwhile shows the build's progress instead of starting another)."""
    for model in models:
        try:
            service.atlas_builds.ask(service, service.model_name(model), builtin_corpus())
        except AtlasError as error:
            log.error("could not queue the atlas of %s: %s", model, error.message)
