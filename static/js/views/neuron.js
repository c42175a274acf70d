// Neuron view (after BertViz): how one query token's attention in one head is computed. For
// each key token: the key vector k, the elementwise product q × k, their sum q·k, the score
// (q·k × scaling, masked where the model may not look) and the softmax. Vectors are strips of
// cells on a blue (negative) / orange (positive) scale. Data: the `neuron` event. Key rows are
// virtualised like the head view, so long prompts scroll smoothly.
import {
  displayToken, drawLegend, drawSinkBadge, fitText, formatNumber, hideTooltip, labelWidth, pointerIn, prepareCanvas,
  showTooltip, sinkBadgeWidth, theme, tokenLabels,
} from "../draw.js";
import { BAR_COLOUR, DIVERGING, lutColour, signedIndex } from "../palette.js";
import { detailFor, setView, sinkSet, tokenIndex } from "../store.js";
import { arrived, changed, frameScheduler, h, layerHeadSelects, statusLine, tokenStrip, virtualScroller } from "../ui.js";

const ROW_EMS = 1.5; // key row height, in label font sizes
const PAD = 6; // px above the first and below the last key row
const MAX_LABEL = 160; // px, widest token label
const MIN_CELL = 2; // px per vector component, at least...
const MAX_CELL = 14; // ...and at most
const NUMBER_W = 84; // px of a numeric column
const BAR_W = 150; // px of the softmax column (bar and value)
const GAP = 18; // px between columns
const NARROW = 720; // px of width below which the columns shrink and the score column (q·k × scaling, said above) goes
const COMPACT = { label: 64, number: 52, bar: 96, gap: 6, minCell: 1 }; // px, the columns on a phone
const CLIP_PERCENTILE = 0.99; // colour scales end at this quantile of |value|, so outliers do not wash out the rest
const VIEW_FRACTION = 0.6; // of the window height the key list may take
const LEGEND_W = 120; // px
const LEGEND_H = 8; // px
const ROTARY_ARCHITECTURES = ["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "olmo"];

let ui = null;

export function need(state) {
  if (!state.analysis) return null;
  return { event: "neuron", fields: { key: state.analysis.key, layer: state.layer, head: state.head, query: tokenIndex(state) } };
}

/** The CLIP_PERCENTILE quantile of |values| over several arrays (a robust colour-scale end). */
function robustLimit(...arrays) {
  const magnitudes = [];
  for (const array of arrays) for (const value of array) if (Number.isFinite(value)) magnitudes.push(Math.abs(value));
  if (!magnitudes.length) return 1;
  magnitudes.sort((a, b) => a - b);
  return magnitudes[Math.min(magnitudes.length - 1, Math.floor(CLIP_PERCENTILE * magnitudes.length))] || 1;
}

function mount(el) {
  const selects = layerHeadSelects(setView);
  const strip = tokenStrip("Query token", (index) => setView({ token: index }));
  const info = h("p", { className: "view-info" });
  const header = h("canvas", { className: "neuron-header", "data-testid": "neuron-header" });
  const canvas = h("canvas", { className: "neuron-canvas", "data-testid": "neuron-canvas" });
  const schedule = frameScheduler(draw);
  const scroller = virtualScroller(canvas, schedule);
  const status = statusLine("Hover a cell for its value. Rows: key tokens; the query's own row is outlined.");
  el.append(
    h("div", { className: "toolbar" }, [...selects.roots]),
    h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "Query" }), strip.root]),
    info,
    h("div", { className: "view-body" }, [header, scroller.root]),
    status.root,
  );
  ui = { el, selects, strip, info, header, canvas, scroller, status, schedule, hoverRow: -1 };
  canvas.addEventListener("mousemove", (event) => hover(event));
  canvas.addEventListener("mouseleave", () => {
    hideTooltip();
    ui.hoverRow = -1;
    schedule();
  });
  return ui;
}

