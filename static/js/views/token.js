// Token view: one token through the whole model. Two heatmaps, each with one row per head
// (grouped by layer) and one column per token of the prompt: "outgoing" is where the chosen
// token looks (its attention row in every head), "incoming" is who looks at it (its column).
// Data: the `token` event, uint8 [L, H, N] each ([L, 1, N] in the layer mode: one row per layer,
// Kobayashi et al.'s ||sum_h alpha_h f_h||). Click a cell to open that head (or layer).
import {
  binOf, binStart, contentWidth, displayToken, drawLegend, fitText, formatNumber, hatchPattern, heatmapImage,
  hideTooltip, labelWidth, pointerIn, poolColumns, prepareCanvas, showTooltip, theme, tokenLabels, drawSinkBadge, sinkBadgeWidth,
} from "../draw.js";
import { layerName } from "../layers.js";
import { SEQUENTIAL } from "../palette.js";
import { TOKEN_MODES } from "../protocol.js";
import { detailFor, setView, sinkSet, tokenIndex } from "../store.js";
import { arrived, changed, h, segmented, statusLine, tokenStrip } from "../ui.js";
import { isLayerMode, WEIGHT_LABELS, weightOptions } from "../weights.js";

const LAYER_GAP = 3; // px between layer groups
const PANEL_HEIGHT = 560; // px the rows of one heatmap aim for
const MIN_ROW = 2; // px per head row, at least...
const MAX_ROW = 7; // ...and at most
const MAX_LAYER_ROW = 18; // px per row when a row is a whole layer (the layer mode)
const MIN_COL = 3; // px per token column; longer prompts are max-pooled to fit
const MAX_COL = 44; // px per token column
const LABEL_ANGLE = Math.PI / 3; // column labels rise at 60 degrees
const MAX_COLUMN_LABEL = 120; // px of a column label before it ends in …
const SIDE_BY_SIDE = 980; // px of width from which the two heatmaps stand side by side
const LEGEND_HEIGHT = 10; // px

const PANELS = {
  outgoing: { title: (word) => `Outgoing: where ${word} looks (columns: keys)` },
  incoming: { title: (word) => `Incoming: who looks at ${word} (columns: queries)` },
};
let ui = null;

/** The view's weights: attention or raw ‖αf‖; another view's mode (scores, shares) shows attention. */
function tokenMode(mode) {
  return TOKEN_MODES.includes(mode) ? mode : "attention";
}

export function need(state) {
  if (!state.analysis) return null;
  return { event: "token", fields: { key: state.analysis.key, index: tokenIndex(state), mode: tokenMode(state.mode) } };
}

function mount(el) {
  const strip = tokenStrip("Choose a token", (index) => setView({ token: index }));
  const status = statusLine("Rows: heads, grouped by layer. Columns: the prompt's tokens (hatched where a causal mask hides them). "
    + "Hover for values; click a cell to open that head.");
  const mode = segmented("Weights", "mode", weightOptions(TOKEN_MODES), (value) => setView({ mode: value }));
  const panels = {};
  const grid = h("div", { className: "token-panels" });
  for (const [name, spec] of Object.entries(PANELS)) {
    const canvas = h("canvas", { "data-testid": `token-${name}`, "data-panel": name });
    const heading = h("h3", { text: spec.title("the token") });
    panels[name] = { canvas, heading, geometry: null };
    grid.append(h("section", { className: "token-panel" }, [heading, h("div", { className: "canvas-scroll" }, [canvas])]));
    canvas.addEventListener("mousemove", (event) => hover(name, event));
    canvas.addEventListener("mouseleave", hideTooltip);
    canvas.addEventListener("click", (event) => {
      const cell = cellAt(panels[name].geometry, pointerIn(canvas, event));
      if (cell) {
        hideTooltip();
        setView(isLayerMode(ui.payload.mode) ? { view: "head", layer: cell.layer }
          : { view: "head", layer: cell.layer, head: cell.head, heads: [cell.head] });
      }
    });
  }
  el.append(h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "Token" }), strip.root, mode.root]),
    h("div", { className: "view-body" }, [grid]), status.root);
  ui = { el, strip, mode, status, grid, panels };
  return ui;
}

