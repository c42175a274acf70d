// Compare view: two prompts on one model. Prompt A is the page's prompt, prompt B the `text2`
// field. A per-head difference map (layers x heads, coloured by the `compare` event's
// difference: mean total-variation distance between the heads' attention rows when both
// prompts have as many tokens, else between thumbnails), the most changed heads, the chosen
// head of A and B side by side with the changed token positions marked, and both model views.
// Data: a second `analyze` stream for B (tokens, overview), then `compare` {key: A, other: B}.
import { binOf, contentWidth, displayToken, drawLegend, formatNumber, prepareCanvas, theme } from "../draw.js";
import { drawGrid, gridKeyMove, gridLayout, gridPointer, publishGrid, rankedList } from "../headgrid.js";
import { SEQUENTIAL, lutColour, unitIndex } from "../palette.js";
import { detailFor, setView, sinkSet } from "../store.js";
import { changed, h, notice, promptForm, statusLine, tokenStrip } from "../ui.js";
import { overviewImage } from "./model.js";

// The gender-bias minimal pair from the BertViz examples.
const PRESET = { text: "The doctor asked the nurse a question. She", text2: "The doctor asked the nurse a question. He" };
const MAP_HEIGHT = 0.5; // of the window height the difference map may take
const MODEL_HEIGHT = 0.55; // of the window height each model grid may take
const HEAD_SIDE = 200; // px of each enlarged head
const LEGEND_H = 10; // px
const RANKED = 8; // heads in the "most changed" list

let ui = null;

function secondRequest(state) {
  return { event: "analyze", fields: { model: state.analysis.model, text: state.text2 } };
}

export function need(state) {
  if (!state.analysis || !state.text2) return null;
  const second = secondRequest(state);
  const entry = detailFor(state, second);
  if (entry?.status !== "ready") return second;
  return [second, { event: "compare", fields: { key: state.analysis.key, other: entry.payload.overview.key } }];
}

function mount(el) {
  const { root: form, input: text2 } = promptForm({
    field: "text2", label: "Prompt B (prompt A is the one above)", testid: "compare-form",
    placeholder: "A second prompt, e.g. the same sentence with one word changed",
    submit: { text: "Compare", control: "compare" },
    example: { text: "Example: “She” vs “He” (replaces prompt A)", control: "preset", onClick: () => setView(PRESET),
      title: `Prompt A becomes “${PRESET.text}” and prompt B “${PRESET.text2}” (Back restores them)` },
  });
  const pick = (index) => setView({ token: index });
  const stripA = tokenStrip("Tokens of prompt A", pick);
  const stripB = tokenStrip("Tokens of prompt B", pick);
  const info = h("p", { className: "view-info" });
  const map = h("canvas", { "data-testid": "compare-difference", tabindex: 0,
    "aria-label": "How much each head's attention differs between the prompts; click a head to compare it" });
  const pair = h("canvas", { "data-testid": "compare-head", "aria-label": "The chosen head on prompt A and on prompt B" });
  const openHead = h("button", { type: "button", className: "quiet", "data-control": "open-head",
    onClick: () => setView({ view: "head", heads: [ui.state.head] }) });
  const ranked = rankedList("changed-heads", (cell) => setView(cell));
  const models = { a: h("canvas", { "data-testid": "compare-model-a" }), b: h("canvas", { "data-testid": "compare-model-b" }) };
  const status = statusLine("Hover a head for its difference; click one to compare it on both prompts.");
  const results = h("div", { className: "compare-results" }, [
    h("div", { className: "compare-strips" }, [
      h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "A" }), stripA.root]),
      h("div", { className: "toolbar token-picker" }, [h("span", { className: "control-label", text: "B" }), stripB.root])]),
    info,
    h("div", { className: "compare-top" }, [
      h("section", {}, [h("h3", { text: "Difference per head (layers × heads)" }), h("div", { className: "canvas-scroll" }, [map])]),
      h("section", {}, [h("h3", { text: "The chosen head on A and B" }), pair, openHead]),
      ranked.root]),
    h("div", { className: "compare-models" }, ["a", "b"].map((side) => h("section", {}, [
      h("h3", { text: `Model view of prompt ${side.toUpperCase()}` }), h("div", { className: "canvas-scroll" }, [models[side]])]))),
  ]);
  el.append(form, h("div", { className: "view-body" }, [results]), status.root);
  ui = { el, text2, stripA, stripB, info, map, pair, openHead, ranked, models, results, status, shownText2: undefined };

  const hover = (canvas, geometry) => gridPointer(canvas, () => ui[geometry], describeHead, (cell) => setView(cell));
  hover(map, "mapGeometry");
  map.addEventListener("keydown", (event) => { // arrows move the chosen head
    const next = gridKeyMove(ui.mapGeometry, event.key, { layer: ui.state.layer, head: ui.state.head });
    if (!next) return;
    event.preventDefault();
    setView(next, { history: "replace" });
  });
  hover(models.a, "modelGeometry");
  hover(models.b, "modelGeometry");
  return ui;
}

