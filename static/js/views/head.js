// Head view (after BertViz): the prompt's tokens twice, queries on the left and keys on the
// right, joined by lines whose opacity is the attention weight, one colour per head. Hovering
// a token isolates its lines; clicking locks it (and selects it for the other views); the
// threshold hides weak links. Rows are virtualised: only the rows in the scroll window are
// drawn, and lines are batched into one path per head and opacity step, so prompts of
// thousands of tokens stay responsive. Data: the `layer` event, dense [H, N, N] or top-k.
import { displayToken, drawSinkBadge, fitText, formatNumber, pointerIn, prepareCanvas, sinkBadgeWidth, theme, tokenLabels } from "../draw.js";
import { layerName } from "../layers.js";
import { headColour } from "../palette.js";
import { LAYER_MODES } from "../protocol.js";
import { detailFor, selectedHeads, setView, sinkSet } from "../store.js";
import { arrived, changed, frameScheduler, h, numberSelect, segmented, statusLine, virtualScroller } from "../ui.js";

const ROW_EMS = 1.75; // row height, in label font sizes
const PAD = 10; // px above the first and below the last row
const MAX_LABEL = 220; // px, widest token label (longer ones end in …)
const MIN_GAP = 160; // px between the two token columns, at least...
const MAX_GAP = 460; // ...and at most
const VIEW_FRACTION = 0.68; // of the window height the scrolling canvas may take
const MIN_WEIGHT = 0.01; // links weaker than this are never drawn (invisible anyway)
const ALPHA_STEPS = 20; // opacity levels: one batched path per head and level
const TOP_LINKS = 4; // strongest links named in the status line

let ui = null;

function layerMode(mode) {
  return LAYER_MODES.includes(mode) ? mode : "attention";
}

export function need(state) {
  if (!state.analysis) return null;
  return { event: "layer", fields: { key: state.analysis.key, layer: state.layer, mode: layerMode(state.mode) } };
}

/** Call visit(key, weight) for each stored link of one query in one head. */
function eachLink(payload, head, query, visit) {
  const n = payload.tokens;
  if (payload.format === "dense") {
    const data = payload.attention.data;
    const base = (head * n + query) * n;
    for (let key = 0; key < n; key++) if (data[base + key]) visit(key, data[base + key] / 255);
  } else {
    const { k } = payload;
    const base = (head * n + query) * k;
    for (let i = 0; i < k; i++) visit(payload.indices.data[base + i], payload.values.data[base + i] / 255);
  }
}

/** The weight from `query` to `key` in one head (0 where a top-k payload has no link). */
function weight(payload, head, query, key) {
  const n = payload.tokens;
  if (payload.format === "dense") return payload.attention.data[(head * n + query) * n + key] / 255;
  const base = (head * n + query) * payload.k;
  for (let i = 0; i < payload.k; i++) if (payload.indices.data[base + i] === key) return payload.values.data[base + i] / 255;
  return 0;
}

