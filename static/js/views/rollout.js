// Rollout view (after Abnar & Zuidema 2020): how much of each input token reaches a chosen
// output position once attention is followed through every layer (the residual counted as
// (A + I) / 2, heads fused by mean, max or min). Left: the output's rollout row after the last
// layer and its attention flow as bars, and a layers x tokens heatmap of its rollout row after
// each layer. Right: the whole token-to-token rollout matrix. Data: `rollout` (matrix float16
// [n, n] pooled to <= 256, rows float16 [L, n]) and `flow` (float32 [n]; refused as `too_long`
// on large inputs, which the view says).
import {
  binOf, binStart, contentWidth, displayToken, drawLegend, drawSinkBadge, fitText, formatNumber, hatchPattern, heatmapImage,
  hideTooltip, labelWidth, pointerIn, prepareCanvas, showTooltip, sinkBadgeWidth, theme, tokenLabels,
} from "../draw.js";
import { BAR_COLOUR, SEQUENTIAL, unitIndex } from "../palette.js";
import { FUSIONS } from "../protocol.js";
import { limits } from "../settings.js";
import { detailFor, scaleSkip, setView, sinkSet, tokenIndex } from "../store.js";
import { changed, fieldCheckbox, h, notice, segmented, sinkScaleToggle, statusLine, tokenStrip } from "../ui.js";

const FLOW_COLOUR = "#D55E00"; // Okabe-Ito vermillion: flow bars beside the blue rollout bars
const BAR_H = 90; // px of each bar chart
const MIN_COL = 3; // px per token column, at least...
const MAX_COL = 46; // ...and at most
const ROW_H = 18; // px per layer row of the heatmap, at most
const HEATMAP_H = 300; // px the layer rows aim for
const AXIS_EMS = 6.5; // width of the left axis labels, in label font sizes
const MAX_LABEL = 110; // px of a token label before it ends in …
const LABEL_ANGLE = Math.PI / 3; // column labels fall at 60 degrees
const MATRIX_SHARE = 0.42; // of the view width the rollout matrix takes when side by side
const SIDE_BY_SIDE = 1000; // px of width from which the two panels stand side by side
const MAX_MATRIX_CELL = 30; // px
const LEGEND_H = 10; // px
const LOG_DECADES = 3; // a log scale shows values from its maximum down to 10^-3 of it

let ui = null;

/** The output position: the chosen token, else the last token (causal) or the first real one, within the analysed tokens. */
function positionOf(state) {
  const n = Math.min(state.analysis.overview.tokens, limits.analysis_max_tokens);
  return Math.min(tokenIndex(state), n - 1);
}

function requests(state) {
  const fields = { key: state.analysis.key, fusion: state.fusion ?? "mean", position: positionOf(state) };
  return [{ event: "rollout", fields }, { event: "flow", fields }];
}

export function need(state) {
  return state.analysis ? requests(state) : null;
}

function mount(el) {
  const fusion = segmented("Fuse heads by", "fusion", FUSIONS.map((value) => ({
    value, text: value[0].toUpperCase() + value.slice(1), title: `${value} over the heads of each layer`,
  })), (value) => setView({ fusion: value }));
  const strip = tokenStrip("Output position", (index) => setView({ token: index }));
  const sinkScale = sinkScaleToggle();
  const logScale = fieldCheckbox("Log scale", "scale", { on: "log", off: null,
    title: `colours and bars on a log scale over ${LOG_DECADES} decades: rollout often puts almost everything on one token` });
  const info = h("p", { className: "view-info" });
  const rowCanvas = h("canvas", { "data-testid": "rollout-bars", "aria-label": "How much of each input reaches the output token" });
  const matrixCanvas = h("canvas", { "data-testid": "rollout-matrix", className: "rollout-matrix",
    "aria-label": "Rollout of every token (rows: outputs, columns: inputs); click a row to choose it" });
  const flowNote = h("p", { className: "notice flow-notice", hidden: true });
  const rowHeading = h("h3", {});
  const rowPanel = h("section", { className: "rollout-panel" }, [rowHeading, flowNote, h("div", { className: "canvas-scroll" }, [rowCanvas])]);
  const matrixPanel = h("section", { className: "rollout-panel" }, [
    h("h3", { text: "Rollout after the last layer: rows are outputs, columns inputs" }),
    h("div", { className: "canvas-scroll" }, [matrixCanvas])]);
  const panels = h("div", { className: "rollout-panels" }, [rowPanel, matrixPanel]);
  const status = statusLine("Hover for values; click a matrix row or a token to make it the output position.");
  el.append(h("div", { className: "toolbar" }, [fusion.root, sinkScale.root, logScale.root]),
    h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "Output" }), strip.root]),
    info, h("div", { className: "view-body" }, [panels]), status.root);
  ui = { el, fusion, strip, sinkScale, logScale, info, rowCanvas, matrixCanvas, flowNote, rowHeading, panels, status, rowGeometry: null, matrixGeometry: null };

  rowCanvas.addEventListener("mousemove", (event) => hoverRow(event));
  matrixCanvas.addEventListener("mousemove", (event) => hoverMatrix(event));
  for (const canvas of [rowCanvas, matrixCanvas]) canvas.addEventListener("mouseleave", hideTooltip);
  matrixCanvas.addEventListener("click", (event) => {
    const cell = matrixCell(pointerIn(matrixCanvas, event));
    if (cell) setView({ token: cell.row0 });
  });
  rowCanvas.addEventListener("click", (event) => {
    const column = rowColumn(pointerIn(rowCanvas, event));
    if (column !== null) setView({ token: column });
  });
  return ui;
}

