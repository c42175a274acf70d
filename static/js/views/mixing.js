// Context-mixing view (after Kobayashi et al. 2021, "Incorporating Residual and Normalization
// Layers into Analysis of Masked Language Models"): how much of each token's new vector comes
// from the other tokens once the residual and the layer norm are counted. Top: the context-mixing
// ratio of every layer for the four maps (W, ATTN, ATTN+RES, ATTN+RES+LN); click a layer to open
// it. Below: the chosen layer's four token-to-token maps (rows: the token updated, columns: the
// tokens it reads), each coloured to its own maximum. Data: the `mixing` request (a forward pass
// on demand): maps float32 [4, N, N], ratios float32 [4, L].
import {
  contentWidth, displayToken, drawLegend, fitText, formatNumber, heatmapImage, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme,
} from "../draw.js";
import { layerName } from "../layers.js";
import { SEQUENTIAL, unitIndex } from "../palette.js";
import { detailFor, setView } from "../store.js";
import { arrived, changed, h, numberSelect, statusLine } from "../ui.js";

const MAP_TITLES = { weights: "W (mean attention)", attn: "ATTN ‖Σ αf‖", attn_res: "ATTN+RES", attn_res_ln: "ATTN+RES+LN",
  before: "what the FF block reads", ff: "FF alone", after: "after the FF block" };
const LINE_COLOURS = ["#999999", "#0072B2", "#E69F00", "#D55E00"]; // Okabe-Ito: W grey, then blue, orange, vermillion
const CHART_H = 170; // px of the ratio chart's plot area
const MAX_MAP = 340; // px side of one map, at most
const MIN_MAP = 150; // px side of one map, at least
const GAP = 28; // px between maps
const TITLE_H = 22; // px above each map for its title
const LEGEND_H = 8; // px
const BAND_MAX = 28; // px width of the chosen layer's band in the chart
const MAX_COLUMNS = 4; // maps side by side on a wide screen
const MIN_LABELLED_CELL = 9; // px of a map cell from which rows carry their token
const ROW_LABEL = 90; // px of a row label, at most

let ui = null;

function requests(state) {
  const fields = { key: state.analysis.key, layer: state.layer };
  return [{ event: "mixing", fields }, { event: "feedforward", fields }];
}

export function need(state) {
  return state.analysis ? requests(state) : null;
}

function mount(el) {
  const layer = numberSelect("Layer", "layer", (value) => setView({ layer: value }));
  const info = h("p", { className: "view-info" });
  const chart = h("canvas", { "data-testid": "mixing-ratios", "aria-label": "Context-mixing ratio of every layer; click a layer to open it" });
  const maps = h("canvas", { "data-testid": "mixing-maps", "aria-label": "The chosen layer's four context-mixing maps" });
  const ffCanvas = h("canvas", { "data-testid": "mixing-ff", "aria-label": "The chosen layer's feed-forward block as token-to-token maps" });
  const ffInfo = h("p", { className: "view-info" });
  const ffBody = h("section", { className: "mixing-ff" }, [
    h("h3", { text: "The feed-forward block (Kobayashi et al. 2023: integrated gradients through its activation)" }), ffInfo,
    h("div", { className: "canvas-scroll" }, [ffCanvas])]);
  const status = statusLine("Hover for values; click the chart to choose a layer, a map cell to open that token.");
  el.append(h("div", { className: "toolbar" }, [layer.root]), info,
    h("div", { className: "view-body" }, [h("div", { className: "canvas-scroll" }, [chart]), h("div", { className: "canvas-scroll" }, [maps])]),
    ffBody, status.root);
  ui = { el, layer, info, chart, maps, ffBody, ffInfo, status, chartGeometry: null,
    panels: { maps: { canvas: maps, payload: null, geometry: null }, ff: { canvas: ffCanvas, payload: null, geometry: null } } };
  chart.addEventListener("mousemove", hoverChart);
  for (const panel of Object.values(ui.panels)) {
    panel.canvas.addEventListener("mousemove", (event) => hoverMaps(panel, event));
    panel.canvas.addEventListener("click", (event) => {
      const cell = mapCell(panel, pointerIn(panel.canvas, event));
      if (cell) setView({ token: cell.row });
    });
  }
  for (const canvas of [chart, maps, ffCanvas]) canvas.addEventListener("mouseleave", hideTooltip);
  chart.addEventListener("click", (event) => {
    const at = chartLayer(pointerIn(chart, event));
    if (at !== null) setView({ layer: at });
  });
  return ui;
}

// ---- the ratio chart: layers across, ratio 0..1 up ----

function chartLayer(point) {
  const g = ui.chartGeometry;
  if (!g || point.x < g.left - g.step / 2 || point.x > g.left + g.width + g.step / 2) return null;
  return Math.max(0, Math.min(g.layers - 1, Math.round((point.x - g.left) / g.step)));
}

