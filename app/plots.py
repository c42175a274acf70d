"""Bokeh figures for the statistics panel, embedded with ``bokeh.embed.json_item`` (BokehJS is
served from the installed bokeh package, so the page needs no CDN)."""

from __future__ import annotations

import numpy as np
from bokeh.embed import json_item
from bokeh.layouts import row
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import YlGnBu9, linear_palette
from bokeh.plotting import figure

from models.record import Capture

PLOT_HEIGHT = 340  # pixels
# The page's sequential palette (static/js/palette.js SEQUENTIAL: YlGnBu, light = low), so the
# panel reads like every other view; dots skip its palest colours, which vanish on white.
SEQUENTIAL = tuple(reversed(YlGnBu9))
DOTS = linear_palette(SEQUENTIAL[2:], 7)
METRIC_KEYS = ("entropy_norm", "distance", "sink", "previous", "self", "next", "delimiter")


def head_stats_item(capture: Capture, metrics: dict[str, np.ndarray]) -> dict:
    """A heatmap of normalised entropy per layer x head and an entropy-vs-distance scatter,
    one dot per head, hover for its role; ``metrics`` is the head summary (app.insights.summary)."""
    layers, heads = np.meshgrid(np.arange(capture.n_layers), np.arange(capture.n_heads), indexing="ij")
    source = ColumnDataSource(
        {
            "layer": layers.ravel(),
            "head": heads.ravel(),
            "role": metrics["role"].ravel().tolist(),
            **{name: np.round(metrics[name].ravel().astype(float), 4) for name in METRIC_KEYS},
        }
    )
    tooltips = [
        ("layer", "@layer"),
        ("head", "@head"),
        ("role", "@role"),
        ("entropy (norm.)", "@entropy_norm"),
        ("mean distance", "@distance"),
        ("sink share", "@sink"),
        ("previous", "@previous"),
    ]
    mapper = LinearColorMapper(palette=SEQUENTIAL, low=0.0, high=1.0)
    grid = figure(
        title="Normalised entropy per head",
        height=PLOT_HEIGHT,
        width=420,
        tools="tap,reset",
        x_axis_label="head",
        y_axis_label="layer",
        y_range=(capture.n_layers - 0.5, -0.5),
        x_range=(-0.5, capture.n_heads - 0.5),
    )
    grid.rect(
        "head", "layer", 1, 1, source=source, fill_color={"field": "entropy_norm", "transform": mapper}, line_color=None
    )
    grid.add_layout(ColorBar(color_mapper=mapper, width=10, title="entropy"), "right")
    grid.add_tools(HoverTool(tooltips=tooltips))
    scatter = figure(
        title="Entropy vs mean attention distance",
        height=PLOT_HEIGHT,
        width=420,
        x_axis_label="normalised entropy",
        y_axis_label="mean distance (tokens)",
        tools="pan,wheel_zoom,reset",
    )
    by_layer = LinearColorMapper(palette=DOTS, low=0, high=max(1, capture.n_layers - 1))
    scatter.scatter(
        "entropy_norm", "distance", source=source, size=7, alpha=0.85, color={"field": "layer", "transform": by_layer}
    )
    scatter.add_layout(ColorBar(color_mapper=by_layer, width=10, title="layer"), "right")
    scatter.add_tools(HoverTool(tooltips=tooltips))
    return json_item(row(grid, scatter))