// ---- the output's row: bars and layers x tokens ----

function rowColumn(point) {
  const g = ui.rowGeometry;
  if (!g) return null;
  const column = Math.floor((point.x - g.left) / g.col);
  return column >= 0 && column < g.n ? column : null;
}

function hoverRow(event) {
  const g = ui.rowGeometry;
  const point = pointerIn(ui.rowCanvas, event);
  const column = rowColumn(point);
  if (column === null || point.y > g.heatTop + g.layers * g.rowH) return hideTooltip();
  const who = `«${displayToken(ui.state.analysis.tokens.tokens[column])}» (token ${column})`;
  if (point.y >= g.heatTop) {
    const layer = Math.min(g.layers - 1, Math.floor((point.y - g.heatTop) / g.rowH));
    return showTooltip(`${who} after layer ${layer}: ${formatNumber(g.rows[layer * g.n + column])}`, event.clientX, event.clientY);
  }
  const share = g.flowShare ? ` (${(100 * g.flowShare[column]).toFixed(1)}% of all flow)` : "";
  const flow = g.flow ? ` · max-flow ${formatNumber(g.flow[column])}${share}` : "";
  return showTooltip(`${who} → output: rollout ${formatNumber(g.last[column])}${flow}`, event.clientX, event.clientY);
}

/** A value on [0, peak] as a fraction of the scale: linear, or logarithmic over LOG_DECADES. */
function fraction(value, peak) {
  if (ui.state.scale !== "log") return Math.min(1, value / peak);
  return value <= 0 ? 0 : Math.max(0, Math.min(1, 1 + Math.log10(value / peak) / LOG_DECADES));
}

/** How the colour scale is bent: "log", "sinks clipped", both or "". */
function scaleNote(skip) {
  return [ui.state.scale === "log" ? "log" : "", skip.size ? "first token & sinks clipped" : ""].filter(Boolean).join(", ");
}

/** Largest of values[offset + j] for j < count, leaving out the indices in `skip` (unless that leaves nothing). */
function peakOf(values, offset, count, skip) {
  let all = 1e-9;
  let kept = 0;
  for (let j = 0; j < count; j++) {
    all = Math.max(all, values[offset + j]);
    if (!skip.has(j)) kept = Math.max(kept, values[offset + j]);
  }
  return kept > 0 ? kept : all;
}

function bars(ctx, values, g, top, colour, label, look) {
  const peak = peakOf(values, 0, g.n, g.skip);
  ctx.fillStyle = look.faint;
  ctx.fillRect(g.left, top + BAR_H, g.n * g.col, 1);
  const width = Math.max(1, g.col - (g.col > 4 ? 2 : 0));
  for (let j = 0; j < g.n; j++) {
    const height = fraction(values[j], peak) * BAR_H;
    const x = g.left + j * g.col + (g.col - width) / 2;
    ctx.fillStyle = colour;
    ctx.fillRect(x, top + BAR_H - height, width, height);
    if (values[j] > peak * 1.001) { // clipped (a sink left out of the scale): a break across the top
      ctx.fillStyle = look.bg;
      ctx.fillRect(x - 1, top + 6, width + 2, 3);
    }
  }
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.85);
  ctx.textAlign = "right";
  ctx.textBaseline = "top";
  ctx.fillText(ui.state.scale === "log" ? `${label} (log)` : label, g.left - 8, top);
  ctx.textBaseline = "bottom";
  ctx.fillText(`max ${formatNumber(peak)}`, g.left - 8, top + BAR_H);
}

