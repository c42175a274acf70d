"""The notebook bridge: send an analysis to a running Attention Atlas server and get its link.

For people coming from BertViz: instead of pasting attention into notebook HTML, push it to the
server and open (or embed) the full app::

    from app import notebook
    link = notebook.push("smollm2", "The capital of France is")          # a model the server has
    link = notebook.push(my_model, "Some text", tokenizer=my_tokenizer)  # any transformers model here
    notebook.show(link)                                                    # inline iframe in Jupyter

Only the standard library talks HTTP, so this works wherever the app's requirements are installed.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import numpy as np

DEFAULT_SERVER = "http://127.0.0.1:5000"
TIMEOUT_SECONDS = 600  # a first request may load a model and run a long prompt


class BridgeError(RuntimeError):
    """The server refused or could not be reached; the message is the server's own."""


def push(
    model, text: str, *, tokenizer=None, target: str = "", server: str = DEFAULT_SERVER, view: dict | None = None
) -> str:
    """Analyse ``text`` and return the share link.

    ``model`` is either the name of a model the server offers (the server runs it) or a
    transformers model object with its ``tokenizer`` (captured here, in this process, then
    uploaded, so models the server has never seen can be explored too). ``target``: for an
    encoder-decoder model, the text its decoder reads (default: the model's own output).
    """
    server = server.rstrip("/")
    if isinstance(model, str):
        fields = {"model": model, "text": text, **({"target": target} if target else {})}
        answer = _request(f"{server}/api/analyze", json.dumps(fields).encode(), "application/json")
        query = fields
    else:
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer with tokenizer=...")
        answer = _request(
            f"{server}/api/captures", _capture_bytes(model, tokenizer, text, target), "application/octet-stream"
        )
        query = {"key": answer["key"]}
    return f"{server}/?{urlencode({**query, **(view or {})})}"


def show(link: str, height: int = 720):
    """Embed a link in a Jupyter notebook (an iframe to the running server). The link is marked
    ``embed=1``: the only page the server lets another origin (ATLAS_FRAME_ANCESTORS) frame."""
    from IPython.display import IFrame

    return IFrame(embed_link(link), width="100%", height=height)


def embed_link(link: str) -> str:
    """``link`` with ``embed=1`` in its query (a short link /s/... is resolved to its page first,
    since the server's redirect would drop the flag)."""
    parts = urlsplit(_resolve(link))
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "embed"]
    return urlunsplit(parts._replace(path="/", query=urlencode([*query, ("embed", "1")])))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _resolve(link: str) -> str:
    """A short link's page (``/s/ID`` answers 302 to ``/?query``); any other link as it is."""
    if not urlsplit(link).path.startswith("/s/"):
        return link
    try:
        urllib.request.build_opener(_NoRedirect).open(link, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code in (301, 302, 303, 307, 308) and error.headers.get("Location"):
            return urljoin(link, error.headers["Location"])
        raise BridgeError(f"{link}: {error.reason}") from None
    except urllib.error.URLError as error:
        raise BridgeError(f"cannot reach the Attention Atlas server at {link}: {error.reason}") from None
    return link


def _capture_bytes(model, tokenizer, text: str, target: str) -> bytes:
    """Capture with the same hook the server uses, and serialise the record for upload."""
    import torch

    from models.capture import run_capture
    from models.loading import ModelHandle
    from models.recorder import ATTENTION_IMPLEMENTATION, register_capture_attention
    from models.registry import ModelSpec

    register_capture_attention()
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    spec = ModelSpec(name=name, max_tokens=int(getattr(model.config, "max_position_embeddings", 4096) or 4096))
    handle = ModelHandle(
        name, spec, model.eval(), tokenizer, next(model.parameters()).device, "notebook", 0.0, threading.Lock()
    )
    with torch.inference_mode():
        capture = run_capture(handle, text, target=target)
    buffer = io.BytesIO()
    np.savez(buffer, **capture.to_arrays())
    return buffer.getvalue()


def _request(url: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("message", error.reason)
        except (ValueError, AttributeError):
            message = error.reason
        raise BridgeError(f"{url}: {message}") from None
    except urllib.error.URLError as error:
        raise BridgeError(f"cannot reach the Attention Atlas server at {url}: {error.reason}") from None
