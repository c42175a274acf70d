"""What the server tells the page about itself: its models, the limits an operator can change,
the error titles and the views. The page reads this from its ``#atlas-config`` block instead of
mirroring the values as JavaScript constants (as datasette serves its ``SETTINGS`` at
``/-/settings.json``), and scripts can read the same document as JSON.

Each value is read where it lives (the app config, or the constant of the module that enforces
it), so changing a limit changes what the page shows and clamps to.
"""

from __future__ import annotations

from collections.abc import Mapping

from app import insights, language, presenter
from app.limits import MY_ANALYSES_MAX_KEYS
from app.protocol import ERRORS
from models.ablation import PATCH_MAX_TOKENS

# The views in tab order: (name, tab label, tab tooltip). static/js/views/index.js lists the same
# names (each is static/js/views/NAME.js); tests/unit/test_js_protocol.py checks the two agree.
VIEWS = (
    ("model", "Model", "every head of every layer"),
    ("head", "Head", "links between tokens in one layer"),
    ("token", "Token", "one token through all layers"),
    ("neuron", "Neuron", "how one attention weight is computed"),
    ("matrix", "Matrix", "one head as a zoomable heatmap"),
    ("stats", "Stats", "statistics of every head"),
    ("heads", "Head roles", "every head coloured by a measure or its role"),
    ("rollout", "Rollout", "attention rollout and flow: which inputs reach a token"),
    ("mixing", "Mixing", "context mixing with the residual and layer norm (Kobayashi et al. 2021)"),
    ("routes", "Routes", "information-flow routes from one token back to the inputs (Ferrando & Voita 2024)"),
    ("compare", "Compare", "two prompts side by side, and which heads changed"),
    ("intervene", "Interventions", "switch heads off or patch them, and see the prediction change (decoders)"),
    ("lens", "Logit lens", "what each layer would predict next (decoders)"),
    ("generate", "Generate", "step through generated tokens and where they attend (decoders)"),
    ("global", "Global", "every head's queries and keys over a corpus, in one picture (AttentionViz)"),
)

# The tab bar's groups, in order: (name, label, the views it holds in tab order). A view no group
# names (one added since) is shown under "analyse", in VIEWS order.
VIEW_GROUPS = (
    ("explore", "Explore", ("model", "head", "token", "neuron", "matrix")),
    ("analyse", "Analyse", ("stats", "heads", "rollout", "mixing", "routes", "compare")),
    ("decoders", "Decoders", ("lens", "generate")),
)


def view_groups() -> list[dict]:
    """[{name, label, views: [view names]}] covering every view of VIEWS once."""
    named = {view for _, _, views in VIEW_GROUPS for view in views}
    known = [name for name, _, _ in VIEWS]
    groups = []
    for group, label, views in VIEW_GROUPS:
        members = [view for view in views if view in known]
        if group == "analyse":
            members += [view for view in known if view not in named]
        groups.append({"name": group, "label": label, "views": members})
    return groups


def page_settings(config: Mapping, service) -> dict:
    """The published settings of this server: ``models`` (as ``GET /api/models`` lists them),
    ``default`` (model name), ``views`` ([{name, label, hint}]), ``view_groups`` (the tab
    bar's groups, view_groups), ``errors``
    ({code: title}) and ``limits`` (below). Pure: reads ``config`` and ``service`` only."""
    return {
        "models": service.models(),
        "default": service.registry.default,
        "views": [{"name": name, "label": label, "hint": hint} for name, label, hint in VIEWS],
        "view_groups": view_groups(),
        "errors": dict(ERRORS),
        "limits": limits(config, service),
    }


def limits(config: Mapping, service) -> dict:
    """Every limit the page shows or clamps to; counts are tokens unless named otherwise."""
    generate = language.GENERATION_FIELDS
    return {
        "max_chars": config["MAX_CHARS"],  # characters per prompt
        "max_tokens": config["MAX_TOKENS"],  # per prompt, on top of each model's own limit
        # per model: the server's limit (MAX_TOKENS or MODEL_MAX_TOKENS); each model's own is in `models`
        "model_max_tokens": {spec: service.token_limit(spec) for spec in service.registry.specs},
        "max_generate_tokens": config["MAX_GENERATE_TOKENS"],  # new tokens per generation
        "default_new_tokens": generate["max_new_tokens"].default,
        "min_temperature": generate["temperature"].minimum,  # sampling temperatures accepted
        "max_temperature": generate["temperature"].maximum,
        "dense_layer_max_tokens": config["DENSE_LAYER_MAX_TOKENS"],  # above: a layer travels as top-k links
        "layer_top_k": config["LAYER_TOP_K"],  # links per query and head in a top-k layer
        "matrix_tile_max": config["MATRIX_TILE_MAX"],  # cells per side of one matrix tile
        "analysis_max_tokens": insights.ANALYSIS_MAX_TOKENS,  # read by whole-model analyses (roles, rollout)
        "lens_max_positions": language.LENS_MAX_POSITIONS,  # positions per logit-lens request
        "patch_max_tokens": PATCH_MAX_TOKENS,  # per prompt of an activation-patching request
        "json_export_max_tokens": config["JSON_EXPORT_MAX_TOKENS"],  # above: the NPZ export only
        "my_analyses_max_keys": MY_ANALYSES_MAX_KEYS,  # analyses a page's "My analyses" global view may name
        "analysed_texts": config["ANALYSED_TEXTS"],  # prompts in the "Analysed here" global view (0: off)
        "presenter_code_alphabet": presenter.CODE_ALPHABET,  # a presentation's join code: this many
        "presenter_code_length": presenter.CODE_LENGTH,  # characters of this alphabet
    }


def on_settings(call, fields: dict) -> dict:
    """``GET /api/settings``: the same document the page reads from ``#atlas-config``."""
    return page_settings(call.service.config, call.service)