function drawRow(state, rollout, flow, width, look) {
  const [layers, n] = rollout.rows.shape;
  const rows = rollout.rows.data;
  const last = rows.subarray((layers - 1) * n, layers * n);
  const position = rollout.position;
  const tokens = state.analysis.tokens.tokens.slice(0, n);
  const sinks = sinkSet(state);
  const ctx = ui.rowCanvas.getContext("2d");
  ctx.font = look.font(0.9);
  const left = Math.round(look.size * AXIS_EMS);
  const col = Math.max(MIN_COL, Math.min(MAX_COL, Math.floor((width - left - 8) / n)));
  const labelled = col >= look.size * 1.1;
  const { labels, width: widest } = tokenLabels(ctx, tokens, MAX_LABEL);
  const rowH = Math.max(3, Math.min(ROW_H, Math.floor(HEATMAP_H / layers)));
  const barsTop = look.size * 0.5;
  const flowTop = barsTop + BAR_H + look.size;
  const heatTop = (flow ? flowTop + BAR_H : barsTop + BAR_H) + look.size * 1.2;
  const labelsTop = heatTop + layers * rowH + 6;
  const labelRoom = labelled ? (widest + (sinks.size ? sinkBadgeWidth(ctx, look) : 0)) * Math.sin(LABEL_ANGLE) + 8 : look.size * 1.6;
  const skip = scaleSkip(state); // tokens left out of every scale
  const g = { left, col, n, layers, rowH, heatTop, rows, last, flow: flow?.flow.data ?? null,
    flowShare: flow?.flow_share?.data ?? null, skip };
  ui.rowGeometry = g;
  const out = prepareCanvas(ui.rowCanvas, Math.max(width, left + n * col + 8), labelsTop + labelRoom + LEGEND_H + look.size * 2.6);
  bars(out, last, g, barsTop, BAR_COLOUR, "rollout", look);
  if (flow) bars(out, flow.flow.data, g, flowTop, FLOW_COLOUR, "flow", look);

  const peaks = Array.from({ length: layers }, (_, l) => peakOf(rows, l * n, n, skip)); // each layer on its own scale
  const image = heatmapImage(layers, n, SEQUENTIAL, (l, j) => unitIndex(fraction(rows[l * n + j], peaks[l])));
  out.imageSmoothingEnabled = false;
  out.drawImage(image, g.left, heatTop, n * col, layers * rowH);
  if (state.analysis.tokens.info.causal && position + 1 < n) { // inputs after the output cannot reach it
    out.fillStyle = hatchPattern(out, look.muted);
    out.globalAlpha = 0.55;
    out.fillRect(g.left + (position + 1) * col, heatTop, (n - position - 1) * col, layers * rowH);
    out.globalAlpha = 1;
  }
  out.fillStyle = look.muted;
  out.font = look.font(0.85);
  out.textAlign = "right";
  out.textBaseline = "middle";
  const every = Math.ceil(look.size / rowH);
  for (let l = 0; l < layers; l += every) out.fillText(`layer ${l}`, g.left - 8, heatTop + l * rowH + rowH / 2);
  out.strokeStyle = look.accent; // the output position's own column
  out.lineWidth = 2 * look.line;
  out.strokeRect(g.left + position * col - 1, barsTop - 2, col + 2, heatTop + layers * rowH - barsTop + 4);

  out.font = look.font(0.9);
  if (labelled) {
    for (let j = 0; j < n; j++) {
      out.save();
      out.translate(g.left + j * col + col / 2, labelsTop);
      out.rotate(LABEL_ANGLE);
      out.textAlign = "left";
      out.textBaseline = "middle";
      out.fillStyle = j === position ? look.accent : look.ink;
      out.font = look.font(0.9, j === position ? "700" : "400");
      const text = fitText(out, labels[j], MAX_LABEL);
      out.fillText(text, 0, 0);
      if (sinks.has(j)) drawSinkBadge(out, out.measureText(text).width + 4, 0, look);
      out.restore();
    }
  } else {
    out.textAlign = "left";
    out.textBaseline = "top";
    const step = Math.ceil((look.size * 4) / col);
    for (let j = 0; j < n; j += step) out.fillText(String(j), g.left + j * col, labelsTop);
  }
  const note = scaleNote(skip);
  drawLegend(out, g.left, labelsTop + labelRoom + 4, Math.min(320, Math.max(160, n * col)), LEGEND_H, SEQUENTIAL,
    [ui.state.scale === "log" ? "max/1000" : "0", `per layer${note ? `, ${note}` : ""}`, "layer max"], look);
}