function geometry(payload, tokens, width, look) {
  const ctx = ui.canvas.getContext("2d");
  ctx.font = look.font(1);
  const narrow = width < NARROW;
  const cap = narrow ? COMPACT.label : MAX_LABEL;
  const { labels, width: widest } = tokenLabels(ctx, tokens, cap);
  const queryLabel = `query «${labels[payload.query]}»`;
  ctx.font = look.font(1, "700"); // the query label is bold
  const badge = sinkSet(ui.state).size ? sinkBadgeWidth(ctx, look) : 0; // room for a sink badge before the label
  const labelW = (narrow ? widest + badge : Math.max(widest + badge, labelWidth(ctx, [queryLabel], cap + 60))) + 10;
  const [numberW, barW, gap] = narrow ? [COMPACT.number, COMPACT.bar, COMPACT.gap] : [NUMBER_W, BAR_W, GAP];
  const scoreW = narrow ? 0 : numberW;
  const d = payload.query_vector.shape[0];
  const fixed = labelW + 4 * gap + numberW + scoreW + barW;
  const cell = Math.max(narrow ? COMPACT.minCell : MIN_CELL, Math.min(MAX_CELL, Math.floor((width - fixed) / (2 * d))));
  const keysX = labelW + gap;
  const productsX = keysX + d * cell + gap;
  const dotX = productsX + d * cell + gap;
  const scoreX = dotX + numberW;
  const barX = scoreX + scoreW + gap;
  const rowH = Math.round(look.size * ROW_EMS);
  return { labels, queryLabel, labelW, d, cell, keysX, productsX, dotX, scoreX, barX, numberW, scoreW, barW, rowH,
    n: payload.keys.shape[0], width: Math.max(width, barX + barW) };
}

function drawStrip(ctx, values, offset, d, x, y, cell, height, limit) {
  for (let i = 0; i < d; i++) {
    ctx.fillStyle = lutColour(DIVERGING, signedIndex(values[offset + i], limit));
    ctx.fillRect(x + i * cell, y, Math.max(1, cell - (cell > 5 ? 1 : 0)), height);
  }
}

function drawHeader(payload, g, look) {
  const size = look.size;
  const height = Math.round(size * 6.4);
  const ctx = prepareCanvas(ui.header, g.width, height);
  ctx.textBaseline = "alphabetic";
  ctx.fillStyle = look.ink;
  ctx.font = look.font(0.95, "700");
  const titleY = size * 1.2;
  const stripW = g.d * g.cell;
  ctx.textAlign = "left";
  ctx.fillText(fitText(ctx, "key k", stripW), g.keysX, titleY);
  ctx.fillText(fitText(ctx, stripW > 200 ? "q × k (elementwise)" : "q × k", stripW), g.productsX, titleY);
  ctx.textAlign = "right";
  ctx.fillText("q · k", g.dotX + g.numberW - 6, titleY);
  if (g.scoreW) ctx.fillText(`× ${formatNumber(payload.scaling)}`, g.scoreX + g.scoreW - 6, titleY);
  ctx.textAlign = "left";
  ctx.fillText("softmax", g.barX, titleY);

  const legendY = titleY + 6;
  for (const [x, limit] of [[g.keysX, ui.vectorLimit], [g.productsX, ui.productLimit]]) {
    drawLegend(ctx, x, legendY, Math.min(LEGEND_W, stripW), LEGEND_H, DIVERGING,
      [`−${formatNumber(limit)}`, "0", `+${formatNumber(limit)}`], look, "drop");
  }

  const qY = height - g.rowH - 2; // the query vector, aligned with the key columns
  ctx.font = look.font(1, "700");
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillStyle = look.accent;
  ctx.fillText(fitText(ctx, g.queryLabel, g.keysX - 10), g.keysX - 8, qY + g.rowH / 2);
  drawStrip(ctx, payload.query_vector.data, 0, g.d, g.keysX, qY + 2, g.cell, g.rowH - 4, ui.vectorLimit);
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.9);
  ctx.textAlign = "left";
  ctx.fillText("← q (multiplies every key)", g.productsX, qY + g.rowH / 2);
}

