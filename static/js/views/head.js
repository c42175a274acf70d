// Head view (after BertViz): the prompt's tokens twice, queries on the left and keys on the
// right, joined by lines, one colour per head. It opens on one head (all heads at once blend
// into grey). A line's width and opacity are its weight relative to the strongest link of its
// query token, so a head whose strongest link is 0.2 is as legible as one whose is 1.0; the
// legend says so. Hovering a token isolates its lines and shows every head's weight for it as
// colour blocks beside the other column (as BertViz does); clicking locks it (the lock is view
// state: in the link and sent to followers) and selects it for the other views; the threshold
// hides weak links. Rows are virtualised: only the rows in the scroll window are drawn, lines
// are batched into one path per head and weight step, and links to rows outside the window are
// counted at its edges, so prompts of thousands of tokens stay responsive and nothing leaves
// unseen. Data: the `layer` event, dense [H, N, N] or top-k. In a layer mode (Kobayashi et al.'s
// ||sum_h alpha_h f_h||) the payload holds the layer's one map, drawn in ink whichever heads are chosen.
import { displayToken, drawSinkBadge, fitText, formatNumber, pointerIn, prepareCanvas, sinkBadgeWidth, theme, tokenLabels } from "../draw.js";
import { layerName } from "../layers.js";
import { headColour } from "../palette.js";
import { LAYER_MODES, RAW_MODES } from "../protocol.js";
import { allHeads, detailFor, selectedHeads, setView, sinkSet } from "../store.js";
import { arrived, changed, frameScheduler, h, numberSelect, segmented, statusLine, virtualScroller } from "../ui.js";
import { TracedPath } from "../vector.js";
import { isLayerMode, weightOptions } from "../weights.js";

const ROW_EMS = 1.75; // row height, in label font sizes
const PAD = 10; // px above the first and below the last row
const MAX_LABEL = 220; // px, widest token label (longer ones end in …)
const MIN_GAP = 90; // px between the two token columns, at least...
const MAX_GAP = 460; // ...and at most
const VIEW_FRACTION = 0.68; // of the window height the scrolling canvas may take
const MIN_WEIGHT = 0.01; // links weaker than this are never drawn (invisible anyway)
const ALPHA_STEPS = 20; // weight levels: one batched path per head and level
const MIN_ALPHA = 0.18; // opacity of the weakest drawn link (its row's strongest is 1)
const MAX_WIDTH = 4; // line width of a row's strongest link, in canvas line widths (the weakest is 0.6)
const BLOCK_W = 9; // px of a head's weight block beside a token, at most...
const MIN_BLOCK_W = 3; // ...and at least
const TOP_LINKS = 4; // strongest links named in the status line

const LEGEND = (what) => "Line width and opacity: a link's weight relative to the strongest link of its query token (each "
  + `token's strongest link is drawn full, so weak ${what.weak} stay visible; hover a token for the exact weights). Blocks beside `
  + `a hovered token's partners: ${what.blocks}. ▲ ▼ count links to rows scrolled out of view.`;