// ---- the rollout matrix ----

function matrixCell(point) {
  const g = ui.matrixGeometry;
  if (!g) return null;
  const r = Math.floor((point.y - g.top) / g.cell);
  const c = Math.floor((point.x - g.left) / g.cell);
  if (r < 0 || c < 0 || r >= g.m || c >= g.m) return null;
  return { r, c, row0: binStart(r, g.m, 0, g.n), row1: binStart(r + 1, g.m, 0, g.n), col0: binStart(c, g.m, 0, g.n), col1: binStart(c + 1, g.m, 0, g.n) };
}

function hoverMatrix(event) {
  const cell = matrixCell(pointerIn(ui.matrixCanvas, event));
  if (!cell) return hideTooltip();
  const tokens = ui.state.analysis.tokens.tokens;
  const name = (a, b) => (b - a === 1 ? `«${displayToken(tokens[a])}» (${a})` : `tokens ${a}–${b - 1}`);
  const g = ui.matrixGeometry;
  const value = g.data[cell.r * g.m + cell.c] * g.scale;
  return showTooltip(`${name(cell.row0, cell.row1)} is made of ${name(cell.col0, cell.col1)}: ${formatNumber(value)}`
    + (g.m < g.n ? " (largest in block)" : ""), event.clientX, event.clientY);
}

