"""Atlases computed by the server in the background, when the page asks for one that is not
computed yet (or at start-up: ``PRECOMPUTE_ATLAS``), so nobody has to run ``python -m app atlas``.

Bounded: one build at a time, in one thread, and at most MAX_WAITING atlases waiting or running.
Each text of a build is its own piece of model work (:func:`app.globalview.atlas.capture_texts`),
so the device queue serves the analyses users ask for between texts: a build never starves
them. Only corpora whose texts the server knows can be built (the built-in one, a page's own analyses,
the prompts analysed here); a corpus read from a file is built by the command. A request that
names a corpus by its id (a share link) finds the build some other request started. A build that failed
answers its error once, to the next request, which may start it again.

With REDIS_URL (several web processes, one results store), a process claims each build in Redis
(:class:`SharedBuilds`) and renews the claim with its progress every second while it builds: any
other process asked for that atlas answers its progress instead of building it a second time, a
share link opened on another process shows it too, and a killed process's claim lapses.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, field

import redis

from app.globalview import atlas
from app.globalview.analysed import ANALYSED
from app.globalview.corpus import BUILTIN, Corpus, builtin_corpus
from app.protocol import AtlasError

log = logging.getLogger(__name__)

MAX_WAITING = 8  # atlases waiting or being built at once, all models together
MAX_FAILED = 32  # failures kept until a request hears them
BUILD_KEY = "atlas:build:"  # Redis key of a build under way on some process: prefix + atlas key
LEASE_SECONDS = 10  # a claim not renewed for this long has lost its process
RENEW_SECONDS = 1  # how often the building process renews its claims, with its progress
STOP_SECONDS = 30  # the longest an exiting process waits for its build to stop (one text through the model)


class Stopped(Exception):
    """Raised in a build's progress when the process exits."""


@dataclass
class Build:
    """How far one background build has come: ``state`` is "waiting" (behind another build) or
    "running"; ``done`` of ``total`` texts through the model. ``corpus`` (its texts) is there on
    the process that builds it, None for another process's build read from Redis."""

    key: str
    model: str
    corpus_id: str
    corpus_name: str
    total: int
    state: str = "waiting"
    done: int = 0
    corpus: Corpus | None = field(default=None, repr=False)

    @classmethod
    def of(cls, key: str, model: str, corpus: Corpus, state: str) -> Build:
        return cls(key, model, corpus.id, corpus.name, len(corpus.texts), state, corpus=corpus)

    def payload(self) -> dict:
        return {"state": self.state, "done": self.done, "total": self.total}

    def record(self) -> str:
        return json.dumps({name: value for name, value in asdict(self).items() if name not in ("key", "corpus")})


