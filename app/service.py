"""The one place requests meet models and the cache: validate -> cache lookup -> capture.

Routes, socket handlers and the command line all call :class:`AtlasService`; none of them
touches a model or the cache directly. torch is imported on first model use, so listing
models, validating input and serving cached results never wait for it.

Every piece of model work (loading, forward passes, generation) goes through
:meth:`AtlasService.model_work`, which queues it on its device's :class:`app.limits.JobQueue`
and turns every model failure into an :class:`AtlasError` for the one client that asked.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app import limits
from app.cache import CaptureCache, DiskStore, cache_key, is_key
from app.firstview import FirstViews
from app.globalview.analysed import AnalysedIndex
from app.globalview.background import Builds, SharedBuilds
from app.links import LinkStore, SharedLinks, link_bytes
from app.memo import Memo
from app.protocol import AtlasError
from models.ablation import Ablation
from models.errors import ModelLoadError, TooManyTokensError, UnknownModelError, UnsupportedModelError
from models.record import Capture
from models.registry import load_registry

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
LayerDone = Callable[[int, int, object], None]  # (layer index, layers in all, its [H, t, t] thumbnails)
CAPTURE_OPTIONS = {"precision": "float16"}  # part of every cache key
FIRST_VIEWS_MEMORY_BYTES = 32 * 2**20  # shaped first views: ~0.2-0.4 MB an analysis, ~100 of the longest
LOAD_SHARE = 0.6  # share of the progress bar given to loading a model, the rest to the forward pass


class ModelElsewhere(Exception):
    """Model work asked for on a web process whose models live on workers (MODEL_WORKERS): the
    dispatcher then sends the whole call to a worker (app.tasks)."""


@dataclass
class Analysis:
    key: str
    capture: Capture
    cached: bool
    seconds: float


def most_tokens(text: str) -> int:
    """At least as many tokens as a tokenizer makes of ``text`` (valid Unicode): a token covers one
    UTF-8 byte or more (byte fallback), or is a word-start marker or a special token."""
    return 2 * len(text.encode("utf-8")) + 8


def check_text(text: object, max_chars: int) -> str:
    """A prompt we can tokenize: a non-blank string of valid Unicode with no NUL characters."""
    if not isinstance(text, str):
        raise AtlasError("bad_request", "the prompt must be text")
    if not text.strip():
        raise AtlasError("empty_prompt", "the prompt is empty; type some text first")
    if len(text) > max_chars:
        raise AtlasError("too_long", f"the prompt has {len(text):,} characters; the limit is {max_chars:,}")
    if "\x00" in text:
        raise AtlasError("bad_request", "the prompt contains NUL characters (binary data?)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AtlasError("bad_request", "the prompt is not valid Unicode text") from None
    return text


class AtlasService:
    def __init__(self, config: dict):
        self.config = config
        self.registry = load_registry(config["MODEL_FILES"], config["EXTRA_MODELS"], config["ALLOWED_MODELS"])
        if not self.registry.specs:
            raise ValueError("no models left after ALLOWED_MODELS; check ATLAS_ALLOWED_MODELS")
        cache_dir = Path(config["CACHE_DIR"])
        self.cache = CaptureCache(
            result_store(config), config["CACHE_MEMORY_BYTES"], upload_store(config), writer_nice=config["MODEL_NICE"]
        )
        self.memo = Memo(self.cache, config["MEMO_MEMORY_BYTES"])  # results derived from stored analyses
        self.first_views = FirstViews(FIRST_VIEWS_MEMORY_BYTES)  # every analysis's tokens and overview, shaped once
        self.analysed = AnalysedIndex(cache_dir / "analysed", config["ANALYSED_TEXTS"])  # the global view's corpus
        self.atlas_builds = Builds(shared_builds(config))  # global views computed in the background
        self._links: LinkStore | SharedLinks | None = None
        self.converted_dir = cache_dir / "converted"
        self._loader = None
        self._loader_lock = threading.Lock()
        self.flight = None  # app.tasks.SharedFlight on a model worker: one forward pass across workers
        self._queues: dict[str, limits.JobQueue] = {}  # device -> its queue of model work
        self._queues_lock = threading.Lock()
        self._model_threads: limits.ModelThreads | None = None  # created with the first model work
        self._counters: dict[str, tuple[object, threading.Lock]] = {}  # model -> (tokenizer copy, lock)

    @property
    def loader(self):
        """The model loader, created on first use. All model code (torch, transformers) is
        imported here, in one thread under one lock: two threads importing transformers at once
        (a preload and a first request) can see it half-initialised ("cannot import name ...").
        Model work imports what it needs only after this (inside :meth:`model_work`)."""
        with self._loader_lock:
            if self._loader is None:
                import models.capture  # noqa: F401  (imported for the reason above)
                import models.interventions  # noqa: F401
                import models.language  # noqa: F401
                from models.loading import ModelLoader

                self._loader = ModelLoader(self.registry, self.converted_dir)
            return self._loader

    @property
    def links(self) -> LinkStore | SharedLinks:
        """Short links, beside the results on this server's disk, and in Redis when REDIS_URL is
        set (every process resolves them); created on first use."""
        if self._links is None:
            disk = LinkStore(Path(self.config["CACHE_DIR"]) / "links", link_bytes(self.config["CACHE_DISK_BYTES"]))
            if self.config.get("REDIS_URL"):
                from app.redis_store import connect

                disk = SharedLinks(disk, connect(self.config["REDIS_URL"]))
            self._links = disk
        return self._links

    def store(self, key: str, capture: Capture) -> None:
        """Keep a capture made elsewhere (an upload) as an analysis under ``key``, on disk in the
        uploads' own budget before this returns; raises OSError when the disk refuses it."""
        self.cache.put_upload(key, capture)

    def preload(self, names: list[str]) -> None:
        """Load models in the background at start-up, so the first user does not wait."""
        for name in names:
            self.registry.get(name)
            threading.Thread(target=self._preload, args=(name,), name=f"preload-{name}", daemon=True).start()

    def _preload(self, name: str) -> None:
        try:
            self.model_work(name, lambda handle: None)
        except AtlasError as error:
            log.error("could not preload %s: %s", name, error.message)

    def models(self) -> list[dict]:
        loaded = self._loader.is_loaded if self._loader else (lambda name: False)
        return [
            {
                "name": spec.name,
                "title": spec.title or spec.name,
                "max_tokens": spec.max_tokens,
                "loaded": loaded(spec.name),
            }
            for spec in self.registry.specs.values()
        ]

    def model_name(self, model: str | None) -> str:
        name = model or self.registry.default
        try:
            self.registry.get(name)
        except UnknownModelError as error:
            raise AtlasError("unknown_model", str(error), 404) from None
        return name

    def key_for(self, model: str, text: str, target: str = "", ablation: Ablation | None = None) -> str:
        """The cache key; a decoder text (encoder-decoder models) and an ablation are options only
        when given, so every other analysis keeps its key."""
        options = {**CAPTURE_OPTIONS, **({"target": target} if target else {})}
        options.update(ablation.option() if ablation else {})
        return cache_key(model, self.registry.fingerprint(model), text, options)

    def token_limit(self, name: str) -> int:
        """Tokens a prompt may have on ``name`` (the model's own limit applies on top)."""
        return min(self.config["MAX_TOKENS"], self.config["MODEL_MAX_TOKENS"].get(name, self.config["MAX_TOKENS"]))

    def analyze(
        self,
        model: str | None,
        text: object,
        progress: Progress | None = None,
        target: object = "",
        on_layer: LayerDone | None = None,
        ablation: Ablation | None = None,
    ) -> Analysis:
        """Validated, cached capture of ``text`` on ``model``; raises AtlasError for the user.

        ``target`` is the text an encoder-decoder model's decoder reads (empty: its own output).
        ``on_layer(layer, layers, thumbnails)`` hears each layer as the model finishes it, when
        this request is the one that runs the model (not for a cached or shared result).

        Identical requests in flight share one forward pass; when the client of that pass
        disconnects before it starts, a waiting request takes it over. With an ``ablation`` the
        capture is of the run with those heads switched off (:mod:`models.interventions`).
        """
        started = time.perf_counter()
        text = check_text(text, self.config["MAX_CHARS"])
        target = check_text(target, self.config["MAX_CHARS"]) if target else ""
        name = self.model_name(model)
        key = self.key_for(name, text, target, ablation)
        while True:
            try:
                with self.flight.hold(key, self.cache) if self.flight else contextlib.nullcontext():
                    capture, cached = self.cache.get_or_compute(
                        key, lambda: self._capture(name, text, target, progress, on_layer, ablation)
                    )
                break
            except limits.JobCancelled:
                if limits.cancelled():
                    raise
        if not target and ablation is None:
            self.analysed.add(name, key, text)
        return Analysis(key, capture, cached, time.perf_counter() - started)

    def lookup(self, key: object) -> Capture:
        """A cached capture by key, for detail requests that must never run the model again."""
        if not is_key(key):
            raise AtlasError("bad_request", "'key' must be the 64-character key of an analysis")
        capture = self.cache.get(key)
        if capture is None:
            raise AtlasError("not_found", "this analysis is no longer cached; run the prompt again", 404)
        return capture

    def _capture(
        self,
        name: str,
        text: str,
        target: str,
        progress: Progress | None,
        on_layer: LayerDone | None,
        ablation: Ablation | None = None,
    ) -> Capture:
        limit = self.token_limit(name)
        self._count_tokens(name, text, limit)
        progress = progress or (lambda stage, fraction: None)

        def layer_done(layer: int, layers: int, thumbnails) -> None:
            progress(
                f"running the model: layer {layer + 1} of {layers}",
                LOAD_SHARE + (1 - LOAD_SHARE) * (layer + 1) / layers,
            )
            if on_layer:
                on_layer(layer, layers, thumbnails)

        def work(handle) -> Capture:
            from models.capture import run_capture
            from models.interventions import capture_ablated

            options = {"target": target, "max_tokens": limit, "on_layer": layer_done, "reserve": self.cache.make_room}
            return (
                capture_ablated(handle, text, ablation, **options) if ablation else run_capture(handle, text, **options)
            )

        return self.model_work(name, work, progress)

    def _count_tokens(self, name: str, text: str, limit: int) -> None:
        """Refuse a prompt over ``limit`` tokens before it takes a place in the queue.

        Possible once the model is loaded; before that the same check runs inside the queue,
        right after loading and before the forward pass. Uses a private tokenizer copy, so it
        never shares a (not thread-safe) fast tokenizer with a job that is running. A prompt too
        short to reach the limit is not counted here (:func:`most_tokens`): the capture counts it
        anyway, and on these VMs the first tokenization after an idle second costs 15-25 ms of CPU
        (0.5 ms warm), for each tokenizer copy, a twentieth of a 128-token analysis.
        """
        if not (self._loader and self._loader.is_loaded(name)):
            return
        from models.recorder import tokenize  # imported by the loader already (see loader)

        handle = self._loader.get(name)
        limit = min(limit, handle.max_tokens)
        if most_tokens(text) <= limit:
            return
        with self._guard(name):
            if name not in self._counters:
                self._counters[name] = (copy.deepcopy(handle.tokenizer), threading.Lock())
            tokenizer, lock = self._counters[name]
            with lock:
                tokenize(tokenizer, text, limit)

    def _queue(self) -> limits.JobQueue:
        """The work queue of the device models run on (one per device: they share its memory)."""
        self.loader  # noqa: B018  (the model code is imported under the loader's lock first)
        from models.loading import pick_device

        device = str(pick_device())
        with self._queues_lock:
            return self._queues.setdefault(device, limits.JobQueue(1)).configure(
                self.config["MAX_QUEUED_JOBS"], self.config["DEVICE_WORKERS"], self.config["MAX_QUEUE_WAIT_SECONDS"]
            )

    def model_work(self, name: str, work: Callable, progress: Progress | None = None):
        """Run ``work(handle)`` on a loaded model, in turn with all other model work on its device.

        ``work`` must not call model_work itself: it would wait for its own slot.
        Raises AtlasError: ``busy`` (queue full, waited too long, or the client left),
        ``model_load_failed``, ``too_long``, ``unsupported_model``, ``out_of_memory``,
        ``bad_request`` (the model refused the input) or ``internal`` (anything else, logged).
        On a web process with MODEL_WORKERS, raises :class:`ModelElsewhere` instead.
        """
        if self.config["MODEL_WORKERS"]:
            raise ModelElsewhere()
        progress = progress or (lambda stage, fraction: None)
        with self._guard(name), self._queue().slot(lambda stage: progress(stage, 0.0)):
            return self._threads().run(self._on_model, name, work, progress)

    def _on_model(self, name: str, work: Callable, progress: Progress):
        """The body of :meth:`model_work`, on a model thread."""
        handle = self.loader.get(name, lambda stage, fraction: progress(stage, LOAD_SHARE * fraction))
        if limits.cancelled():
            raise limits.JobCancelled()
        progress("running the model", LOAD_SHARE)
        return work(handle)

    def _threads(self) -> limits.ModelThreads:
        with self._queues_lock:
            if self._model_threads is None:
                self._model_threads = limits.ModelThreads(self.config["DEVICE_WORKERS"], self.config["MODEL_NICE"])
            return self._model_threads

    @contextlib.contextmanager
    def _guard(self, name: str):
        """Translate what models, tokenizers and devices raise into errors for the user."""
        try:
            yield
        except AtlasError:
            raise
        except TooManyTokensError as error:
            raise AtlasError("too_long", str(error)) from None
        except UnsupportedModelError as error:
            raise AtlasError("unsupported_model", str(error)) from None
        except ModelLoadError as error:
            raise AtlasError("model_load_failed", str(error), 503) from None
        except ValueError as error:
            raise AtlasError("bad_request", str(error)) from None
        except Exception as error:  # MemoryError and torch.cuda.OutOfMemoryError included
            if is_out_of_memory(error):
                release_device_memory()
                raise AtlasError(
                    "out_of_memory",
                    f"the server ran out of memory running {name} on this prompt; try a shorter one",
                    503,
                ) from None
            log.exception("model work on %s failed", name)
            raise AtlasError(
                "internal", f"{name} failed on this request ({type(error).__name__}); the error has been logged", 500
            ) from None
        except BaseException as error:
            if type(error).__name__ != "PanicException":  # the Rust tokenizers' crash, a BaseException
                raise
            log.exception("the tokenizer of %s crashed", name)
            raise AtlasError("bad_request", f"the {name} tokenizer could not read this prompt", 400) from None


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (a RuntimeError), or torch's CPU allocator failing."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    message = str(error).lower()
    return "out of memory" in message or "can't allocate memory" in message


