"""Fixtures build things once per session and form a chain: models -> app -> client -> socket.

Unit tests use tiny random-weight models built in-process from configs (BERT-, GPT-2- and
Llama-style with grouped-query attention); the `real_model` tests use the packaged pretrained
models, loaded once.
"""
from __future__ import annotations

import threading

import pytest

from app import create_app
from app.extensions import socketio
from app.protocol import NAMESPACE
from models.loading import ModelHandle, ModelLoader
from models.registry import ModelSpec

TINY_CONFIGS = {
    "tiny-bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)),
    "tiny-gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "tiny-llama": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64,
                                       max_position_embeddings=128)),
}


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One cache folder for the session, so the packaged GGUF model is converted once."""
    return tmp_path_factory.mktemp("atlas-cache")


@pytest.fixture(scope="session")
def app(cache_root):
    return create_app({"TESTING": True, "CACHE_DIR": str(cache_root)})


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

    from models.capture import ATTENTION_IMPLEMENTATION

    config_class, options = TINY_CONFIGS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=tokenizer.vocab_size, **options)
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    model_class = transformers.AutoModel if name == "tiny-bert" else transformers.AutoModelForCausalLM
    model = model_class.from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION).eval()
    spec = ModelSpec(name=name, max_tokens=128)
    return ModelHandle(name, spec, model, tokenizer, torch.device("cpu"), name, 0.0, threading.Lock())


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
