// Matrix view: one head as a heatmap, queries down, keys across, with token labels. Colourings:
// attention, pre-softmax scores (blue/orange around 0, masked cells hatched), Kobayashi et al.'s
// ||alpha f|| of the head, and the layer's ||sum_h alpha_h f_h|| (one map for the whole layer, so
// the chosen head does not apply and the view says so). Drag a rectangle or turn the wheel to zoom: the view asks the
// server for just that block (`matrix` with row0..row1, col0..col1), max-pooled to at most
// 256 x 256, so the largest prompts stay sharp. Click a cell to choose its query token.
import {
  binOf, binStart, contentWidth, displayToken, drawLegend, drawSinkBadge, fitText, formatNumber, hatchPattern, heatmapImage, hideTooltip,
  labelWidth, pointerIn, prepareCanvas, showTooltip, sinkBadgeWidth, theme,
} from "../draw.js";
import { DIVERGING, SEQUENTIAL, signedIndex, unitIndex } from "../palette.js";
import { detailFor, getState, scaleSkip, setView, sinkSet, tokenIndex } from "../store.js";
import { arrived, changed, h, layerHeadSelects, segmented, sinkScaleToggle, statusLine } from "../ui.js";
import { ATTENTION_MODES } from "../protocol.js";
import { isLayerMode, WEIGHT_LABELS, weightOptions } from "../weights.js";

const MAX_LABEL = 130; // px of a token label before it ends in …
const LABEL_SHARE = 0.2; // of the view's width a label may take at most (a phone keeps room for cells)
const MAX_CELL = 42; // px per cell
const LABEL_ANGLE = Math.PI / 3; // key labels rise at 60 degrees
const HEIGHT_FRACTION = 0.74; // of the window height the heatmap may take
const MAX_ASPECT = 2.5; // a cell may be this many times wider than tall, so a long prompt fills the width
const MIN_BLOCK = 2; // tokens per side of the smallest zoom block
const WHEEL_FACTOR = 1.5; // zoom per wheel step
const WHEEL_PAUSE_MS = 120; // wheel steps closer than this are merged
const LEGEND_H = 10; // px
const DRAG_MIN_PX = 6; // a shorter drag is a click

let ui = null;

export function need(state) {
  if (!state.analysis) return null;
  const [row0, row1, col0, col1] = state.zoom ?? [];
  const zoom = state.zoom ? { row0, row1, col0, col1 } : {};
  const head = isLayerMode(state.mode) ? 0 : state.head; // a layer map is the same for every head
  return { event: "matrix", fields: { key: state.analysis.key, layer: state.layer, head, mode: state.mode, ...zoom } };
}

function mount(el) {
  const selects = layerHeadSelects(setView);
  const mode = segmented("Colour by", "mode", weightOptions(ATTENTION_MODES), (value) => setView({ mode: value }));
  const reset = h("button", { type: "button", className: "quiet", text: "Reset zoom", "data-control": "reset-zoom",
    onClick: () => setView({ zoom: null }) });
  const block = h("span", { className: "zoom-info" });
  const sinkScale = sinkScaleToggle();
  const canvas = h("canvas", { className: "matrix-canvas", "data-testid": "matrix-canvas", tabindex: 0,
    "aria-label": "Attention matrix of one head; drag or use the wheel to zoom" });
  const status = statusLine("Drag a rectangle or turn the wheel to zoom; click a cell to choose its query token.");
  el.append(h("div", { className: "toolbar" }, [...selects.roots, mode.root, sinkScale.root, reset, block]),
    h("div", { className: "view-body" }, [h("div", { className: "canvas-scroll" }, [canvas])]), status.root);
  ui = { el, selects, mode, sinkScale, reset, block, canvas, status, drag: null, lastWheel: 0 };

  canvas.addEventListener("mousedown", (event) => {
    const cell = cellAt(pointerIn(canvas, event), false);
    if (cell) ui.drag = { from: pointerIn(canvas, event), to: pointerIn(canvas, event), start: cell };
  });
  canvas.addEventListener("mousemove", (event) => {
    const point = pointerIn(canvas, event);
    if (ui.drag) {
      ui.drag.to = point;
      draw();
    }
    tooltip(point, event);
  });
  canvas.addEventListener("mouseleave", hideTooltip);
  window.addEventListener("mouseup", (event) => {
    if (!ui.drag) return;
    const { from, start } = ui.drag;
    const to = pointerIn(canvas, event);
    ui.drag = null;
    if (Math.hypot(to.x - from.x, to.y - from.y) < DRAG_MIN_PX) {
      setView({ token: start.row0 });
      draw();
      return;
    }
    const end = cellAt(to, true);
    zoomTo(Math.min(start.row0, end.row0), Math.max(start.row1, end.row1), Math.min(start.col0, end.col0), Math.max(start.col1, end.col1));
  });
  canvas.addEventListener("wheel", (event) => {
    const cell = cellAt(pointerIn(canvas, event), false);
    if (!cell || !ui.payload) return;
    event.preventDefault();
    if (event.timeStamp - ui.lastWheel < WHEEL_PAUSE_MS) return;
    ui.lastWheel = event.timeStamp;
    const p = ui.payload;
    const factor = event.deltaY < 0 ? 1 / WHEEL_FACTOR : WHEEL_FACTOR;
    const scaleSpan = (lo, hi, at) => [at - (at - lo) * factor, at + (hi - at) * factor];
    const [r0, r1] = scaleSpan(p.row0, p.row1, (cell.row0 + cell.row1) / 2);
    const [c0, c1] = scaleSpan(p.col0, p.col1, (cell.col0 + cell.col1) / 2);
    zoomTo(r0, r1, c0, c1);
  }, { passive: false });
  return ui;
}

