"""app/published.py: the settings the page reads are the server's own, follow its config, and
reach the page's #atlas-config, whose tabs and panels are written from the same view list."""

from __future__ import annotations

import json
import re

from app.protocol import ERRORS
from app.published import VIEWS, page_settings


def test_limits_follow_the_config(app, service):
    config = {**app.config, "MAX_GENERATE_TOKENS": 7, "MAX_CHARS": 123, "LAYER_TOP_K": 3}
    limits = page_settings(config, service)["limits"]
    assert (limits["max_generate_tokens"], limits["max_chars"], limits["layer_top_k"]) == (7, 123, 3)
    assert 0 < limits["min_temperature"] < 1 < limits["max_temperature"]
    assert limits["default_new_tokens"] <= app.config["MAX_GENERATE_TOKENS"]
    assert set(limits["model_max_tokens"]) == {model["name"] for model in service.models()}


def test_the_page_embeds_the_settings_and_writes_its_tabs_from_them(app, service, client):
    html = client.get("/").get_data(as_text=True)
    embedded = json.loads(
        re.search(r'<script type="application/json" id="atlas-config">(.*?)</script>', html, re.S).group(1)
    )
    settings = page_settings(app.config, service)
    assert embedded == json.loads(json.dumps(settings))
    assert embedded["errors"] == ERRORS and embedded["default"] in {model["name"] for model in embedded["models"]}
    names = [name for name, _, _ in VIEWS]
    grouped = [name for group in settings["view_groups"] for name in group["views"]]
    assert sorted(grouped) == sorted(names)  # every view in one group, once
    assert re.findall(r'role="tab" data-view="(\w+)"', html) == grouped
    assert re.findall(r'<section id="view-(\w+)"', html) == names
