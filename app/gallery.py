"""The demo gallery: curated prompts with an explanation and a pre-selected view, precomputed so
a class runs from the cache with no GPU and no wait."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from urllib.parse import urlencode

from app.protocol import AtlasError
from app.service import AtlasService

log = logging.getLogger(__name__)

GALLERY_FILE = Path(__file__).with_name("gallery.toml")


def load_gallery(path: Path = GALLERY_FILE) -> list[dict]:
    with open(path, "rb") as handle:
        items = tomllib.load(handle)["item"]
    for item in items:
        fields = {"model": item["model"], "text": item["text"], **item.get("view", {})}
        item["link"] = "/?" + urlencode(fields)
    return items


def gallery_for(service: AtlasService) -> list[dict]:
    """The items whose model this server offers."""
    return [item for item in load_gallery() if item["model"] in service.registry.specs]


def prompts(item: dict) -> list[str]:
    """Every prompt an item opens (compare items open two)."""
    return [item["text"]] + ([item["view"]["text2"]] if "text2" in item.get("view", {}) else [])


def precompute(service: AtlasService) -> list[tuple[str, bool, float]]:
    """Analyse every gallery prompt into the cache; returns (item id, was cached, seconds)."""
    done = []
    for item in gallery_for(service):
        for text in prompts(item):
            try:
                analysis = service.analyze(item["model"], text)
                done.append((item["id"], analysis.cached, analysis.seconds))
            except AtlasError as error:
                log.warning("gallery item %s failed: %s", item["id"], error.message)
    return done