function drawMatrix(state, rollout, width, look) {
  const m = rollout.matrix.shape[0];
  const n = rollout.analysed_tokens;
  const tokens = state.analysis.tokens.tokens;
  const sinks = sinkSet(state);
  const ctx = ui.matrixCanvas.getContext("2d");
  ctx.font = look.font(0.85);
  const labelled = m === n;
  const labels = labelled ? tokens.slice(0, n).map(displayToken) : ["0000"];
  const badge = labelled && sinks.size ? sinkBadgeWidth(ctx, look) : 0;
  const margin = Math.min(MAX_LABEL, labelWidth(ctx, labels, MAX_LABEL)) + badge + 12;
  const cell = Math.max(1, Math.min(MAX_MATRIX_CELL, Math.floor((width - margin - 8) / m)));
  const showLabels = labelled && cell >= look.size * 1.05;
  const left = showLabels ? margin : look.size * 3;
  const top = showLabels ? Math.ceil(margin * Math.sin(LABEL_ANGLE)) + 8 : look.size * 1.5;
  const g = { left, top, cell, m, n, data: rollout.matrix.data, scale: rollout.matrix.scale };
  ui.matrixGeometry = g;
  const out = prepareCanvas(ui.matrixCanvas, left + m * cell + 8, top + m * cell + LEGEND_H + look.size * 3);
  out.imageSmoothingEnabled = false;
  const skip = new Set([...scaleSkip(state)].map((i) => binOf(i, m, n)));
  let peak = 0; // the largest value outside the skipped columns: the end of the colour scale
  for (let r = 0; r < m; r++) for (let c = 0; c < m; c++) if (!skip.has(c)) peak = Math.max(peak, g.data[r * m + c]);
  peak ||= 1;
  out.drawImage(heatmapImage(m, m, SEQUENTIAL, (r, c) => unitIndex(fraction(g.data[r * m + c], peak))),
    left, top, m * cell, m * cell);
  out.strokeStyle = look.muted;
  out.lineWidth = 1;
  out.strokeRect(left - 0.5, top - 0.5, m * cell + 1, m * cell + 1);
  const chosen = binOf(rollout.position, m, n);
  out.strokeStyle = look.accent;
  out.lineWidth = 2 * look.line;
  out.strokeRect(left - 1, top + chosen * cell - 1, m * cell + 2, cell + 2);
  out.font = look.font(0.85);
  if (showLabels) {
    for (let i = 0; i < n; i++) {
      const text = fitText(out, labels[i], MAX_LABEL);
      out.fillStyle = i === rollout.position ? look.accent : look.ink;
      out.textAlign = "right";
      out.textBaseline = "middle";
      const x = left - 6 - (sinks.has(i) ? badge : 0);
      out.fillText(text, x, top + (i + 0.5) * cell);
      if (sinks.has(i)) drawSinkBadge(out, left - 6, top + (i + 0.5) * cell, look, "right");
      out.save();
      out.translate(left + (i + 0.5) * cell, top - 6);
      out.rotate(-LABEL_ANGLE);
      out.textAlign = "left";
      out.fillStyle = look.ink;
      out.fillText(text, 0, 0);
      if (sinks.has(i)) drawSinkBadge(out, out.measureText(text).width + 4, 0, look);
      out.restore();
    }
  } else {
    out.fillStyle = look.muted;
    out.textAlign = "left";
    out.textBaseline = "bottom";
    out.fillText(`${n} × ${n} tokens${m < n ? `, pooled to ${m} × ${m}` : ""}`, left, top - 4);
  }
  const note = scaleNote(skip);
  drawLegend(out, left, top + m * cell + 8, Math.min(300, Math.max(160, m * cell)), LEGEND_H, SEQUENTIAL,
    [ui.state.scale === "log" ? "max/1000" : "0", note ? `share, ${note}` : "share", formatNumber(peak * g.scale)], look);
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  const [rolloutRequest, flowRequest] = requests(state);
  const position = rolloutRequest.fields.position;
  ui.fusion.sync(rolloutRequest.fields.fusion);
  ui.sinkScale.sync(state);
  ui.logScale.sync(state);
  ui.strip.sync(analysis.tokens.tokens, analysis.tokens.special, position, { sink: sinkSet(state) });
  const entry = detailFor(state, rolloutRequest);
  const flowEntry = detailFor(state, flowRequest);
  const body = ui.el.querySelector(".view-body");
  if (entry?.status === "error") notice(body, entry.error.message, "error");
  else notice(body, entry?.status === "ready" ? "" : "Following attention through the layers…");
  const rollout = entry?.status === "ready" ? entry.payload : null;
  const flow = flowEntry?.status === "ready" ? flowEntry.payload : null;
  ui.flowNote.hidden = !(flowEntry?.status === "error" || flowEntry?.status === "pending");
  ui.flowNote.dataset.kind = flowEntry?.status === "error" && flowEntry.error.code !== "too_long" ? "error" : "info";
  ui.flowNote.textContent = flowEntry?.status === "error" ? `Attention flow is not shown: ${flowEntry.error.message}.`
    : "Computing attention flow…";
  if (!rollout || !changed(ui, [rollout, flow, sinkSet(state), state.scale, state.sinks, state.projector, el.clientWidth])) return;
  const word = `«${displayToken(analysis.tokens.tokens[position])}»`;
  ui.rowHeading.textContent = `What reaches ${word} (token ${position}): after the last layer (bars) and after each layer`;
  const n = analysis.overview.tokens;
  ui.info.textContent = `Rollout multiplies the layers' attention, each mixed half-and-half with the residual stream, heads fused by `
    + `${rollout.fusion}; flow treats the layers as a network of pipes and asks how much can reach the output. `
    + (rollout.analysed_tokens < n ? `Computed over the first ${rollout.analysed_tokens} of ${n} tokens.` : "");
  const available = contentWidth(el);
  const sideBySide = available >= SIDE_BY_SIDE;
  ui.panels.classList.toggle("side-by-side", sideBySide);
  const look = theme();
  const matrixWidth = sideBySide ? Math.floor(available * MATRIX_SHARE) : available;
  drawRow(state, rollout, flow, sideBySide ? available - matrixWidth - 24 : available, look);
  drawMatrix(state, rollout, matrixWidth, look);
  ui.rowCanvas.dataset.position = String(rollout.position);
  ui.rowCanvas.dataset.fusion = rollout.fusion;
  ui.rowCanvas.dataset.flow = flow ? "ready" : flowEntry?.status ?? "";
}