/** Zoom to a block of token ranges, rounded, clamped and at least MIN_BLOCK tokens a side. */
function zoomTo(row0, row1, col0, col1) {
  const n = getState().analysis.overview.tokens;
  const span = (lo, hi) => {
    let a = Math.max(0, Math.floor(lo));
    let b = Math.min(n, Math.ceil(hi));
    if (b - a < MIN_BLOCK) [a, b] = [Math.max(0, Math.min(a, n - MIN_BLOCK)), Math.min(n, Math.max(a, 0) + MIN_BLOCK)];
    return [a, b];
  };
  const [r0, r1] = span(row0, row1);
  const [c0, c1] = span(col0, col1);
  const whole = r0 === 0 && c0 === 0 && r1 === n && c1 === n;
  setView({ zoom: whole ? null : [r0, r1, c0, c1] });
}

/** The cell under a point: pooled indices and the token ranges they cover; `clamp` snaps outside points in. */
function cellAt(point, clamp) {
  const g = ui.geometry;
  const p = ui.payload;
  if (!g || !p) return null;
  let r = Math.floor((point.y - g.top) / g.cellH);
  let c = Math.floor((point.x - g.left) / g.cellW);
  if (clamp) {
    r = Math.max(0, Math.min(g.rows - 1, r));
    c = Math.max(0, Math.min(g.cols - 1, c));
  } else if (r < 0 || c < 0 || r >= g.rows || c >= g.cols) return null;
  return {
    r, c,
    row0: binStart(r, g.rows, p.row0, p.row1), row1: binStart(r + 1, g.rows, p.row0, p.row1),
    col0: binStart(c, g.cols, p.col0, p.col1), col1: binStart(c + 1, g.cols, p.col0, p.col1),
  };
}

function tooltip(point, event) {
  const cell = cellAt(point, false);
  if (!cell) return hideTooltip();
  const tokens = ui.state.analysis.tokens.tokens;
  const name = (a, b) => (b - a === 1 ? `«${displayToken(tokens[a])}» (${a})` : `tokens ${a}–${b - 1}`);
  const p = ui.payload;
  const raw = p.matrix.data[cell.r * ui.geometry.cols + cell.c];
  const value = p.mode === "scores" ? raw : raw * p.matrix.scale;
  const pooled = cell.row1 - cell.row0 > 1 || cell.col1 - cell.col0 > 1 ? " (largest in block)" : "";
  showTooltip(`query ${name(cell.row0, cell.row1)}\nkey ${name(cell.col0, cell.col1)}\n${p.mode}: ${formatNumber(value)}${pooled}`,
    event.clientX, event.clientY);
}

/**
 * The colour scale of a block: its largest value (|value| for scores) outside the columns of
 * the tokens in `skip` (the first token and the sinks, which would pin the scale and leave a
 * long prompt's matrix blank; they are clipped at the top), unless that leaves nothing.
 */