function describeHead({ layer, head }) {
  const { difference, ranks } = ui;
  const heads = difference.shape[1];
  const value = difference.data[layer * heads + head];
  return `Layer ${layer}, head ${head}\ndifference ${formatNumber(value)} (rank ${ranks[layer * heads + head] + 1} of ${difference.data.length})`;
}

function drawMap(state, compare, width, look) {
  const [layers, heads] = compare.difference.shape;
  const data = compare.difference.data;
  const top = Math.max(1e-9, ...data);
  const g = gridLayout(layers, heads, width, window.innerHeight * MAP_HEIGHT, look, { maxCell: 40 });
  ui.mapGeometry = g;
  publishGrid(ui.map, g);
  const ctx = prepareCanvas(ui.map, Math.max(g.width, 200), g.height + LEGEND_H + look.size * 2.6);
  drawGrid(ctx, g, look, {
    paint: (layer, head, x, y, cell) => {
      ctx.fillStyle = lutColour(SEQUENTIAL, unitIndex(data[layer * heads + head] / top));
      ctx.fillRect(x, y, cell, cell);
    },
    selected: { layer: state.layer, head: state.head },
  });
  drawLegend(ctx, g.label, g.height + 6, Math.min(260, Math.max(160, g.width - g.label)), LEGEND_H, SEQUENTIAL,
    ["0", "difference", formatNumber(top)], look, "drop");
}

/** One thumbnail of an overview, enlarged, with the changed positions' rows and columns marked. */
function drawThumbnail(ctx, overview, layer, head, x, y, side, changedTokens, n, look) {
  const t = overview.side;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(overviewImage(overview), head * t, layer * t, t, t, x, y, side, side);
  ctx.strokeStyle = look.muted;
  ctx.lineWidth = 1;
  ctx.strokeRect(x - 0.5, y - 0.5, side + 1, side + 1);
  ctx.strokeStyle = look.accent;
  ctx.lineWidth = 1.5 * look.line;
  const cell = side / t;
  for (const position of changedTokens) {
    const bin = binOf(position, t, n);
    ctx.strokeRect(x, y + bin * cell, side, cell); // the changed token as query (row)...
    ctx.strokeRect(x + bin * cell, y, cell, side); // ...and as key (column)
  }
}

function drawPair(state, second, compare, look) {
  const { layer, head } = state;
  const side = Math.min(HEAD_SIDE, Math.floor((contentWidth(ui.el) - 60) / 2));
  const gap = 24;
  const top = look.size * 1.6;
  const ctx = prepareCanvas(ui.pair, 2 * side + gap, top + side + look.size * 1.6);
  const changedTokens = compare.changed_tokens;
  [[state.analysis, "A"], [second, "B"]].forEach(([analysis, name], i) => {
    const x = i * (side + gap);
    ctx.fillStyle = look.ink;
    ctx.font = look.font(0.95, "700");
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(`${name}: layer ${layer}, head ${head}`, x, top - 6);
    drawThumbnail(ctx, analysis.overview, layer, head, x, top, side, changedTokens, analysis.overview.tokens, look);
  });
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.85);
  ctx.fillText(changedTokens.length ? "rows: queries, columns: keys; outlined: the changed tokens" : "rows: queries, columns: keys",
    0, top + side + look.size * 1.2);
  ui.openHead.textContent = `Open layer ${layer}, head ${head} of prompt A in the head view`;
}

