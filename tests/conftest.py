"""Fixtures build things once per session and form a chain: models -> app -> client -> socket.

Unit tests use tiny random-weight models built in-process from configs (BERT-, GPT-2- and
Llama-style with grouped-query attention, BART- and T5-style encoder-decoders); the `real_model`
tests use the packaged pretrained models, loaded once.
"""

from __future__ import annotations

import os
import threading

import pytest

from app.wsgi import MODEL_ENVIRONMENT

# What the entry points set (app.wsgi.prepare_process), before anything imports huggingface_hub:
# the tests load only local weights, like the server.
for _name, _value in MODEL_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
# The fixtures' models (and the app's) run on the CPU in float32, where every tolerance of the
# suite holds, also on a machine with a GPU; test_cuda.py moves copies of them to the GPU.
os.environ.setdefault("ATLAS_DEVICE", "cpu")

from app import create_app  # noqa: E402
from app.extensions import socketio  # noqa: E402
from app.protocol import NAMESPACE  # noqa: E402
from models.loading import ModelHandle, ModelLoader  # noqa: E402
from models.registry import ModelSpec  # noqa: E402

TINY_CONFIGS = {
    "tiny-bert": (
        "BertConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
    ),
    "tiny-gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "tiny-llama": (
        "LlamaConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
    ),
    "tiny-bart": (
        "BartConfig",
        dict(
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
        ),
    ),
    "tiny-t5": ("T5Config", dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4)),
}
SEQ2SEQ = ("tiny-bart", "tiny-t5")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One cache folder for the session, so the packaged GGUF model is converted once."""
    return tmp_path_factory.mktemp("atlas-cache")


@pytest.fixture(scope="session")
def app(cache_root):
    """The session's app. Its analyze rate limit is off: every test's HTTP calls come from one
    address, and a session spends that budget many times over (tests of the limits set their own)."""
    return create_app({"TESTING": True, "CACHE_DIR": str(cache_root), "RATE_ANALYZE_PER_MINUTE": 0})


@pytest.fixture(scope="session")
def service(app):
    return app.extensions["atlas"]


@pytest.fixture(scope="session")
def loader(service) -> ModelLoader:
    """The app's own loader, so each packaged model loads once per session."""
    return service.loader


@pytest.fixture(scope="session")
def minilm(loader) -> ModelHandle:
    return loader.get("minilm")


@pytest.fixture(scope="session")
def smollm2(loader) -> ModelHandle:
    return loader.get("smollm2")


def build_tiny(name: str, tokenizer) -> ModelHandle:
    """A random-weight model of a real architecture, loaded through the capture attention."""
    import torch
    import transformers

    from models.recorder import ATTENTION_IMPLEMENTATION

    config_class, options = TINY_CONFIGS[name]
    if name in SEQ2SEQ:  # the BERT tokenizer's own ids, so decoded output reads as its tokens
        options = {
            **options,
            "decoder_start_token_id": tokenizer.cls_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=tokenizer.vocab_size, **options)
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    model_class = {
        "tiny-bert": transformers.AutoModel,
        "tiny-bart": transformers.AutoModelForSeq2SeqLM,
        "tiny-t5": transformers.AutoModelForSeq2SeqLM,
    }.get(name, transformers.AutoModelForCausalLM)
    model = model_class.from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION).eval()
    return handle_of(name, model, tokenizer)


def handle_of(name: str, model, tokenizer) -> ModelHandle:
    """A model built in a test, as the loader would hand it over (CPU, 128 tokens at most)."""
    import torch

    return ModelHandle(
        name, ModelSpec(name=name, max_tokens=128), model, tokenizer, torch.device("cpu"), name, 0.0, threading.Lock()
    )


def converted(handle: ModelHandle, dtype, device: str = "cpu") -> ModelHandle:
    """A copy of ``handle`` with its model in ``dtype`` on ``device`` (a GPU's half precision,
    bfloat16), the fixture's own model untouched."""
    import copy
    import dataclasses

    import torch

    model = copy.deepcopy(handle.model).to(device, dtype)
    return dataclasses.replace(handle, model=model, device=torch.device(device))


def causal_from_config(config_class: str, tokenizer, **options) -> ModelHandle:
    """A random-weight causal LM of ``config_class`` (e.g. "MistralConfig") with the capture
    attention, for tests of one architecture's quirk (sliding windows, soft-capping)."""
    import torch
    import transformers

    from models.recorder import ATTENTION_IMPLEMENTATION

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=tokenizer.vocab_size, **options)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION)
    return handle_of(config_class.removesuffix("Config").lower(), model.eval(), tokenizer)


@pytest.fixture(scope="session")
def tiny_models(minilm) -> dict[str, ModelHandle]:
    return {name: build_tiny(name, minilm.tokenizer) for name in TINY_CONFIGS}


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def socket_client(app):
    client = socketio.test_client(app, namespace=NAMESPACE)
    yield client
    if client.is_connected(NAMESPACE):
        client.disconnect(namespace=NAMESPACE)
