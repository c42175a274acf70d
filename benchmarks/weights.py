"""The same weights the app serves, loaded the plain transformers way: for the bare forward
pass (``sdpa``, no attention output) and for BertViz (``eager`` with ``output_attentions``).

Like models/, this module imports torch and transformers; the benchmark's other modules don't.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from app.wsgi import prepare_models  # noqa: E402

# Only benchmark processes import this module (run.py and bertviz_html.py's worker); like the
# server's entry points (app.wsgi.prepare_process) they read local weights only, and torch runs
# as it does in the server, so the bare forward pass and the server's capture compare fairly.
prepare_models()  # as the server's entry points do, before torch loads

import torch  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from models.loading import CAUSAL_HEADS, ModelLoader  # noqa: E402
from models.registry import load_registry  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

SHORT_FORWARD_REPEATS = 3  # timed runs per prompt up to SHORT_PROMPT tokens (the minimum is kept)
SHORT_PROMPT = 512  # tokens; longer prompts are timed once (each takes seconds to a minute)


def weights_source(name: str, converted_dir: Path) -> str:
    """Folder (or hub id) of ``name``'s weights as transformers can load them.

    A GGUF model is dequantized once by the app's own loader into ``converted_dir`` (the app's
    ``<cache>/converted``) and loaded from there, so both loads read identical tensors.
    """
    registry = load_registry()
    spec = registry.get(name)
    if not spec.gguf_file:
        return spec.source()
    loader = ModelLoader(registry, converted_dir)
    converted = loader._converted_path(spec, registry.fingerprint(name))
    if not (converted / "config.json").exists():
        loader.get(name)  # converts and saves; the loaded copy is dropped right away
        loader._handles.clear()
        gc.collect()
    return str(converted)


def load(source: str, attention: str):
    """(model, tokenizer) in float32 on the CPU with ``attn_implementation=attention``."""
    config = AutoConfig.from_pretrained(source)
    causal = any(arch.endswith(CAUSAL_HEADS) for arch in (config.architectures or []))
    model_class = AutoModelForCausalLM if causal else AutoModel
    model = model_class.from_pretrained(source, attn_implementation=attention, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(source), causal


def load_tokenizer(source: str):
    return AutoTokenizer.from_pretrained(source)


def _runs(tokens: int) -> int:
    """Timed runs of a prompt of ``tokens`` (the minimum is kept)."""
    return SHORT_FORWARD_REPEATS if tokens <= SHORT_PROMPT else 1


class BareForward:
    """The physical floor: ``model(input_ids)`` with sdpa attention, no attention or hidden-state
    output, last logits only (what the app's capture asks for, minus recording)."""

    def __init__(self, source: str):
        self.model, self.tokenizer, causal = load(source, "sdpa")
        self.extra = {"logits_to_keep": 1} if causal else {}
        self.seconds("warm up")

    def seconds(self, text: str, idle: float = 0.0) -> float:
        """Minimum seconds over SHORT_FORWARD_REPEATS runs (one run for long prompts), each after
        ``idle`` seconds of sleep. An analysis starts on a machine that has been idle (the
        benchmark leaves it LOAD_WINDOW_SECONDS before Analyze), and on these VMs a pass after
        an idle gap is slower than one right after another: SmolLM2 at 128 tokens, 250 ms back
        to back, 268 ms after 0.1 s idle, 360 ms after 0.6 s, 382 ms after 1.5 s (medians of 6;
        docs/benchmarks.md). The floor an analysis is compared with starts the same way."""
        ids = torch.tensor([self.tokenizer(text)["input_ids"]])
        times = []
        with torch.inference_mode():
            for _ in range(_runs(ids.shape[1])):
                time.sleep(idle)
                started = time.perf_counter()
                self.model(input_ids=ids, use_cache=False, **self.extra)
                times.append(time.perf_counter() - started)
        return min(times)

    def repeats(self, text: str) -> int:
        """Timed runs :meth:`seconds` makes of ``text``."""
        return _runs(len(self.tokenizer(text)["input_ids"]))

    def close(self) -> None:
        del self.model
        gc.collect()