function mount(el) {
  const layer = numberSelect("Layer", "layer", (value) => setView({ layer: value }));
  const mode = segmented("Weights", "mode", [
    { value: "attention", text: "Attention", title: "softmax attention weights" },
    { value: "value", text: "Value-weighted", title: "attention × ‖value‖, renormalised per query" },
  ], (value) => setView({ mode: value }));
  const threshold = h("input", { type: "range", min: 0, max: 1, step: 0.01, name: "threshold", "data-control": "threshold" });
  const thresholdValue = h("output", { className: "threshold-value" });
  const swatches = h("div", { className: "swatches", role: "group", "aria-label": "Heads shown" });
  const all = h("button", { type: "button", className: "quiet", text: "All", onClick: () => setView({ heads: null }) });
  const none = h("button", { type: "button", className: "quiet", text: "None", onClick: () => setView({ heads: [] }) });
  const canvas = h("canvas", { className: "head-canvas", "data-testid": "head-canvas", tabindex: 0,
    "aria-label": "Attention lines between query tokens (left) and key tokens (right)" });
  const schedule = frameScheduler(draw);
  const scroller = virtualScroller(canvas, schedule);
  const status = statusLine("Hover a token to isolate its links; click (or use ↑ ↓) to lock it. Left: queries (attending), right: keys (attended to).");
  el.append(
    h("div", { className: "toolbar" }, [layer.root, mode.root,
      h("label", { className: "control" }, [h("span", { text: "Hide links below" }), threshold, thresholdValue])]),
    h("div", { className: "toolbar heads-bar" }, [h("span", { className: "control-label", text: "Heads" }), swatches, all, none]),
    h("div", { className: "view-body" }, [scroller.root]),
    status.root,
  );
  ui = { el, layer, mode, threshold, thresholdValue, swatches, canvas, scroller, status, schedule,
    preview: null, lock: null, hover: null };

  threshold.addEventListener("input", () => { // preview while dragging; one history entry on release
    ui.preview = Number(threshold.value);
    thresholdValue.textContent = ui.preview.toFixed(2);
    schedule();
  });
  threshold.addEventListener("change", () => {
    const value = Number(threshold.value);
    ui.preview = null;
    setView({ threshold: value });
  });
  swatches.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-head]");
    if (!button) return;
    const head = Number(button.dataset.head);
    const current = selectedHeads(ui.state);
    const heads = event.shiftKey || event.altKey ? [head]
      : current.includes(head) ? current.filter((x) => x !== head) : [...current, head];
    setView({ heads, head: current.includes(head) && !event.shiftKey ? ui.state.head : head });
  });
  canvas.addEventListener("mousemove", (event) => setHover(hitToken(pointerIn(canvas, event))));
  canvas.addEventListener("mouseleave", () => setHover(null));
  canvas.addEventListener("click", (event) => {
    const hit = hitToken(pointerIn(canvas, event));
    if (!hit) return;
    const same = ui.lock && ui.lock.side === hit.side && ui.lock.index === hit.index;
    ui.lock = same ? null : hit;
    ui.canvas.dataset.locked = ui.lock ? `${hit.side}:${hit.index}` : "";
    if (!setView({ token: hit.index })) ui.schedule();
  });
  canvas.addEventListener("keydown", (event) => { // arrows walk the locked query token, Escape releases it
    const n = ui.geometry?.n ?? 0;
    if (event.key === "Escape") ui.lock = null;
    else if ((event.key === "ArrowDown" || event.key === "ArrowUp") && n) {
      event.preventDefault();
      const from = ui.lock?.index ?? ui.state.token ?? -1;
      const index = Math.max(0, Math.min(n - 1, from + (event.key === "ArrowDown" ? 1 : -1)));
      ui.lock = { side: ui.lock?.side ?? "q", index };
      const rowTop = PAD + index * ui.geometry.rowH;
      if (rowTop < ui.scroller.top || rowTop + ui.geometry.rowH > ui.scroller.top + ui.geometry.height) {
        ui.scroller.root.scrollTop = rowTop - ui.geometry.height / 2;
      }
      setView({ token: index }, { history: "replace" });
    } else return;
    ui.canvas.dataset.locked = ui.lock ? `${ui.lock.side}:${ui.lock.index}` : "";
    ui.schedule();
  });
  return ui;
}

function hitToken(point) {
  const g = ui.geometry;
  if (!g) return null;
  const index = Math.floor((point.y + ui.scroller.top - PAD) / g.rowH);
  if (index < 0 || index >= g.n) return null;
  if (point.x >= g.leftX - g.labelW - 12 && point.x <= g.leftX + 16) return { side: "q", index };
  if (point.x >= g.rightX - 16 && point.x <= g.rightX + g.labelW + 12) return { side: "k", index };
  return null;
}

function setHover(hit) {
  const value = hit ? `${hit.side}:${hit.index}` : "";
  ui.canvas.style.cursor = hit ? "pointer" : "default";
  if (ui.canvas.dataset.hover === value) return;
  ui.canvas.dataset.hover = value;
  ui.hover = hit;
  ui.schedule();
}

function geometryFor(tokens, width, look, ctx, badge) {
  ctx.font = look.font(1);
  const { labels, width: widest } = tokenLabels(ctx, tokens, MAX_LABEL);
  const labelW = widest + 8 + badge; // room for a sink badge beside the label
  const gap = Math.max(MIN_GAP, Math.min(MAX_GAP, width - 2 * labelW - 40));
  const leftX = Math.max(labelW + 12, (width - 2 * labelW - gap) / 2 + labelW);
  const rowH = Math.round(look.size * ROW_EMS);
  const n = tokens.length;
  const height = ui.scroller.size(PAD * 2 + n * rowH, Math.max(320, window.innerHeight * VIEW_FRACTION));
  return { labels, labelW, leftX, rightX: leftX + gap, rowH, n, height, width: Math.max(width, leftX + gap + labelW + 12) };
}

