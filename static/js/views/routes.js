// Information-flow routes (after Ferrando & Voita 2024, "Information Flow Routes: Automatically
// Interpreting Language Models at Scale"): the edges that matter for one token's final vector,
// traced from the top of the model back to the inputs and pruned at a threshold. Tokens across,
// layers up: each layer has two levels, after its attention and after its feed-forward block.
// Attention edges (blue) link two tokens; residual edges (grey) and feed-forward edges (orange)
// stay in one column. Click an attention edge to open its strongest head in the head view.
// Data: the `routes` request (one forward pass on demand, then cached): edges as arrays [E].
import {
  contentWidth, displayToken, fitText, formatNumber, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme, tokenLabels,
} from "../draw.js";
import { layerName } from "../layers.js";
import { detailFor, setView, sinkSet, tokenIndex } from "../store.js";
import { arrived, changed, h, statusLine, tokenStrip } from "../ui.js";

const DEFAULT_TAU = 0.04; // the paper's threshold; the store keeps null for it
const KINDS = ["attention", "attention residual", "feed-forward", "feed-forward residual"]; // edge kinds, wire order
const COLOURS = ["#0072B2", "#8a8f96", "#E69F00", "#8a8f96"]; // Okabe-Ito blue and orange; residuals grey
const LEVEL_MIN = 7; // px between two levels, at least...
const LEVEL_MAX = 26; // ...and at most
const GRAPH_H = 640; // px the levels aim for
const MIN_COL = 6; // px per token column
const MAX_COL = 110; // px per token column, at most
const MAX_LABEL = 100; // px of a token label
const LABEL_ANGLE = Math.PI / 3;
const HIT_PX = 5; // px from an edge that counts as on it
const FF_OFFSET = 0.22; // of a column: the feed-forward edge beside the residual one
const TOP_RADIUS = 6; // px of the dot on the token the routes lead to

let ui = null;

function tauOf(state) {
  return state.tau ?? DEFAULT_TAU;
}

export function need(state) {
  if (!state.analysis) return null;
  return { event: "routes", fields: { key: state.analysis.key, token: tokenIndex(state), threshold: tauOf(state) } };
}

function mount(el) {
  const strip = tokenStrip("Route to", (index) => setView({ token: index }));
  const slider = h("input", { type: "range", min: 0.005, max: 0.3, step: 0.005, name: "tau", "data-control": "tau" });
  const value = h("output", { className: "threshold-value" });
  slider.addEventListener("input", () => { value.textContent = Number(slider.value).toFixed(3); });
  slider.addEventListener("change", () => setView({ tau: Number(slider.value) === DEFAULT_TAU ? null : Number(slider.value) }));
  const info = h("p", { className: "view-info" });
  const canvas = h("canvas", { "data-testid": "routes-graph", tabindex: 0,
    "aria-label": "Information-flow routes: tokens across, layers up; click an attention edge to open its head" });
  const status = statusLine("Hover an edge for its importance; click an attention edge to open its strongest head.");
  el.append(
    h("div", { className: "toolbar" }, [h("label", { className: "control" }, [h("span", { text: "Keep edges above" }), slider, value])]),
    h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "Route to" }), strip.root]),
    info, h("div", { className: "view-body" }, [h("div", { className: "canvas-scroll" }, [canvas])]), status.root);
  ui = { el, strip, slider, value, info, canvas, status, geometry: null };
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", hideTooltip);
  canvas.addEventListener("click", (event) => {
    const edge = edgeAt(pointerIn(canvas, event));
    if (edge && edge.kind === 0) {
      hideTooltip();
      setView({ view: "head", layer: edge.layer, head: edge.head, heads: [edge.head], token: edge.target });
    }
  });
  return ui;
}

/** Edge i of the payload as an object. */
function edgeOf(edges, i) {
  return { kind: edges.kind.data[i], layer: edges.layer.data[i], source: edges.source.data[i], target: edges.target.data[i],
    weight: edges.weight.data[i], head: edges.head.data[i], share: edges.head_share.data[i] };
}