const HEAD_LEGEND = LEGEND({ weak: "heads", blocks: "every head's weight, in its colour" });
const LAYER_LEGEND = LEGEND({ weak: "links", blocks: "the layer's weight (its heads summed before the norm, Kobayashi et al. 2020)" });
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
  const mode = segmented("Weights", "mode", weightOptions(LAYER_MODES), (value) => setView({ mode: value }));
  const threshold = h("input", { type: "range", min: 0, max: 1, step: 0.01, name: "threshold", "data-control": "threshold" });
  const thresholdValue = h("output", { className: "threshold-value" });
  const swatches = h("div", { className: "swatches", role: "group", "aria-label": "Heads shown" });
  const all = h("button", { type: "button", className: "quiet", text: "All", "data-control": "heads-all",
    onClick: () => setView({ heads: allHeads(ui.state) }) });
  const none = h("button", { type: "button", className: "quiet", text: "None", onClick: () => setView({ heads: [] }) });
  const summedNote = h("span", { className: "control-label", "data-testid": "heads-summed", hidden: true,
    text: "Layer mode: all heads summed into one map (in ink)" });
  const canvas = h("canvas", { className: "head-canvas", "data-testid": "head-canvas", tabindex: 0,
    "aria-label": "Attention lines between query tokens (left) and key tokens (right)" });
  const schedule = frameScheduler(draw);
  const scroller = virtualScroller(canvas, schedule);
  const status = statusLine("Hover a token to isolate its links; click (or use ↑ ↓) to lock it. Left: queries (attending), right: keys (attended to).");
  const legend = h("p", { className: "view-info head-legend", "data-testid": "head-legend" });
  el.append(
    h("div", { className: "toolbar" }, [layer.root, mode.root,
      h("label", { className: "control" }, [h("span", { text: "Hide links below" }), threshold, thresholdValue])]),
    h("div", { className: "toolbar heads-bar" }, [h("span", { className: "control-label", text: "Heads" }), swatches, all, none, summedNote]),
    h("div", { className: "view-body" }, [scroller.root]),
    status.root, legend,
  );
  ui = { el, layer, mode, threshold, thresholdValue, swatches, all, none, summedNote, legend, canvas, scroller, status, schedule,
    preview: null, lock: null, hover: null, scrollTo: null };

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
    setView({ lock: same ? null : `${hit.side}${hit.index}`, token: hit.index });
  });
  canvas.addEventListener("keydown", (event) => { // arrows walk the locked query token, Escape releases it
    const n = ui.geometry?.n ?? 0;
    if (event.key === "Escape") setView({ lock: null });
    else if ((event.key === "ArrowDown" || event.key === "ArrowUp") && n) {
      event.preventDefault();
      const from = ui.lock?.index ?? ui.state.token ?? -1;
      const index = Math.max(0, Math.min(n - 1, from + (event.key === "ArrowDown" ? 1 : -1)));
      scrollToRow(index);
      setView({ lock: `${ui.lock?.side ?? "q"}${index}`, token: index }, { history: "replace" });
    }
  });
  return ui;
}

/** Scroll the window so that row `index` is in view (a locked token from a link, an arrow key). */
function scrollToRow(index) {
  const g = ui.geometry;
  if (!g) return;
  const rowTop = PAD + index * g.rowH;
  if (rowTop < ui.scroller.top || rowTop + g.rowH > ui.scroller.top + g.height) ui.scroller.root.scrollTop = rowTop - g.height / 2;
}