function hoverChart(event) {
  const layer = chartLayer(pointerIn(ui.chart, event));
  if (layer === null) return hideTooltip();
  const { ratios, names } = ui.payload;
  const lines = names.map((name, m) => `${MAP_TITLES[name]}: ${(100 * ratios.data[m * ui.chartGeometry.layers + layer]).toFixed(1)}%`);
  showTooltip(`${layerName(ui.state.analysis.tokens.info, layer, true)}: context-mixing ratio\n${lines.join("\n")}`, event.clientX, event.clientY);
}

function drawChart(width, look) {
  const { ratios, names, layer } = ui.payload;
  const layers = ratios.shape[1];
  const left = look.size * 3.2;
  const plotW = Math.max(120, width - left - look.size * 1.5);
  const top = look.size * 1.6 + Math.ceil(names.length / 2) * look.size * 1.4;
  const height = top + CHART_H + look.size * 2.6;
  const ctx = prepareCanvas(ui.chart, width, height);
  const step = layers > 1 ? plotW / (layers - 1) : 0;
  const g = { left, top, width: plotW, step, layers };
  ui.chartGeometry = g;
  const y = (value) => top + CHART_H * (1 - value);
  ctx.font = look.font(0.85);
  ctx.fillStyle = look.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.fillText(`${tick * 100}%`, left - 6, y(tick));
    ctx.fillStyle = look.faint;
    ctx.fillRect(left, Math.round(y(tick)), plotW, 1);
    ctx.fillStyle = look.muted;
  }
  ctx.fillStyle = look.accent; // the chosen layer
  ctx.globalAlpha = 0.18;
  const band = Math.max(6, Math.min(step, BAND_MAX));
  ctx.fillRect(left + layer * step - band / 2, top, band, CHART_H);
  ctx.globalAlpha = 1;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillStyle = look.muted;
  const every = Math.max(1, Math.ceil((look.size * 2.5) / Math.max(1, step)));
  for (let l = 0; l < layers; l += every) ctx.fillText(String(l), left + l * step, top + CHART_H + 4);
  ctx.fillText("layer", left + plotW / 2, top + CHART_H + look.size * 1.4);
  names.forEach((name, m) => {
    ctx.strokeStyle = LINE_COLOURS[m];
    ctx.fillStyle = LINE_COLOURS[m];
    ctx.lineWidth = 2 * look.line;
    ctx.beginPath();
    for (let l = 0; l < layers; l++) ctx[l ? "lineTo" : "moveTo"](left + l * step, y(ratios.data[m * layers + l]));
    ctx.stroke();
    for (let l = 0; l < layers; l++) ctx.fillRect(left + l * step - 2.5, y(ratios.data[m * layers + l]) - 2.5, 5, 5);
    const column = m % 2;
    const row = Math.floor(m / 2);
    const x = left + column * Math.min(plotW / 2, 220);
    const ly = look.size * 0.4 + row * look.size * 1.4;
    ctx.fillRect(x, ly + look.size * 0.35, 14, 4);
    ctx.fillStyle = look.ink;
    ctx.textAlign = "left";
    ctx.fillText(MAP_TITLES[name], x + 20, ly);
  });
}

// ---- the chosen layer's four maps ----

function mapCell(panel, point) {
  const g = panel.geometry;
  if (!g) return null;
  for (let m = 0; m < g.origins.length; m++) {
    const [x0, y0] = g.origins[m];
    const col = Math.floor((point.x - x0) / g.cell);
    const row = Math.floor((point.y - y0) / g.cell);
    if (col >= 0 && row >= 0 && col < g.n && row < g.n) return { map: m, row, col };
  }
  return null;
}

function hoverMaps(panel, event) {
  const cell = mapCell(panel, pointerIn(panel.canvas, event));
  if (!cell) return hideTooltip();
  const { maps, names, tokens: n } = panel.payload;
  const offset = (cell.map * n + cell.row) * n;
  const value = maps.data[offset + cell.col];
  let total = 0;
  for (let j = 0; j < n; j++) total += maps.data[offset + j];
  const words = ui.state.analysis.tokens.tokens;
  const pair = `«${displayToken(words[cell.row])}» ← «${displayToken(words[cell.col])}»`;
  const share = total > 0 ? ` (${(100 * value / total).toFixed(1)}% of the row)` : "";
  showTooltip(`${MAP_TITLES[names[cell.map]]}\n${pair}: ${formatNumber(value)}${share}`, event.clientX, event.clientY);
}

/** Token labels down the left of a map's rows. */
function drawRowLabels(ctx, x, y0, cell, n, look) {
  const words = ui.state.analysis.tokens.tokens;
  ctx.fillStyle = look.muted;
  ctx.font = look.font(Math.min(0.85, cell / look.size));
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i < n; i++) ctx.fillText(fitText(ctx, displayToken(words[i]), ROW_LABEL), x - 4, y0 + (i + 0.5) * cell);
}