function colouring(payload, skip) {
  const data = payload.matrix.data;
  const [rows, cols] = payload.matrix.shape;
  const skipped = new Set([...skip].filter((i) => i >= payload.col0 && i < payload.col1)
    .map((i) => binOf(i - payload.col0, cols, payload.col1 - payload.col0)));
  const note = skipped.size ? ", first token & sinks clipped" : "";
  const peak = (size) => {
    let kept = 0;
    let all = 0;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = size(data[r * cols + c]);
        if (!Number.isFinite(v)) continue;
        all = Math.max(all, v);
        if (!skipped.has(c)) kept = Math.max(kept, v);
      }
    }
    return kept || all;
  };
  if (payload.mode === "scores") {
    const limit = peak(Math.abs);
    return { lut: DIVERGING, index: (v) => (v === -Infinity ? -1 : signedIndex(Math.max(-limit, Math.min(limit, v)), limit)),
      legend: [`−${formatNumber(limit)}`, `score (pre-softmax${note})`, `+${formatNumber(limit)}`] };
  }
  const top = peak((v) => v);
  const label = WEIGHT_LABELS[payload.mode];
  return { lut: SEQUENTIAL, index: (v) => unitIndex(top ? Math.min(1, v / top) : 0),
    legend: ["0", `${label}${note}`, formatNumber(top * payload.matrix.scale)] };
}

/**
 * Hatch cells a causal mask hides (every key of the cell after every query of its row), so
 * they do not read as zero attention; in scores mode, the cells the payload marks -Infinity.
 */
function hatchMasked(out, p, g, look, causal) {
  const [rows, cols] = p.matrix.shape;
  const masked = p.mode === "scores" ? (r, c) => p.matrix.data[r * cols + c] === -Infinity
    : causal ? (r, c) => binStart(c, cols, p.col0, p.col1) >= binStart(r + 1, rows, p.row0, p.row1) : null;
  if (!masked) return;
  out.fillStyle = hatchPattern(out, look.muted);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      if (!masked(r, c)) continue;
      let end = c;
      while (end + 1 < cols && masked(r, end + 1)) end++;
      out.fillRect(g.left + c * g.cellW, g.top + r * g.cellH, (end - c + 1) * g.cellW, g.cellH);
      c = end;
    }
  }
}

/**
 * Token labels along one axis. Every token when there is room; else every `step`-th bin, each
 * label "position token" (the bin's first token) with a tick at its place, so thinned and pooled
 * axes read the same way and never mix bare indices with tokens.
 */
function axisLabels(ctx, look, g, count, start, end, along) {
  const tokens = ui.state.analysis.tokens.tokens;
  const size = along === "rows" ? g.cellH : g.cellW;
  const step = Math.max(1, Math.ceil((look.size * 1.15) / size));
  const thinned = thinnedAxis(count, start, end, size, look);
  const chosen = tokenIndex(ui.state);
  ctx.font = look.font(0.9);
  ctx.strokeStyle = look.muted;
  ctx.lineWidth = 1;
  for (let i = 0; i < count; i += step) {
    const a = binStart(i, count, start, end);
    const b = binStart(i + 1, count, start, end);
    const text = fitText(ctx, thinned ? `${a} ${displayToken(tokens[a])}` : displayToken(tokens[a]), g.most);
    const sink = b - a === 1 && sinkSet(ui.state).has(a);
    const selected = along === "rows" && a <= chosen && chosen < b;
    const at = (i + 0.5) * size;
    ctx.fillStyle = selected ? look.accent : look.ink;
    if (along === "rows") {
      if (thinned) strokeTick(ctx, g.left - 4, g.top + at, g.left, g.top + at);
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(text, g.left - 6, g.top + at);
      if (sink) drawSinkBadge(ctx, g.left - 10 - ctx.measureText(text).width, g.top + at, look, "right");
    } else {
      if (thinned) strokeTick(ctx, g.left + at, g.top - 4, g.left + at, g.top);
      ctx.save();
      ctx.translate(g.left + at, g.top - 6);
      ctx.rotate(-LABEL_ANGLE);
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(text, 0, 0);
      if (sink) drawSinkBadge(ctx, ctx.measureText(text).width + 4, 0, look);
      ctx.restore();
    }
  }
}

function strokeTick(ctx, x1, y1, x2, y2) {
  ctx.beginPath();
  ctx.moveTo(x1, y1);
  ctx.lineTo(x2, y2);
  ctx.stroke();
}

/** Whether an axis of `count` bins over tokens start..end, `size` px each, shows only some labels. */
function thinnedAxis(count, start, end, size, look) {
  return end - start > count || Math.ceil((look.size * 1.15) / size) > 1;
}

/**
 * Where the heatmap goes: label margins (for plain token labels, or "position token" ones when
 * `numbered`), then cells that fill the width and are as tall as the window allows, down to
 * 1 / MAX_ASPECT of their width. `thinned`: an axis shows only some labels.
 */