/** The locked token of a state: {side: "q" | "k", index}, or null. */
function parseLock(lock) {
  return lock ? { side: lock[0], index: Number(lock.slice(1)) } : null;
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

/**
 * Where the columns go: labels (at most MAX_LABEL, less on a narrow screen), the heads' weight
 * blocks outside them, and the gap for the lines between.
 */
function geometryFor(tokens, width, look, ctx, badge, headCount) {
  ctx.font = look.font(1);
  const cap = Math.max(48, Math.min(MAX_LABEL, (width - MIN_GAP) / 2 - 40 - badge));
  const { labels, width: widest } = tokenLabels(ctx, tokens, cap);
  const labelW = widest + 8 + badge; // room for a sink badge beside the label
  const blockW = Math.max(MIN_BLOCK_W, Math.min(BLOCK_W, Math.floor((width - 2 * labelW - MIN_GAP - 24) / (2 * headCount))));
  const blocksW = blockW * headCount + 4;
  const gap = Math.max(MIN_GAP, Math.min(MAX_GAP, width - 2 * (labelW + blocksW) - 24));
  const leftX = Math.max(labelW + blocksW + 6, (width - 2 * labelW - gap) / 2 + labelW);
  const rowH = Math.round(look.size * ROW_EMS);
  const n = tokens.length;
  const height = ui.scroller.size(PAD * 2 + n * rowH, Math.max(320, window.innerHeight * VIEW_FRACTION));
  return { labels, labelW, blockW, leftX, rightX: leftX + gap, rowH, n, height,
    width: Math.max(width, leftX + gap + labelW + blocksW + 6) };
}

/** The strongest stored weight of one query in one head (the 1 of that row's line scale). */
function rowPeak(payload, head, query) {
  let peak = 0;
  eachLink(payload, head, query, (key, w) => {
    peak = Math.max(peak, w);
  });
  return peak;
}

/**
 * Lines to draw, for the focus token or every visible query: paths [head][weight step] ->
 * Path2D, the step being the weight over its query row's strongest; and how many drawn links
 * end on rows above and below the scroll window ({above, below}).
 */
function linkPaths(payload, heads, g, focus, first, last, threshold, scrollTop) {
  const paths = heads.map(() => Array.from({ length: ALPHA_STEPS }, () => null));
  const outside = { above: 0, below: 0 };
  const floor = Math.max(threshold, MIN_WEIGHT);
  const y = (i) => PAD + i * g.rowH + g.rowH / 2 - scrollTop;
  const x1 = g.leftX + 6;
  const x2 = g.rightX - 6;
  const add = (slot, query, key, w, peak) => {
    if (w < floor || !peak) return;
    const step = Math.min(ALPHA_STEPS - 1, Math.floor((w / peak) * ALPHA_STEPS));
    const path = paths[slot][step] ?? (paths[slot][step] = new TracedPath());
    path.moveTo(x1, y(query));
    path.lineTo(x2, y(key));
    const far = focus?.side === "k" ? query : key; // the end away from the focus (or from the visible query)
    if (far < first) outside.above++;
    else if (far > last) outside.below++;
  };
  heads.forEach((head, slot) => {
    if (focus?.side === "k") {
      for (let query = 0; query < g.n; query++) add(slot, query, focus.index, weight(payload, head, query, focus.index), rowPeak(payload, head, query));
      return;
    }
    const from = focus ? focus.index : first;
    const to = focus ? focus.index : last;
    for (let query = from; query <= to; query++) {
      const peak = rowPeak(payload, head, query);
      eachLink(payload, head, query, (key, w) => add(slot, query, key, w, peak));
    }
  });
  return { paths, outside };
}

/** Stroke the batched links in each head's `colour(head)`: width and opacity grow with the weight step. */
function strokeLinks(ctx, paths, heads, look, colour) {
  ctx.lineCap = "round";
  heads.forEach((head, slot) => {
    ctx.strokeStyle = colour(head);
    paths[slot].forEach((path, step) => {
      if (!path) return;
      const level = (step + 0.5) / ALPHA_STEPS;
      ctx.globalAlpha = MIN_ALPHA + (1 - MIN_ALPHA) * level;
      ctx.lineWidth = look.line * (0.6 + (MAX_WIDTH - 0.6) * level);
      ctx.stroke(path);
    });
  });
  ctx.globalAlpha = 1;
}

/**
 * Every head's weight between the focus token and each visible token of the other column, as
 * colour blocks (opacity = the weight) outside that column's labels, as BertViz draws them.
 */
function drawWeightBlocks(ctx, payload, g, focus, first, last, y, look, colour) {
  const heads = payload.heads;
  const other = focus.side === "q" ? "k" : "q";
  for (let i = first; i <= last; i++) {
    for (let head = 0; head < heads; head++) {
      const w = focus.side === "q" ? weight(payload, head, focus.index, i) : weight(payload, head, i, focus.index);
      const x = other === "k" ? g.rightX + g.labelW + 4 + head * g.blockW : g.leftX - g.labelW - 4 - (head + 1) * g.blockW;
      ctx.globalAlpha = 1;
      ctx.strokeStyle = look.faint;
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, y(i) - g.rowH / 2 + 3.5, g.blockW - 1, g.rowH - 7);
      if (w <= 0) continue;
      ctx.globalAlpha = Math.min(1, w);
      ctx.fillStyle = colour(head);
      ctx.fillRect(x, y(i) - g.rowH / 2 + 3, g.blockW, g.rowH - 6);
    }
  }
  ctx.globalAlpha = 1;
}

