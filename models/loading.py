"""Load registered models once, lazily, on the best device, with attention we can capture.

Within the ``models`` package, the modules that run models import torch and transformers: this
one, :mod:`models.recorder`, :mod:`models.capture`, :mod:`models.seq2seq` and
:mod:`models.language`. :mod:`models.registry`, :mod:`models.record` and :mod:`models.errors`
import neither, and they are all the web app imports at start-up, so it lists models, checks
requests and serves cached results without waiting for torch (tests/unit/test_imports.py checks).

Importing this module changes no environment: whether the hub may be reached
(``HF_HUB_OFFLINE``) is the choice of whoever starts the process (the app's entry points, the
tests), not of a notebook that imports the app.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from models import seq2seq
from models.blocks import prepare_blocked_pass
from models.errors import ModelLoadError
from models.recorder import ATTENTION_IMPLEMENTATION, register_capture_attention
from models.registry import ModelSpec, Registry

log = logging.getLogger(__name__)
DEVICE_VARIABLE = "ATLAS_DEVICE"  # "cpu": models stay on the CPU even where torch sees a GPU (pick_device)

Progress = Callable[[str, float], None]  # (stage message, fraction 0..1)


@dataclass
class ModelHandle:
    """A loaded model and what capture needs to know about it."""

    name: str
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    fingerprint: str
    load_seconds: float
    lock: threading.Lock  # one forward pass at a time per model: they share the device

    @property
    def config(self):
        return self.model.config

    @property
    def is_causal(self) -> bool:
        return type(self.model).__name__.endswith(CAUSAL_HEADS)

    @property
    def max_tokens(self) -> int:
        limit = getattr(self.config, "max_position_embeddings", None) or self.spec.max_tokens
        return min(self.spec.max_tokens, int(limit))

    @cached_property
    def module_maps(self) -> tuple[dict[int, str], dict[int, torch.nn.Module]]:
        """(module id -> its qualified name, module id -> its parent) over the whole model, read
        once: a loaded model's modules never change, and reading them took 1 ms of every capture
        (more after an idle second)."""
        names = {id(module): name for name, module in self.model.named_modules()}
        parents = {id(child): module for module in self.model.modules() for child in module.children()}
        return names, parents

    def describe(self) -> dict:
        """Architecture facts the frontend shows and the cache key includes."""
        config = self.config
        heads = int(config.num_attention_heads)
        encoder_decoder = seq2seq.is_encoder_decoder(config)
        return {
            "name": self.name,
            "title": self.spec.title or self.name,
            "architecture": config.model_type,
            "layers": seq2seq.attention_layers(config) if encoder_decoder else int(config.num_hidden_layers),
            "heads": heads,
            "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
            "causal": self.is_causal,
            "encoder_decoder": encoder_decoder,
            "max_tokens": self.max_tokens,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
        }


def pick_device() -> torch.device:
    """CUDA when present, else the CPU (each in its precision: :func:`model_dtype`).
    ``ATLAS_DEVICE=cpu`` keeps models on the CPU on a machine with a GPU (a GPU other work needs;
    the test suite, whose tolerances are float32's: tests/unit/models/test_cuda.py takes the GPU)."""
    if torch.cuda.is_available() and os.environ.get(DEVICE_VARIABLE, "auto").lower() != "cpu":
        return torch.device("cuda")
    return torch.device("cpu")


def model_dtype(config, device: torch.device) -> torch.dtype:
    """float32 on the CPU (half precision is slow and lossy there). On a GPU half precision:
    bfloat16 for a model whose config says it was trained in it, where the GPU has bfloat16
    (Gemma's activations pass float16's largest number, 65504), else float16. A bfloat16 record
    keeps q and k in float32 (numpy has no bfloat16)."""
    if device.type != "cuda":
        return torch.float32
    if getattr(config, "dtype", None) in (torch.bfloat16, "bfloat16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")  # architecture name endings of decoder-only LMs


def model_class(config, from_gguf: bool = False) -> type:
    """Causal LMs load with their head (the logit lens and generation need it), encoder-decoder
    models with theirs (the decoder's default input is the model's own output); others bare.

    GGUF files are llama.cpp checkpoints, always decoder-only LMs, and their converted config
    names no architecture.
    """
    architectures = getattr(config, "architectures", None) or []
    if from_gguf or any(arch.endswith(CAUSAL_HEADS) for arch in architectures):
        return AutoModelForCausalLM
    if seq2seq.is_encoder_decoder(config):
        return AutoModelForSeq2SeqLM
    return AutoModel


class ModelLoader:
    """Loads each registered model at most once per process, on first use.

    A GGUF model is dequantized on its first load (~15 s) and saved as safetensors under
    ``converted_dir``, so later loads and restarts take about a second.
    """

    def __init__(self, registry: Registry, converted_dir: str | Path | None = None):
        self.registry = registry
        self.converted_dir = Path(converted_dir) if converted_dir else None
        self._handles: dict[str, ModelHandle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        register_capture_attention()

    def is_loaded(self, name: str) -> bool:
        return name in self._handles

    def get(self, name: str, progress: Progress | None = None) -> ModelHandle:
        """Return the loaded model, loading it first if needed (one loader per name at a time)."""
        if name in self._handles:
            return self._handles[name]
        spec = self.registry.get(name)
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._handles:
                self._handles[name] = self._load(spec, progress or (lambda stage, fraction: None))
        return self._handles[name]

    def _load(self, spec: ModelSpec, progress: Progress) -> ModelHandle:
        started = time.perf_counter()
        device = pick_device()
        fingerprint = self.registry.fingerprint(spec.name)
        progress(f"loading {spec.name}", 0.0)
        try:
            source, gguf_file = self._resolved_source(spec, fingerprint)
            extra = {"gguf_file": gguf_file} if gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            progress(f"loading {spec.name} weights", 0.3)
            config = AutoConfig.from_pretrained(source, **extra)
            model = model_class(config, bool(gguf_file)).from_pretrained(
                source, attn_implementation=ATTENTION_IMPLEMENTATION, dtype=model_dtype(config, device), **extra
            )
        except (OSError, ValueError, ImportError) as error:
            raise ModelLoadError(f"could not load model '{spec.name}' from {spec.source()}: {error}") from error
        if gguf_file and self.converted_dir:
            self._save_converted(spec, fingerprint, model, tokenizer)
        model.to(device).eval()
        prepare_blocked_pass()  # compiled with the model, not in its first user's request
        seconds = time.perf_counter() - started
        log.info("loaded %s on %s in %.1f s", spec.name, device, seconds)
        progress(f"loaded {spec.name}", 1.0)
        return ModelHandle(spec.name, spec, model, tokenizer, device, fingerprint, seconds, threading.Lock())

    def _converted_path(self, spec: ModelSpec, fingerprint: str) -> Path | None:
        if not self.converted_dir:
            return None
        return self.converted_dir / f"{spec.name}-{fingerprint}"

    def _resolved_source(self, spec: ModelSpec, fingerprint: str) -> tuple[str, str | None]:
        """Prefer an earlier safetensors conversion of a GGUF file over dequantizing again."""
        converted = self._converted_path(spec, fingerprint)
        if spec.gguf_file and converted and (converted / "config.json").exists():
            return str(converted), None
        return spec.source(), spec.gguf_file

    def _save_converted(self, spec: ModelSpec, fingerprint: str, model, tokenizer) -> None:
        """Save the dequantized weights; transformers refuses while the GGUF quantizer is attached."""
        target = self._converted_path(spec, fingerprint)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)
        except (OSError, ValueError, RuntimeError, AttributeError) as error:
            log.warning("could not cache the converted %s weights: %s", spec.name, error)
            shutil.rmtree(staging, ignore_errors=True)
