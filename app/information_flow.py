"""The information-flow routes request (Ferrando & Voita 2024): edge importances from one forward
pass per analysis, on demand, kept in the service's memo; each ``routes`` request prunes them
from one token at one threshold (cheap), so moving the threshold never runs the model again."""

from __future__ import annotations

from app.analysis.information_flow import DEFAULT_THRESHOLD, prune
from app.mixing import decomposable, run_on_model
from app.protocol import Field, encode_array

FIELDS = {
    "key": Field(str),
    "token": Field(int, minimum=0),
    "threshold": Field(float, False, DEFAULT_THRESHOLD, minimum=0.001, maximum=1.0),
}


def _route_importances(handle, text: str) -> dict:
    from models.information_flow import route_importances  # after the loader imported the model code

    return route_importances(handle, text)


def on_routes(call, fields: dict) -> dict:
    """The pruned graph of routes to one token: its edges, binary, one array per field."""
    key, token = fields["key"], fields["token"]
    capture = decomposable(call, fields, "information-flow routes")
    importances = call.service.memo.get_or_compute(
        key, "routes", lambda: run_on_model(call.service, capture, _route_importances)
    )
    edges = prune(importances, token, fields["threshold"])
    return {
        "key": key,
        "token": token,
        "threshold": fields["threshold"],
        "layers": capture.n_layers,
        "tokens": capture.n_tokens,
        "post_ln": bool(importances["post_ln"].any()),
        "edges": {name: encode_array(values, values.dtype.name) for name, values in edges.items()},  # [E] each
    }