function drawModels(state, second, width, look) {
  const half = width >= 900 ? Math.floor((width - 24) / 2) : width;
  const { layers, heads } = state.analysis.overview;
  const g = gridLayout(layers, heads, half, window.innerHeight * MODEL_HEIGHT, look, { minCell: 14, maxCell: 64 });
  ui.modelGeometry = g;
  for (const [side, analysis] of [["a", state.analysis], ["b", second]]) {
    const canvas = ui.models[side];
    const overview = analysis.overview;
    const image = overviewImage(overview);
    const t = overview.side;
    const ctx = prepareCanvas(canvas, g.width, g.height);
    ctx.imageSmoothingEnabled = false;
    drawGrid(ctx, g, look, {
      paint: (layer, head, x, y, cell) => ctx.drawImage(image, head * t, layer * t, t, t, x, y, cell, cell),
      selected: { layer: state.layer, head: state.head },
    });
  }
}

function describeTokens(state, second, compare) {
  const a = state.analysis.tokens.tokens;
  const b = second.tokens.tokens;
  if (!compare.same_length) {
    return `The prompts have different token counts (A ${a.length}, B ${b.length}), so heads are compared by their `
      + "thumbnails and no positions are matched; change a word for a word to compare attention row by row.";
  }
  const changes = compare.changed_tokens.map((i) => `«${displayToken(a[i])}» → «${displayToken(b[i])}» (token ${i})`);
  return `${changes.length ? `Changed: ${changes.join(", ")}.` : "The prompts have the same tokens."} `
    + "Difference: half the summed absolute change of each attention row, averaged over the rows (0 = same, 1 = disjoint).";
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  if (!state.analysis) return;
  if (ui.shownText2 !== state.text2) { // history or a link changed prompt B
    ui.shownText2 = state.text2;
    ui.text2.value = state.text2 ?? "";
  }
  const body = ui.el.querySelector(".view-body");
  ui.results.hidden = true;
  if (!state.text2) return notice(body, "Type a second prompt and press Compare, or try the example.");
  const [secondNeed, compareNeed] = [need(state)].flat();
  const secondEntry = detailFor(state, secondNeed);
  const compareEntry = compareNeed && detailFor(state, compareNeed);
  const failed = [secondEntry, compareEntry].find((entry) => entry?.status === "error");
  if (failed) return notice(body, `The comparison failed: ${failed.error.message}`, "error");
  if (compareEntry?.status !== "ready") {
    const stage = secondEntry?.parts?.progress?.stage;
    return notice(body, compareNeed ? "Comparing the heads…" : `Analysing prompt B${stage ? ` (${stage})` : ""}…`);
  }
  notice(body, "");
  ui.results.hidden = false;
  const second = secondEntry.payload;
  const compare = compareEntry.payload;
  const changedSet = new Set(compare.changed_tokens);
  ui.stripA.sync(state.analysis.tokens.tokens, state.analysis.tokens.special, state.token, { sink: sinkSet(state), changed: changedSet });
  ui.stripB.sync(second.tokens.tokens, second.tokens.special, state.token, { changed: changedSet });
  const order = [...compare.difference.data.keys()].sort((i, j) => compare.difference.data[j] - compare.difference.data[i]);
  const heads = compare.difference.shape[1];
  if (ui.opened !== compare) { // a new comparison opens on its most changed head, unless one was chosen
    ui.opened = compare;
    if (state.layer === 0 && state.head === 0 && order[0] !== 0) {
      setView({ layer: Math.floor(order[0] / heads), head: order[0] % heads }, { history: "replace" });
      return;
    }
  }
  if (!changed(ui, [compare, state.layer, state.head, state.projector, el.clientWidth])) return;
  ui.difference = compare.difference;
  ui.ranks = new Int32Array(order.length);
  order.forEach((index, rank) => { ui.ranks[index] = rank; });
  ui.ranked.sync("Most changed heads", order.slice(0, RANKED).map((index) => ({
    layer: Math.floor(index / heads), head: index % heads, value: formatNumber(compare.difference.data[index]),
    colour: lutColour(SEQUENTIAL, unitIndex(compare.difference.data[index] / compare.difference.data[order[0]])),
  })));
  ui.info.textContent = describeTokens(state, second, compare);
  const look = theme();
  const width = contentWidth(el);
  drawMap(state, compare, Math.min(width, Math.max(360, width * 0.45)), look);
  drawPair(state, second, compare, look);
  drawModels(state, second, width, look);
  ui.map.dataset.changed = compare.changed_tokens.join(",");
  ui.map.dataset.ready = "true";
}