/** Canvas ends of an edge: attention from level 2l to 2l + 1, feed-forward from 2l + 1 to 2l + 2. */
function ends(g, edge) {
  const from = edge.kind < 2 ? 2 * edge.layer : 2 * edge.layer + 1;
  const shift = edge.kind === 2 ? FF_OFFSET * g.col : 0;
  return [g.x(edge.source) + shift, g.y(from), g.x(edge.target) + shift, g.y(from + 1)];
}

function segmentDistance(px, py, [x0, y0, x1, y1]) {
  const dx = x1 - x0;
  const dy = y1 - y0;
  const t = Math.max(0, Math.min(1, ((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy || 1)));
  return Math.hypot(px - (x0 + t * dx), py - (y0 + t * dy));
}

function edgeAt(point) {
  const g = ui.geometry;
  if (!g) return null;
  let best = null;
  let bestDistance = HIT_PX;
  for (let i = 0; i < g.count; i++) {
    const edge = edgeOf(ui.payload.edges, i);
    const distance = segmentDistance(point.x, point.y, ends(g, edge));
    if (distance < bestDistance || (distance === bestDistance && best && edge.weight > best.weight)) {
      best = edge;
      bestDistance = distance;
    }
  }
  return best;
}

function hover(event) {
  const edge = edgeAt(pointerIn(ui.canvas, event));
  if (!edge) return hideTooltip();
  const tokens = ui.state.analysis.tokens.tokens;
  const word = (i) => `«${displayToken(tokens[i])}»`;
  const where = layerName(ui.state.analysis.tokens.info, edge.layer, true);
  const head = edge.kind === 0 ? `, strongest head ${edge.head} (${(100 * edge.share).toFixed(0)}% of the edge)` : "";
  const pair = edge.kind === 0 ? `${word(edge.source)} → ${word(edge.target)}` : word(edge.target);
  return showTooltip(`${where}: ${KINDS[edge.kind]}${head}\n${pair}: importance ${formatNumber(edge.weight)}`, event.clientX, event.clientY);
}

function layout(width, look, payload) {
  const n = payload.tokens;
  const levels = 2 * payload.layers + 1;
  const left = look.size * 5.5;
  const col = Math.max(MIN_COL, Math.min(MAX_COL, Math.floor((width - left - 12) / n)));
  const level = Math.max(LEVEL_MIN, Math.min(LEVEL_MAX, Math.floor(GRAPH_H / levels)));
  const ctx = ui.canvas.getContext("2d");
  ctx.font = look.font(0.9);
  const labelled = col >= look.size * 1.05;
  const { labels, width: widest } = tokenLabels(ctx, ui.state.analysis.tokens.tokens, MAX_LABEL);
  const top = look.size * 1.5;
  const bottom = top + (levels - 1) * level;
  const height = bottom + (labelled ? widest * Math.sin(LABEL_ANGLE) + look.size * 2 : look.size * 3);
  return {
    n, levels, left, col, level, top, bottom, labelled, labels, height, count: payload.edges.kind.shape[0],
    x: (token) => left + (token + 0.5) * col,
    y: (lvl) => bottom - lvl * level,
  };
}

function drawAxes(draw, g, look, payload) {
  const info = ui.state.analysis.tokens.info;
  draw.font = look.font(0.85);
  draw.textAlign = "right";
  draw.textBaseline = "middle";
  const every = Math.ceil((look.size * 1.2) / (2 * g.level));
  for (let l = 0; l < payload.layers; l++) {
    draw.fillStyle = look.faint;
    draw.fillRect(g.left, Math.round(g.y(2 * l + 2)), g.n * g.col, 1);
    if (l % every === 0 || l === payload.layers - 1) {
      draw.fillStyle = look.muted;
      draw.fillText(layerName(info, l), g.left - 6, g.y(2 * l + 1.5));
    }
  }
  draw.fillStyle = look.muted;
  draw.fillText("inputs", g.left - 6, g.y(0));
  const chosen = payload.token;
  const sinks = sinkSet(ui.state);
  draw.textAlign = "left";
  if (g.labelled) {
    for (let c = 0; c < g.n; c++) {
      draw.save();
      draw.translate(g.x(c), g.bottom + look.size * 0.8);
      draw.rotate(LABEL_ANGLE);
      draw.fillStyle = c === chosen ? look.accent : sinks.has(c) ? look.muted : look.ink;
      draw.font = look.font(0.9, c === chosen ? "700" : "400");
      draw.fillText(fitText(draw, g.labels[c], MAX_LABEL), 0, 0);
      draw.restore();
    }
  } else {
    const step = Math.ceil((look.size * 3) / g.col);
    for (let c = 0; c < g.n; c += step) draw.fillText(String(c), g.x(c) - 3, g.bottom + look.size);
  }
}

function drawEdges(draw, g, look, payload) {
  const order = Array.from({ length: g.count }, (_, i) => i).sort((a, b) => payload.edges.weight.data[a] - payload.edges.weight.data[b]);
  draw.lineCap = "round";
  for (const i of order) { // weakest first, so strong edges end on top
    const edge = edgeOf(payload.edges, i);
    const [x0, y0, x1, y1] = ends(g, edge);
    draw.strokeStyle = COLOURS[edge.kind];
    draw.globalAlpha = 0.35 + 0.65 * Math.min(1, edge.weight);
    draw.lineWidth = look.line * (0.8 + 5 * Math.min(1, edge.weight));
    draw.beginPath();
    draw.moveTo(x0, y0);
    draw.lineTo(x1, y1);
    draw.stroke();
  }
  draw.globalAlpha = 1;
  draw.fillStyle = look.accent; // the token the routes lead to
  draw.beginPath();
  draw.arc(g.x(payload.token), g.y(g.levels - 1), Math.min(TOP_RADIUS, Math.max(3, g.col / 4)), 0, 2 * Math.PI);
  draw.fill();
}

/** A point on the widest attention edge, a third of the way up, with its layer and head (for tests and tours). */
function probe(g, payload) {
  let best = null;
  for (let i = 0; i < g.count; i++) {
    const edge = edgeOf(payload.edges, i);
    const [x0, y0, x1, y1] = ends(g, edge);
    if (edge.kind === 0 && (!best || Math.abs(x1 - x0) > best.span)) {
      best = { span: Math.abs(x1 - x0), x: x0 + (x1 - x0) / 3, y: y0 + (y1 - y0) / 3, layer: edge.layer, head: edge.head };
    }
  }
  return best;
}

function describe(payload, count) {
  const attention = Array.from(payload.edges.kind.data).filter((kind) => kind === 0).length;
  const reach = new Set(Array.from(payload.edges.source.data).filter((_, i) => payload.edges.kind.data[i] === 0 && payload.edges.layer.data[i] === 0));
  const norm = payload.post_ln ? "each sum split through its layer norm (post-LN)" : "each block's output as added to the stream (pre-LN)";
  return `${count} edges above ${payload.threshold} (${attention} between tokens); ${reach.size} input tokens feed the route through `
    + `the first layer's attention. Importance: proximity of each term to its sum, ${norm}.`;
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  const index = tokenIndex(state);
  ui.strip.sync(analysis.tokens.tokens, analysis.tokens.special, index, { sink: sinkSet(state) });
  ui.slider.value = String(tauOf(state));
  ui.value.textContent = tauOf(state).toFixed(3);
  const payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, need(state)),
    "Running the model once more to weigh every edge…");
  if (!payload || !changed(ui, [payload, sinkSet(state), state.projector, el.clientWidth])) return;
  ui.payload = payload;
  const look = theme();
  const width = contentWidth(el);
  const g = layout(width, look, payload);
  ui.geometry = g;
  const draw = prepareCanvas(ui.canvas, Math.max(width, g.left + g.n * g.col + 12), g.height);
  drawAxes(draw, g, look, payload);
  drawEdges(draw, g, look, payload);
  ui.info.textContent = describe(payload, g.count);
  Object.assign(ui.canvas.dataset, { token: String(payload.token), edges: String(g.count), threshold: String(payload.threshold),
    probe: JSON.stringify(probe(g, payload)) });
}