function layout(ctx, look, p, width, numbered) {
  const [rows, cols] = p.matrix.shape;
  const tokens = ui.state.analysis.tokens.tokens;
  const labels = (from, to) => tokens.slice(from, to).map((token, i) => (numbered ? `${from + i} ` : "") + displayToken(token));
  const badge = sinkSet(ui.state).size ? sinkBadgeWidth(ctx, look) : 0; // room for sink badges beside labels
  const most = Math.min(MAX_LABEL, width * LABEL_SHARE);
  const left = Math.max(labelWidth(ctx, labels(p.row0, p.row1), most), labelWidth(ctx, ["00000"], most)) + 12 + badge;
  const top = Math.ceil((Math.max(labelWidth(ctx, labels(p.col0, p.col1), most), 40) + badge) * Math.sin(LABEL_ANGLE)) + 16;
  const wide = Math.max(1, Math.min(MAX_CELL, (width - left - 24) / cols));
  const cellH = Math.max(1, Math.min(wide, (window.innerHeight * HEIGHT_FRACTION - top) / rows));
  const cellW = Math.min(wide, cellH * MAX_ASPECT);
  const thinned = thinnedAxis(rows, p.row0, p.row1, cellH, look) || thinnedAxis(cols, p.col0, p.col1, cellW, look);
  return { left, top, cellW, cellH, rows, cols, thinned, most };
}

function draw() {
  const p = ui.payload;
  if (!p) return;
  const look = theme();
  const [rows, cols] = p.matrix.shape;
  const ctx = ui.canvas.getContext("2d");
  ctx.font = look.font(0.9);
  const width = contentWidth(ui.el);
  let g = layout(ctx, look, p, width, false);
  if (g.thinned) g = layout(ctx, look, p, width, true); // room for "position token" labels
  const { left, top, cellW, cellH } = g;
  ui.geometry = g;
  ui.canvas.dataset.grid = JSON.stringify({ left, top, cell: cellW, cellH, rows, cols }); // cell: a cell's width
  const height = top + rows * cellH + LEGEND_H + look.size * 3;
  const out = prepareCanvas(ui.canvas, Math.max(width, left + cols * cellW + 8), height);

  const { lut, index, legend } = ui.colours;
  ui.image ??= heatmapImage(rows, cols, lut, (r, c) => index(p.matrix.data[r * cols + c]));
  out.imageSmoothingEnabled = false;
  out.drawImage(ui.image, left, top, cols * cellW, rows * cellH);
  hatchMasked(out, p, g, look, ui.state.analysis.tokens.info.causal);
  out.strokeStyle = look.muted;
  out.lineWidth = 1;
  out.strokeRect(left - 0.5, top - 0.5, cols * cellW + 1, rows * cellH + 1);
  axisLabels(out, look, g, rows, p.row0, p.row1, "rows");
  axisLabels(out, look, g, cols, p.col0, p.col1, "cols");
  drawLegend(out, left, top + rows * cellH + 8, Math.max(320, Math.min(420, cols * cellW)), LEGEND_H, lut, legend, look);

  if (ui.drag) {
    const { from, to } = ui.drag;
    out.strokeStyle = look.accent;
    out.lineWidth = 2;
    out.setLineDash([5, 3]);
    out.strokeRect(Math.min(from.x, to.x), Math.min(from.y, to.y), Math.abs(to.x - from.x), Math.abs(to.y - from.y));
    out.setLineDash([]);
  }
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  ui.selects.sync(analysis.overview, state);
  ui.selects.roots[1].querySelector("select").disabled = isLayerMode(state.mode);
  ui.mode.sync(state.mode);
  const payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, need(state)));
  ui.reset.disabled = !state.zoom;
  ui.sinkScale.sync(state);
  if (!payload || !changed(ui, [payload, state.token, sinkSet(state), state.sinks, state.projector, el.clientWidth])) return;
  ui.payload = payload;
  ui.colours = colouring(payload, scaleSkip(state));
  ui.image = null;
  const n = analysis.overview.tokens;
  const summed = isLayerMode(payload.mode) ? ` · layer ${payload.layer}, all heads summed (the head chosen does not apply)` : "";
  ui.block.textContent = `rows: queries, columns: keys${summed} · ${state.zoom
    ? `queries ${payload.row0}–${payload.row1 - 1} × keys ${payload.col0}–${payload.col1 - 1} of ${n}`
    : `all ${n} × ${n} tokens${n > payload.matrix.shape[0] ? ` (pooled to ${payload.matrix.shape[0]} × ${payload.matrix.shape[1]}; zoom for detail)` : ""}`}`;
  ui.canvas.dataset.mode = payload.mode;
  ui.canvas.dataset.block = `${payload.row0},${payload.row1},${payload.col0},${payload.col1}`;
  draw();
}