function draw() {
  const payload = ui.payload;
  if (!payload) return;
  const look = theme();
  const tokens = ui.state.analysis.tokens.tokens;
  const width = ui.scroller.root.clientWidth || ui.el.clientWidth;
  const g = geometry(payload, tokens, width, look);
  ui.geometry = g;
  drawHeader(payload, g, look);
  const height = ui.scroller.size(PAD * 2 + g.n * g.rowH, Math.max(260, window.innerHeight * VIEW_FRACTION));
  const ctx = prepareCanvas(ui.canvas, g.width, height);
  const [first, last] = ui.scroller.rows(PAD, g.rowH, g.n, height);
  const top = ui.scroller.top;
  const { keys, products, dots, scores, attention } = payload;
  const sinks = sinkSet(ui.state);
  ctx.textBaseline = "middle";
  for (let j = first; j <= last; j++) {
    const y = PAD + j * g.rowH - top;
    const mid = y + g.rowH / 2;
    const masked = scores.data[j] === -Infinity;
    if (j === ui.hoverRow) {
      ctx.fillStyle = look.faint;
      ctx.fillRect(0, y, g.width, g.rowH);
    }
    ctx.globalAlpha = masked ? 0.35 : 1;
    ctx.font = look.font(1, j === payload.query ? "700" : "400");
    ctx.textAlign = "right";
    ctx.fillStyle = j === payload.query ? look.accent : look.ink;
    const label = fitText(ctx, g.labels[j], g.labelW - 6);
    ctx.fillText(label, g.keysX - 8, mid);
    if (sinks.has(j)) drawSinkBadge(ctx, g.keysX - 12 - ctx.measureText(label).width, mid, look, "right");
    drawStrip(ctx, keys.data, j * g.d, g.d, g.keysX, y + 2, g.cell, g.rowH - 4, ui.vectorLimit);
    drawStrip(ctx, products.data, j * g.d, g.d, g.productsX, y + 2, g.cell, g.rowH - 4, ui.productLimit);
    ctx.font = look.font(0.95);
    ctx.fillStyle = look.ink;
    ctx.fillText(formatNumber(dots.data[j]), g.dotX + g.numberW - 6, mid);
    ctx.fillStyle = masked ? look.muted : look.ink;
    if (g.scoreW) ctx.fillText(formatNumber(scores.data[j]), g.scoreX + g.scoreW - 6, mid);
    const value = attention.data[j];
    ctx.fillStyle = look.faint;
    ctx.fillRect(g.barX, y + 3, g.barW - 56, g.rowH - 6);
    ctx.fillStyle = BAR_COLOUR;
    ctx.fillRect(g.barX, y + 3, (g.barW - 56) * value, g.rowH - 6);
    ctx.fillStyle = look.ink;
    ctx.textAlign = "left";
    ctx.fillText(formatNumber(value), g.barX + g.barW - 50, mid);
    ctx.globalAlpha = 1;
    if (j === payload.query) {
      ctx.strokeStyle = look.accent;
      ctx.lineWidth = 1.5 * look.line;
      ctx.strokeRect(1, y + 0.5, g.width - 2, g.rowH - 1);
    }
  }
}

function hover(event) {
  const g = ui.geometry;
  if (!g) return;
  const point = pointerIn(ui.canvas, event);
  const row = Math.floor((point.y + ui.scroller.top - PAD) / g.rowH);
  const valid = row >= 0 && row < g.n;
  if ((valid ? row : -1) !== ui.hoverRow) {
    ui.hoverRow = valid ? row : -1;
    ui.canvas.dataset.hover = valid ? String(row) : "";
    ui.schedule();
  }
  if (!valid) return hideTooltip();
  const p = ui.payload;
  const tokens = ui.state.analysis.tokens.tokens;
  const name = `«${displayToken(tokens[row])}» (token ${row})`;
  const inStrip = (x0) => Math.floor((point.x - x0) / g.cell);
  const dim = point.x >= g.productsX ? inStrip(g.productsX) : inStrip(g.keysX);
  if (dim >= 0 && dim < g.d && point.x < g.dotX) {
    const q = p.query_vector.data[dim];
    const k = p.keys.data[row * g.d + dim];
    showTooltip(`${name}, dimension ${dim}\nq = ${formatNumber(q)}, k = ${formatNumber(k)}\nq × k = ${formatNumber(p.products.data[row * g.d + dim])}`,
      event.clientX, event.clientY);
  } else {
    showTooltip(`${name}\nq·k = ${formatNumber(p.dots.data[row])}, score = ${formatNumber(p.scores.data[row])}\n`
      + `attention = ${formatNumber(p.attention.data[row])}`, event.clientX, event.clientY);
  }
}

function describe(state, payload) {
  const info = state.analysis.tokens.info;
  const d = payload.query_vector.shape[0];
  const parts = [`Layer ${payload.layer}, head ${payload.head}: head size ${d}, scores = q·k × ${formatNumber(payload.scaling)}.`];
  if (info.kv_heads && info.kv_heads !== info.heads) {
    parts.push(`Grouped-query attention: query head ${payload.head} reads key head ${payload.kv_head} `
      + `(${info.heads / info.kv_heads} query heads share each of the ${info.kv_heads} key heads).`);
  }
  if (ROTARY_ARCHITECTURES.includes(info.architecture)) parts.push("q and k are shown after the rotary position embedding.");
  if (info.causal) parts.push("Causal model: later tokens are masked (greyed).");
  return parts.join(" ");
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  ui.selects.sync(analysis.overview, state);
  ui.strip.sync(analysis.tokens.tokens, analysis.tokens.special, tokenIndex(state), { sink: sinkSet(state) });
  const payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, need(state)));
  if (!payload || !changed(ui, [payload, sinkSet(state), state.projector, el.clientWidth])) return;
  ui.payload = payload;
  ui.vectorLimit = robustLimit(payload.query_vector.data, payload.keys.data);
  ui.productLimit = robustLimit(payload.products.data);
  ui.info.textContent = describe(state, payload);
  ui.canvas.dataset.query = String(payload.query);
  ui.canvas.dataset.kvHead = String(payload.kv_head);
  draw();
}