def release_device_memory() -> None:
    """Give cached CUDA blocks back after an out-of-memory error, so the next job can run."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def result_store(config):
    """The shared Redis store when REDIS_URL is set, else the local disk store."""
    if config.get("REDIS_URL"):
        from app.redis_store import RedisStore

        store = RedisStore(config["REDIS_URL"], config["REDIS_CACHE_TTL_SECONDS"], config["REDIS_MAX_ENTRY_BYTES"])
        store.check()
        return store
    disk_bytes = config["CACHE_DISK_BYTES"]
    return DiskStore(Path(config["CACHE_DIR"]) / "results", disk_bytes - link_bytes(disk_bytes))


def shared_builds(config) -> SharedBuilds | None:
    """With REDIS_URL, the global view's background builds are shared by every process."""
    if not config.get("REDIS_URL"):
        return None
    from app.redis_store import connect

    return SharedBuilds(connect(config["REDIS_URL"]))


def upload_store(config) -> DiskStore | None:
    """Uploaded captures in a disk budget of their own, so they never evict analyses (None with
    Redis: uploads share its store, where every process finds them)."""
    if config.get("REDIS_URL"):
        return None
    return DiskStore(Path(config["CACHE_DIR"]) / "uploads", config["UPLOAD_DISK_BYTES"])