/** A payload's [M, N, N] maps side by side (as many as fit), each coloured to its own maximum. */
function drawMaps(panel, width, look) {
  const { maps, names, tokens: n } = panel.payload;
  const labels = MIN_LABELLED_CELL * n <= MAX_MAP ? Math.min(ROW_LABEL, look.size * 6) : 0; // room for row labels
  const columns = Math.max(1, Math.min(MAX_COLUMNS, Math.floor((width - labels) / (MIN_MAP + GAP))));
  const side = Math.max(MIN_MAP, Math.min(MAX_MAP, Math.floor((width - labels - (columns - 1) * GAP - 8) / columns)));
  const cell = Math.max(1, side / n);
  const labelled = labels > 0 && cell >= MIN_LABELLED_CELL;
  const left = labelled ? labels + 4 : 4;
  const block = TITLE_H + n * cell + LEGEND_H + look.size * 2.2;
  const rows = Math.ceil(names.length / columns);
  const ctx = prepareCanvas(panel.canvas, Math.max(width, left + columns * (n * cell + GAP)), rows * (block + GAP));
  const origins = [];
  ctx.imageSmoothingEnabled = false;
  names.forEach((name, m) => {
    const x0 = left + (m % columns) * (n * cell + GAP);
    const y0 = Math.floor(m / columns) * (block + GAP) + TITLE_H;
    origins.push([x0, y0]);
    const offset = m * n * n;
    let peak = 0;
    for (let i = 0; i < n * n; i++) peak = Math.max(peak, maps.data[offset + i]);
    const image = heatmapImage(n, n, SEQUENTIAL, (r, c) => unitIndex(peak > 0 ? maps.data[offset + r * n + c] / peak : 0));
    ctx.drawImage(image, x0, y0, n * cell, n * cell);
    ctx.fillStyle = look.ink;
    ctx.font = look.font(0.95, "600");
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText(MAP_TITLES[name], x0, y0 - 5);
    if (labelled && m % columns === 0) drawRowLabels(ctx, x0, y0, cell, n, look);
    drawLegend(ctx, x0, y0 + n * cell + 6, Math.min(160, n * cell), LEGEND_H, SEQUENTIAL, ["0", "", formatNumber(peak)], look);
  });
  panel.geometry = { origins, cell, n };
  panel.canvas.dataset.layer = String(panel.payload.layer);
}

function describe(payload, info) {
  const norm = payload.post_ln ? "post-LN: the norm after the residual sum" : "pre-LN: the feed-forward block's input norm";
  const [w, , res, ln] = payload.names.map((_, m) => payload.ratios.data[m * payload.layers + payload.layer]);
  return `${layerName(info, payload.layer, true)}: ${(100 * w).toFixed(0)}% of the attention weights go to other tokens, `
    + `but with the residual and the norm (${norm}) ${(100 * ln).toFixed(0)}% of the token's new vector comes from them `
    + `(${(100 * res).toFixed(0)}% before the norm). Rows: the token updated; columns: the tokens it reads.`;
}

function describeFeedForward(payload) {
  const [before, , after] = payload.ratios.data;
  const percent = (ratio) => `${(100 * ratio).toFixed(0)}%`;
  const reads = payload.post_ln ? "its input (ATTN+RES+LN)" : "the residual stream it adds to (ATTN+RES)";
  return `Context mixing ${percent(before)} in ${reads}, ${percent(after)} after the FF block with its residual`
    + `${payload.post_ln ? " and norm" : ""}: the FF block ${after > before ? "mixes in more context" : "keeps tokens more to themselves"}.`;
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  ui.layer.sync(analysis.overview.layers, state.layer, (i) => layerName(analysis.tokens.info, i));
  const [mixing, feedForward] = requests(state);
  const payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, mixing),
    "Running the model once more to read its residual stream and norms…");
  const ff = arrived(ui.ffBody, detailFor(state, feedForward), "Splitting the feed-forward block by integrated gradients…");
  if (!changed(ui, [payload, ff, state.projector, el.clientWidth])) return;
  const look = theme();
  const width = contentWidth(el);
  if (payload) {
    ui.payload = payload;
    ui.panels.maps.payload = payload;
    ui.info.textContent = describe(payload, analysis.tokens.info);
    drawChart(width, look);
    drawMaps(ui.panels.maps, width, look);
  }
  ui.panels.ff.canvas.hidden = !ff;
  if (ff) {
    ui.panels.ff.payload = ff;
    ui.ffInfo.textContent = describeFeedForward(ff);
    drawMaps(ui.panels.ff, width, look);
  }
}