/** "▲ 12 links above" / "▼ 3 links below" at the window's edges, over the key column. */
function drawOutsideMarks(ctx, outside, g, look) {
  ctx.font = look.font(0.85, "600");
  ctx.fillStyle = look.accent;
  ctx.textAlign = "center";
  const x = (g.leftX + g.rightX) / 2;
  if (outside.above) {
    ctx.textBaseline = "top";
    ctx.fillText(`▲ ${outside.above} link${outside.above === 1 ? "" : "s"} to rows above`, x, 2);
  }
  if (outside.below) {
    ctx.textBaseline = "bottom";
    ctx.fillText(`▼ ${outside.below} link${outside.below === 1 ? "" : "s"} to rows below`, x, g.height - 2);
  }
}

/** The strongest links of the focus token across the shown heads, for the status line. */
function describeFocus(payload, heads, tokens, focus) {
  const links = [];
  for (const head of heads) {
    if (focus.side === "q") eachLink(payload, head, focus.index, (key, w) => links.push([w, key, head]));
    else for (let q = 0; q < tokens.length; q++) links.push([weight(payload, head, q, focus.index), q, head]);
  }
  links.sort((a, b) => b[0] - a[0]);
  const unit = RAW_MODES.includes(payload.mode) ? 255 * (payload.attention ?? payload.values).scale : 1; // back to norm units
  const named = links.slice(0, TOP_LINKS).filter(([w]) => w > 0)
    .map(([w, other, head]) => `«${displayToken(tokens[other])}» ${formatNumber(w * unit)} (${isLayerMode(payload.mode) ? "layer" : `head ${head}`})`);
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
  const g = geometryFor(tokens, ui.scroller.root.clientWidth || ui.el.clientWidth, look, probe, badge, analysis.overview.heads);
  ui.geometry = g;
  if (ui.scrollTo !== null) {
    scrollToRow(ui.scrollTo);
    ui.scrollTo = null;
  }
  ui.canvas.dataset.rows = JSON.stringify({ pad: PAD, rowHeight: g.rowH, queryX: g.leftX, keyX: g.rightX });
  const scrollTop = ui.scroller.top;
  const ctx = prepareCanvas(ui.canvas, g.width, g.height);
  const [first, last] = ui.scroller.rows(PAD, g.rowH, g.n, g.height);
  const y = (i) => PAD + i * g.rowH + g.rowH / 2 - scrollTop;
  const focus = ui.hover ?? ui.lock;
  const payload = ui.payload;
  const summed = isLayerMode(payload?.mode); // the layer's one map stands in for its heads
  const heads = summed ? [0] : selectedHeads(state);
  const colour = summed ? () => look.ink : headColour;
  const threshold = ui.preview ?? state.threshold;

  let outside = { above: 0, below: 0 };
  if (payload && payload.tokens === g.n) {
    const links = linkPaths(payload, heads, g, focus, first, last, threshold, scrollTop);
    strokeLinks(ctx, links.paths, heads, look, colour);
    outside = links.outside;
    if (focus) drawWeightBlocks(ctx, payload, g, focus, first, last, y, look, colour);
  }
  ui.canvas.dataset.outside = `${outside.above},${outside.below}`;

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
  drawOutsideMarks(ctx, outside, g, look);

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
  const summed = isLayerMode(layerMode(state.mode));
  for (const button of ui.swatches.children) {
    button.setAttribute("aria-pressed", String(shown.has(Number(button.dataset.head)) && !summed));
    button.disabled = summed;
  }
  ui.all.disabled = summed;
  ui.none.disabled = summed;
  ui.summedNote.hidden = !summed;
  ui.legend.textContent = summed ? LAYER_LEGEND : HEAD_LEGEND;
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  if (ui.key !== analysis.key) { // a new prompt: forget the hovered token
    ui.key = analysis.key;
    ui.hover = null;
  }
  const lock = parseLock(state.lock);
  if (lock && lock.index !== ui.lock?.index) ui.scrollTo = lock.index; // e.g. opened from a link: bring it into view
  ui.lock = lock;
  ui.canvas.dataset.locked = lock ? `${lock.side}:${lock.index}` : "";
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
  ui.canvas.dataset.mode = ui.payload?.mode ?? "";
  if (changed(ui, [analysis, ui.payload, state.heads, state.head, state.threshold, state.token, state.lock, state.projector, el.clientWidth])) {
    ui.schedule();
  }
}