class SharedBuilds:
    """The builds under way on every process that shares one Redis: a record per atlas, claimed
    (SET NX) by the process that builds it and renewed by it. A Redis error is logged and the
    process goes on alone (at worst two processes build one atlas, as without Redis)."""

    def __init__(self, client):
        self.client = client

    def claim(self, build: Build) -> Build | None:
        """None when this process now holds ``build``; else the build another process holds."""
        try:
            if self.client.set(BUILD_KEY + build.key, build.record(), nx=True, ex=LEASE_SECONDS):
                return None
        except redis.RedisError as error:
            log.warning("could not claim %s in Redis: %s", build.key[:12], error)
            return None
        return self.get(build.key)

    def get(self, key: str) -> Build | None:
        try:
            raw = self.client.get(BUILD_KEY + key)
        except redis.RedisError as error:
            log.warning("could not read the builds in Redis: %s", error)
            return None
        return Build(key, **json.loads(raw)) if raw else None

    def renew(self, builds: list[Build]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for build in builds:
            pipe.set(BUILD_KEY + build.key, build.record(), ex=LEASE_SECONDS)
        pipe.execute()

    def release(self, key: str) -> None:
        try:
            self.client.delete(BUILD_KEY + key)
        except redis.RedisError as error:  # its claim lapses by itself
            log.warning("could not release %s in Redis: %s", key[:12], error)


class Builds:
    """The queue of background builds of one service (thread-safe), shared with the server's
    other processes through ``shared`` when there is one."""

    def __init__(self, shared: SharedBuilds | None = None):
        self._builds: dict[str, Build] = {}  # atlas key -> its build, in the order asked
        self._failed: dict[str, AtlasError] = {}
        self._lock = threading.Lock()
        self._running = False
        self._stopping = threading.Event()  # set at exit
        self._thread: threading.Thread | None = None  # the one that builds, while there are builds
        self.shared = shared
        atexit.register(self.stop)

    def find(self, key: str) -> Build | None:
        """The build under way of the atlas ``key`` (on this process or, shared, another one),
        or None; raises its last failure here once."""
        with self._lock:
            if key in self._failed:
                raise self._failed.pop(key)
            if key in self._builds:
                return self._builds[key]
        return self.shared.get(key) if self.shared else None

    def ask(self, service, model: str, corpus: Corpus) -> Build:
        """The build of ``corpus`` on ``model`` (started, or found already under way here or on
        another process). Raises the AtlasError of its last failure once, and ``busy`` when
        MAX_WAITING builds are queued."""
        key = atlas.atlas_key(service, model, corpus.id)
        found = self.find(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._builds:
                return self._builds[key]
            if len(self._builds) >= MAX_WAITING:
                raise AtlasError("busy", "the server is computing other global views; try again in a few minutes", 503)
            build = Build.of(key, model, corpus, "waiting" if self._builds else "running")
            elsewhere = self.shared.claim(build) if self.shared else None
            if elsewhere is not None:
                return elsewhere
            self._builds[key] = build
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, args=(service,), name="atlas-builds", daemon=True)
                self._thread.start()
            return build

    def stop(self) -> None:
        """End the build between two texts; builds queued behind it never start. At exit: a
        daemon thread still inside torch while the interpreter finalises aborts the process
        (SIGABRT, "terminate called")."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS)

    def _run(self, service) -> None:
        renewing = self._renewing() if self.shared else contextlib.nullcontext()
        with renewing:
            while True:
                with self._lock:
                    build = None if self._stopping.is_set() else next(iter(self._builds.values()), None)
                    if build is None:
                        self._running = False
                        return
                    build.state = "running"
                self._build(service, build)
                if self.shared:
                    service.cache.flush()  # in the shared store before another process stops waiting for it
                    self.shared.release(build.key)
                with self._lock:
                    del self._builds[build.key]

    def _renewing(self):
        from app.redis_store import renewing

        def renew() -> None:
            with self._lock:
                builds = list(self._builds.values())
            self.shared.renew(builds)

        return renewing(renew, RENEW_SECONDS)

    def _build(self, service, build: Build) -> None:
        def progress(done: int, total: int) -> None:
            build.done, build.total = done, total
            if self._stopping.is_set():
                raise Stopped()

        what = f"the atlas of {build.model} on {build.corpus_name}"
        try:
            done = atlas.build(service, build.model, build.corpus, progress)
            log.info("%s: %s in %.1f s", what, "cached" if done.cached else "computed", done.seconds)
        except Stopped:
            log.info("%s: stopped at %d of %d texts (the process is exiting)", what, build.done, build.total)
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


def open_or_build(service, model: str, corpus: Corpus | str) -> atlas.Atlas | Build:
    """The complete atlas of ``model`` (a registered name) on ``corpus``, or the background build
    that is computing it: for a Corpus (whose texts the server knows) started now if needed; for
    a corpus id (a share link's), the build some request started. Raises AtlasError
    ``not_computed`` for an id nobody is building (a file's corpus: the command builds it), or
    any corpus on a web process whose models live on workers, and what :meth:`Builds.ask` raises."""
    corpus_ref = corpus.id if isinstance(corpus, Corpus) else corpus
    try:
        return atlas.open_atlas(service, model, corpus_ref)
    except AtlasError as error:
        if error.code != "not_computed" or service.config["MODEL_WORKERS"]:
            raise
        if isinstance(corpus, Corpus):
            return service.atlas_builds.ask(service, model, corpus)
        build = service.atlas_builds.find(atlas.atlas_key(service, model, atlas.corpus_id(corpus)))
        if build is None:
            raise
        return build


def precompute(service, models: list[str]) -> None:
    """``PRECOMPUTE_ATLAS``: queue the built-in corpus's atlas of each model (a page opened
    meanwhile shows the build's progress instead of starting another)."""
    for model in models:
        try:
            service.atlas_builds.ask(service, service.model_name(model), builtin_corpus())
        except AtlasError as error:
            log.error("could not queue the atlas of %s: %s", model, error.message)
