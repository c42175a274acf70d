"""The one place requests meet models and the cache: validate -> cache lookup -> capture.

Routes, socket handlers and the command line all call :class:`AtlasService`; none of them
touches a model or the cache directly. torch is imported on first model use, so listing
models, validating input and serving cached results never wait for it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app.cache import CaptureCache, DiskStore, cache_key, is_key
from app.protocol import AtlasError
from app.record import Capture
from models.registry import UnknownModelError, load_registry

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
CAPTURE_OPTIONS = {"precision": "float16"}  # part of every cache key
LOAD_SHARE = 0.6  # share of the progress bar given to loading a model, the rest to the forward pass


@dataclass
class Analysis:
    key: str
    capture: Capture
    cached: bool
    seconds: float


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
        self.cache = CaptureCache(DiskStore(cache_dir / "results", config["CACHE_DISK_BYTES"]),
                                  config["CACHE_MEMORY_BYTES"])
        self.converted_dir = cache_dir / "converted"
        self._loader = None
        self._loader_lock = threading.Lock()

    @property
    def loader(self):
        """The model loader, created (importing torch) on first use."""
        with self._loader_lock:
            if self._loader is None:
                from models.loading import ModelLoader

                self._loader = ModelLoader(self.registry, self.converted_dir)
            return self._loader

    def preload(self, names: list[str]) -> None:
        """Load models in the background at start-up, so the first user does not wait."""
        for name in names:
            self.registry.get(name)
            threading.Thread(target=self.loader.get, args=(name,), name=f"preload-{name}", daemon=True).start()

    def models(self) -> list[dict]:
        loaded = self._loader.is_loaded if self._loader else (lambda name: False)
        return [{"name": spec.name, "title": spec.title or spec.name, "max_tokens": spec.max_tokens,
                 "loaded": loaded(spec.name)} for spec in self.registry.specs.values()]

    def model_name(self, model: str | None) -> str:
        name = model or self.registry.default
        try:
            self.registry.get(name)
        except UnknownModelError as error:
            raise AtlasError("unknown_model", str(error), 404) from None
        return name

    def key_for(self, model: str, text: str) -> str:
        return cache_key(model, self.registry.fingerprint(model), text, CAPTURE_OPTIONS)

    def analyze(self, model: str | None, text: object, progress: Progress | None = None) -> Analysis:
        """Validated, cached capture of ``text`` on ``model``; raises AtlasError for the user."""
        started = time.perf_counter()
        text = check_text(text, self.config["MAX_CHARS"])
        name = self.model_name(model)
        key = self.key_for(name, text)
        capture, cached = self.cache.get_or_compute(key, lambda: self._capture(name, text, progress))
        return Analysis(key, capture, cached, time.perf_counter() - started)

    def lookup(self, key: object) -> Capture:
        """A cached capture by key, for detail requests that must never run the model again."""
        if not is_key(key):
            raise AtlasError("bad_request", "'key' must be the 64-character key of an analysis")
        capture = self.cache.get(key)
        if capture is None:
            raise AtlasError("not_found", "this analysis is no longer cached; run the prompt again", 404)
        return capture

    def _capture(self, name: str, text: str, progress: Progress | None) -> Capture:
        from models.capture import run_capture

        return self.model_work(name, lambda handle: run_capture(handle, text, max_tokens=self.config["MAX_TOKENS"]),
                               progress)

    def model_work(self, name: str, work: Callable, progress: Progress | None = None):
        """Run ``work(handle)`` on a loaded model; every model failure becomes an AtlasError."""
        from models.capture import TooManyTokensError, UnsupportedModelError
        from models.loading import ModelLoadError

        progress = progress or (lambda stage, fraction: None)
        try:
            handle = self.loader.get(name, lambda stage, fraction: progress(stage, LOAD_SHARE * fraction))
            progress("running the model", LOAD_SHARE)
            return work(handle)
        except TooManyTokensError as error:
            raise AtlasError("too_long", str(error)) from None
        except UnsupportedModelError as error:
            raise AtlasError("unsupported_model", str(error)) from None
        except ModelLoadError as error:
            raise AtlasError("model_load_failed", str(error), 503) from None
        except MemoryError:
            raise AtlasError("out_of_memory", "the server ran out of memory on this prompt; try a shorter one",
                             503) from None
        except ValueError as error:
            raise AtlasError("bad_request", str(error)) from None