/** Lines to draw: [head][alpha step] -> Path2D, for the focus token or every visible query. */
function linkPaths(payload, heads, g, focus, first, last, threshold, scrollTop) {
  const paths = heads.map(() => Array.from({ length: ALPHA_STEPS }, () => null));
  const floor = Math.max(threshold, MIN_WEIGHT);
  const y = (i) => PAD + i * g.rowH + g.rowH / 2 - scrollTop;
  const x1 = g.leftX + 6;
  const x2 = g.rightX - 6;
  const add = (slot, query, key, w) => {
    if (w < floor) return;
    const step = Math.min(ALPHA_STEPS - 1, Math.floor(w * ALPHA_STEPS));
    const path = paths[slot][step] ?? (paths[slot][step] = new Path2D());
    path.moveTo(x1, y(query));
    path.lineTo(x2, y(key));
  };
  heads.forEach((head, slot) => {
    if (focus?.side === "k") {
      for (let query = 0; query < g.n; query++) add(slot, query, focus.index, weight(payload, head, query, focus.index));
      return;
    }
    const from = focus ? focus.index : first;
    const to = focus ? focus.index : last;
    for (let query = from; query <= to; query++) eachLink(payload, head, query, (key, w) => add(slot, query, key, w));
  });
  return paths;
}

/** The strongest links of the focus token across the shown heads, for the status line. */
function describeFocus(payload, heads, tokens, focus) {
  const links = [];
  for (const head of heads) {
    if (focus.side === "q") eachLink(payload, head, focus.index, (key, w) => links.push([w, key, head]));
    else for (let q = 0; q < tokens.length; q++) links.push([weight(payload, head, q, focus.index), q, head]);
  }
  links.sort((a, b) => b[0] - a[0]);
  const named = links.slice(0, TOP_LINKS).filter(([w]) => w > 0)
    .map(([w, other, head]) => `«${displayToken(tokens[other])}» ${formatNumber(w)} (head ${head})`);
  const who = `«${displayToken(tokens[focus.index])}» (token ${focus.index})`;
  return focus.side === "q" ? `${who} attends most to ${named.join(", ") || "nothing above the threshold"}`
    : `${who} is attended most by ${named.join(", ") || "nothing above the threshold"}`;
}