function cellAt(g, point) {
  if (!g) return null;
  const bin = Math.floor((point.x - g.left) / g.col);
  if (bin < 0 || bin >= g.bins || point.y < g.top) return null;
  const layer = Math.floor((point.y - g.top) / g.layerH);
  const head = Math.floor((point.y - g.top - layer * g.layerH) / g.row);
  if (layer >= g.layers || head >= g.heads) return null;
  return { layer, head, bin, first: binStart(bin, g.bins, 0, g.n), end: binStart(bin + 1, g.bins, 0, g.n) };
}

function hover(name, event) {
  const panel = ui.panels[name];
  const g = panel.geometry;
  const cell = cellAt(g, pointerIn(panel.canvas, event));
  if (!cell || !ui.payload) {
    hideTooltip();
    return;
  }
  const value = g.values[(cell.layer * g.heads + cell.head) * g.bins + cell.bin] * g.scale;
  const tokens = ui.state.analysis.tokens.tokens;
  const me = `«${displayToken(tokens[ui.payload.index])}»`;
  const other = cell.end - cell.first === 1 ? `«${displayToken(tokens[cell.first])}»` : `tokens ${cell.first}–${cell.end - 1}`;
  const pair = name === "outgoing" ? `${me} → ${other}` : `${other} → ${me}`;
  const pooled = cell.end - cell.first > 1 ? " (largest)" : "";
  const which = isLayerMode(ui.payload.mode) ? "all heads summed" : `head ${cell.head}`;
  showTooltip(`${layerName(ui.state.analysis.tokens.info, cell.layer, true)}, ${which}\n${pair}: ${formatNumber(value)}${pooled}`, event.clientX, event.clientY);
}

