"""Bokeh figures for the statistics panel, embedded with ``bokeh.embed.json_item`` (BokehJS is
served from the installed bokeh package, so the page needs no CDN)."""

from __future__ import annotations

import numpy as np
from bokeh.embed import json_item
from bokeh.layouts import row
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.plotting import figure

from models.record import Capture

PLOT_HEIGHT = 340  # pixels
# static/js/palette.js SEQUENTIAL_STOPS (ColorBrewer YlGnBu from pure white at 0, light = low)
SEQUENTIAL_STOPS = ("#ffffff", "#edf8b1", "#c7e9b4", "#7fcdbb", "#41b6c4", "#1d91c0", "#225ea8", "#253494", "#081d58")
LUT_SIZE = 256  # colours per ramp, as palette.js LUT_SIZE


def ramp(stops: tuple[str, ...], size: int = LUT_SIZE) -> tuple[str, ...]:
    """``size`` colours spread linearly between ``stops``: palette.js buildLut, so these plots
    use the very colours of every canvas view (a stepped 9-colour palette showed bands)."""
    rgb = np.array([[int(stop[i : i + 2], 16) for i in (1, 3, 5)] for stop in stops], dtype=float)  # [S, 3]
    positions = np.linspace(0, len(stops) - 1, size)
    channels = np.stack([np.interp(positions, np.arange(len(stops)), rgb[:, c]) for c in range(3)], axis=1)
    return tuple("#{:02x}{:02x}{:02x}".format(*colour) for colour in np.rint(channels).astype(int))


SEQUENTIAL = ramp(SEQUENTIAL_STOPS)
DOTS = SEQUENTIAL[LUT_SIZE // 4 :]  # dots skip the palest quarter, which vanishes on white
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