function draw() {
  const state = ui.state;
  const analysis = state.analysis;
  if (!analysis) return;
  const tokens = analysis.tokens.tokens;
  const special = analysis.tokens.special;
  const look = theme();
  const probe = ui.canvas.getContext("2d");
  const sinks = sinkSet(state);
  const badge = sinks.size ? sinkBadgeWidth(probe, look) : 0;
  const g = geometryFor(tokens, ui.scroller.root.clientWidth || ui.el.clientWidth, look, probe, badge);
  ui.geometry = g;
  ui.canvas.dataset.rows = JSON.stringify({ pad: PAD, rowHeight: g.rowH, queryX: g.leftX, keyX: g.rightX });
  const scrollTop = ui.scroller.top;
  const ctx = prepareCanvas(ui.canvas, g.width, g.height);
  const [first, last] = ui.scroller.rows(PAD, g.rowH, g.n, g.height);
  const y = (i) => PAD + i * g.rowH + g.rowH / 2 - scrollTop;
  const focus = ui.hover ?? ui.lock;
  const heads = selectedHeads(state);
  const payload = ui.payload;
  const threshold = ui.preview ?? state.threshold;

  if (payload && payload.tokens === g.n) {
    const paths = linkPaths(payload, heads, g, focus, first, last, threshold, scrollTop);
    ctx.lineWidth = 2 * look.line;
    ctx.lineCap = "round";
    heads.forEach((head, slot) => {
      ctx.strokeStyle = headColour(head);
      paths[slot].forEach((path, step) => {
        if (!path) return;
        ctx.globalAlpha = Math.min(1, (step + 0.5) / ALPHA_STEPS + 0.06);
        ctx.stroke(path);
      });
    });
    ctx.globalAlpha = 1;
  }

  const decoderStart = analysis.tokens.info.segments?.decoder[0];
  if (decoderStart) drawSegmentRule(ctx, g, PAD + decoderStart * g.rowH - scrollTop, look);

  ctx.font = look.font(1);
  ctx.textBaseline = "middle";
  const selected = state.token;
  for (let i = first; i <= last; i++) {
    for (const side of ["q", "k"]) {
      const isFocus = focus && focus.side === side && focus.index === i;
      const text = fitText(ctx, g.labels[i], g.labelW - 8 - badge);
      const x = side === "q" ? g.leftX - 6 : g.rightX + 6;
      const width = ctx.measureText(text).width;
      const boxX = side === "q" ? x - width - 4 : x - 4;
      if (isFocus) {
        ctx.fillStyle = look.ink;
        ctx.fillRect(boxX, y(i) - g.rowH / 2 + 2, width + 8, g.rowH - 4);
      } else if (i === selected) {
        ctx.fillStyle = look.accent;
        ctx.fillRect(boxX, y(i) + g.rowH / 2 - 4, width + 8, 2);
      }
      ctx.fillStyle = isFocus ? look.bg : special[i] ? look.muted : look.ink;
      ctx.font = look.font(1, isFocus ? "700" : "400");
      ctx.textAlign = side === "q" ? "right" : "left";
      ctx.fillText(text, x, y(i));
      ctx.font = look.font(1);
      if (sinks.has(i)) drawSinkBadge(ctx, side === "q" ? boxX - 3 : boxX + width + 11, y(i), look, side === "q" ? "right" : "left");
    }
  }

  if (!heads.length) ui.status.say("No heads selected: pick heads with the coloured buttons above.");
  else if (focus && payload) ui.status.say(describeFocus(payload, heads, tokens, focus) + (ui.lock ? " · locked (click again to release)" : ""));
  else ui.status.say("");
}

/** An encoder-decoder record's boundary: source tokens above the rule, the decoder's below. */
function drawSegmentRule(ctx, g, y, look) {
  ctx.strokeStyle = look.muted;
  ctx.lineWidth = look.line;
  ctx.setLineDash([4, 4]);
  for (const [from, to] of [[g.leftX - g.labelW, g.leftX], [g.rightX, g.rightX + g.labelW]]) {
    ctx.beginPath();
    ctx.moveTo(from, y);
    ctx.lineTo(to, y);
    ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.8);
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  ctx.fillText("source ↑", g.rightX + g.labelW + 6, y - 2);
  ctx.textBaseline = "top";
  ctx.fillText("decoder ↓", g.rightX + g.labelW + 6, y + 2);
}

function syncSwatches(state) {
  const count = state.analysis.overview.heads;
  if (ui.swatches.childElementCount !== count) {
    ui.swatches.replaceChildren(...Array.from({ length: count }, (_, head) => {
      const chip = h("span", { className: "chip" });
      chip.style.background = headColour(head);
      return h("button", { type: "button", className: "swatch", "data-head": head,
        title: `head ${head} (shift-click: only this head)` }, [chip, String(head)]);
    }));
  }
  const shown = new Set(selectedHeads(state));
  for (const button of ui.swatches.children) button.setAttribute("aria-pressed", String(shown.has(Number(button.dataset.head))));
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  if (ui.key !== analysis.key) { // a new prompt: forget the locked token
    ui.key = analysis.key;
    ui.lock = null;
    ui.hover = null;
    ui.canvas.dataset.locked = "";
  }
  ui.layer.sync(analysis.overview.layers, state.layer, (i) => layerName(analysis.tokens.info, i));
  ui.mode.sync(layerMode(state.mode));
  if (ui.preview === null) {
    ui.threshold.value = String(state.threshold);
    ui.thresholdValue.textContent = state.threshold.toFixed(2);
  }
  syncSwatches(state);
  ui.payload = arrived(ui.el.querySelector(".view-body"), detailFor(state, need(state)), `Loading layer ${state.layer}…`);
  ui.canvas.dataset.layer = String(state.layer);
  ui.canvas.dataset.ready = String(Boolean(ui.payload));
  if (changed(ui, [analysis, ui.payload, state.heads, state.threshold, state.token, state.projector, el.clientWidth])) ui.schedule();
}