function drawPanel(name, values, tokens, width, look) {
  const panel = ui.panels[name];
  const [layers, heads, n] = values.shape;
  const row = Math.max(MIN_ROW, Math.min(heads === 1 ? MAX_LAYER_ROW : MAX_ROW, Math.floor(PANEL_HEIGHT / (layers * heads))));
  const layerH = row * heads + LAYER_GAP;
  const ctx = panel.canvas.getContext("2d");
  ctx.font = look.font(0.9);
  const info = ui.state.analysis.tokens.info;
  const left = labelWidth(ctx, Array.from({ length: layers }, (_, l) => layerName(info, l)), 200) + 12;
  const bins = Math.max(1, Math.min(n, Math.floor((width - left - 8) / MIN_COL)));
  const col = Math.max(MIN_COL, Math.min(MAX_COL, Math.floor((width - left - 8) / bins)));
  const labelled = bins === n && col >= look.size * 1.1;
  const { labels, width: widest } = tokenLabels(ctx, tokens, MAX_COLUMN_LABEL);
  const sinks = sinkSet(ui.state);
  const badge = sinks.size ? sinkBadgeWidth(ctx, look) : 0;
  const top = labelled ? (widest + badge) * Math.sin(LABEL_ANGLE) + look.size + 8 : look.size * 2;
  const pooled = poolColumns(values.data, layers * heads, n, bins);
  const g = { left, top, col, row, layerH, layers, heads, n, bins, values: pooled, scale: values.scale ?? 1 / 255 };
  panel.geometry = g;
  const height = top + layers * layerH + LEGEND_HEIGHT + look.size * 2.6;
  const draw = prepareCanvas(panel.canvas, Math.max(width, left + bins * col + 8), height);

  const image = heatmapImage(layers * heads, bins, SEQUENTIAL, (r, c) => pooled[r * bins + c]);
  draw.imageSmoothingEnabled = false;
  for (let l = 0; l < layers; l++) {
    draw.drawImage(image, 0, l * heads, bins, heads, left, top + l * layerH, bins * col, heads * row);
  }
  draw.fillStyle = look.muted;
  draw.font = look.font(0.9);
  draw.textAlign = "right";
  draw.textBaseline = "middle";
  const every = Math.ceil(look.size / Math.max(1, layerH)); // layer labels that fit
  for (let l = 0; l < layers; l += every) draw.fillText(layerName(info, l), left - 8, top + l * layerH + (heads * row) / 2);

  const index = ui.payload.index;
  const chosen = binOf(index, bins, n); // the column holding the chosen token
  if (labelled) {
    draw.textAlign = "left";
    for (let c = 0; c < n; c++) {
      draw.save();
      draw.translate(left + c * col + col / 2, top - 6);
      draw.rotate(-LABEL_ANGLE);
      draw.fillStyle = c === index ? look.accent : look.ink;
      draw.font = look.font(0.9, c === index ? "700" : "400");
      const text = fitText(draw, labels[c], MAX_COLUMN_LABEL);
      draw.fillText(text, 0, 0);
      if (sinks.has(c)) drawSinkBadge(draw, draw.measureText(text).width + 4, 0, look);
      draw.restore();
    }
  } else { // token indices at evenly spaced bins
    draw.textAlign = "left";
    const step = Math.ceil((look.size * 4) / col);
    for (let b = 0; b < bins; b += step) {
      draw.fillRect(left + b * col, top - 5, 1, 4);
      draw.fillText(String(binStart(b, bins, 0, n)), left + b * col + 1, top - look.size * 0.9);
    }
  }
  if (ui.state.analysis.tokens.info.causal) { // hatch what the causal mask forbids, so it does not read as "no attention"
    const [from, to] = name === "outgoing" ? [chosen + 1, bins] : [0, chosen]; // whole columns only
    if (to > from) {
      draw.fillStyle = hatchPattern(draw, look.muted);
      draw.globalAlpha = 0.55;
      for (let l = 0; l < layers; l++) draw.fillRect(left + from * col, top + l * layerH, (to - from) * col, heads * row);
      draw.globalAlpha = 1;
    }
  }
  draw.strokeStyle = look.accent; // the chosen token's own column
  draw.lineWidth = 2 * look.line;
  draw.strokeRect(left + chosen * col - 1, top - 2, col + 2, layers * layerH - LAYER_GAP + 4);
  drawLegend(draw, left, top + layers * layerH + 6, Math.min(220, Math.max(120, bins * col)), LEGEND_HEIGHT, SEQUENTIAL,
    ["0", WEIGHT_LABELS[ui.payload.mode], formatNumber(255 * g.scale)], look);
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  const index = tokenIndex(state);
  ui.strip.sync(analysis.tokens.tokens, analysis.tokens.special, index, { sink: sinkSet(state) });
  ui.mode.sync(tokenMode(state.mode));
  const payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, need(state)));
  if (!payload || !changed(ui, [payload, sinkSet(state), state.projector, el.clientWidth])) return;
  ui.payload = payload;
  ui.status.say(isLayerMode(payload.mode) ? "Rows: layers, each its heads summed before the norm (‖Σ_h α_h f_h‖). Columns: the prompt's tokens "
    + "(hatched where a causal mask hides them). Hover for values; click a row to open that layer." : "");
  const look = theme();
  const available = contentWidth(el);
  const sideBySide = available >= SIDE_BY_SIDE;
  ui.grid.classList.toggle("side-by-side", sideBySide);
  const width = sideBySide ? Math.floor((available - 24) / 2) : available;
  const word = `«${displayToken(analysis.tokens.tokens[index])}»`;
  for (const name of Object.keys(PANELS)) {
    ui.panels[name].heading.textContent = PANELS[name].title(word);
    drawPanel(name, payload[name], analysis.tokens.tokens, width, look);
    ui.panels[name].canvas.dataset.token = String(index);
    ui.panels[name].canvas.dataset.mode = payload.mode;
  }
}
