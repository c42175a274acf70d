// Global view (AttentionViz, Yeh et al. 2023): every head's queries and keys over a whole corpus,
// jointly embedded in 2-D (docs/analyses.md "Global view"). All L x H heads as small scatter
// plots (a sample of each head's PCA points), coloured by query/key, by the token's position in
// its text, or by its category; a tile opens its head in detail: every point, zoom (wheel) and
// pan (drag), hover for the token in its text, a search that highlights a token's points, a click
// that draws lines from that token's query to the keys it attends to most in its own text, and a
// button that opens that text at that token in the head view.
// The corpus is the built-in one, the prompts this browser analysed with the model ("My
// analyses": the page sends their keys, `atlas_corpus`, and goes on by the corpus id the server
// answers), or, where the operator turns it on, every prompt analysed on this server; an atlas
// not computed yet is computed by the server in the background, and the view shows how far it has
// come, asking again every POLL_MS until it is there.
// Data: `atlas_corpus` (a corpus of my analyses), the `atlas` answer (the corpus's tokens and
// every tile) and `atlas_head` (one head).
import { contentWidth, displayToken, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme } from "../draw.js";
import { drawGrid, gridCellAt, gridLayout } from "../headgrid.js";
import { SEQUENTIAL, lutColour, unitIndex } from "../palette.js";
import { myAnalyses } from "../myanalyses.js";
import { decodeStrings } from "../protocol.js";
import { limits } from "../settings.js";
import { detailFor, detailId, dropDetail, putDetail, setView } from "../store.js";
import { arrived, h, layerHeadSelects, notice, segmented, statusLine } from "../ui.js";

const QUERY_COLOUR = "#0072B2"; // Okabe-Ito blue
const KEY_COLOUR = "#D55E00"; // Okabe-Ito vermilion
const CATEGORY_COLOURS = { special: "#8C8C8C", first: "#CC79A7", punctuation: "#E69F00", word: "#009E73", continuation: "#56B4E9" };
const POSITION_FLOOR = 0.25; // of the sequential ramp for position 0 (its start is white, invisible on the page)
const HEIGHT_FRACTION = 0.72; // of the window height the tiles try to fit in
const TILE_MIN = 40; // px, smallest tile side
const TILE_MAX = 128; // px, largest tile side
const TILE_POINT = 1.6; // px, side of a point in a tile
const TILE_MARGIN = 4; // px between a tile's edge and its outermost points
const DETAIL_POINT = 3; // px, side of a point in the detail
const MATCH_POINT = 2.5; // times the side, for a point of the searched token
const DIM_ALPHA = 0.18; // opacity of the points a search leaves out
const HIT_RADIUS = 8; // px, how near the pointer a point is found
const ZOOM_STEP = 1.25; // per wheel notch
const MAX_ZOOM = 200;
const LINE_WIDTH = 6; // px of a line to a key with all of the attention
const DRAG_PX = 4; // a press that moves less than this is a click
const POLL_MS = 1500; // ms between two asks while the server computes the atlas
const PROGRESS_WIDTH = "min(100%, 32rem)"; // of the bar while it does
const CORPUS_NAMES = { builtin: "the built-in corpus", analysed: "the prompts analysed on this server", mine: "your analyses" };
const SKIPPED = { not_cached: "no longer on the server", other_model: "of another model or run", too_long: "too long for a corpus" };

let ui = null;
const corpora = new WeakMap(); // atlas payload -> its corpus, decoded once
const polled = new WeakSet(); // `computing` answers whose next ask is scheduled
const named = new Map(); // corpus id -> the `atlas_corpus` answer that named it (what it left out)

export function need(state) {
  if (!state.analysis) return null;
  if (state.corpus === "mine") {
    const keys = myAnalyses(state.analysis.model);
    return keys.length ? [{ event: "atlas_corpus", fields: { model: state.analysis.model, keys } }] : [];
  }
  const fields = { model: state.analysis.model, corpus: state.corpus ?? "builtin" };
  const atlas = { event: "atlas", fields };
  if (state.focus !== "head") return [atlas];
  return [atlas, { event: "atlas_head", fields: { ...fields, layer: state.layer, head: state.head, method: state.projection ?? "pca" } }];
}

/** The corpus of an atlas payload: texts, tokens and each token's text, position, category. */
function corpusOf(payload) {
  if (!corpora.has(payload)) {
    const tokens = decodeStrings(payload.tokens);
    corpora.set(payload, {
      texts: decodeStrings(payload.texts), tokens, plain: tokens.map((token) => token.trim().toLowerCase()),
      starts: payload.starts.data, sentence: payload.sentence.data, position: payload.position.data, spans: payload.spans.data,
      category: payload.category.data, count: tokens.length, colours: new Map(),
    });
  }
  return corpora.get(payload);
}

/** [query colours, key colours] of every token for a colouring (cached per corpus). */
function colours(corpus, payload, colour) {
  const mode = colour ?? "qk";
  if (!corpus.colours.has(mode)) {
    const pick = (i) => {
      if (mode === "category") return CATEGORY_COLOURS[payload.categories[corpus.category[i]]];
      const s = corpus.sentence[i];
      const length = corpus.starts[s + 1] - corpus.starts[s];
      const where = length > 1 ? corpus.position[i] / (length - 1) : 0;
      return lutColour(SEQUENTIAL, unitIndex(POSITION_FLOOR + (1 - POSITION_FLOOR) * where));
    };
    const own = mode === "qk" ? null : Array.from({ length: corpus.count }, (_, i) => pick(i));
    corpus.colours.set(mode, [own ?? new Array(corpus.count).fill(QUERY_COLOUR), own ?? new Array(corpus.count).fill(KEY_COLOUR)]);
  }
  return corpus.colours.get(mode);
}

/** Tokens whose text is the search (trimmed, any case), as a Set; null when there is no search. */
function matches(corpus, search) {
  if (!search) return null;
  const wanted = search.trim().toLowerCase();
  if (corpus.search?.wanted !== wanted) {
    const found = new Set();
    corpus.plain.forEach((token, i) => { if (token === wanted) found.add(i); });
    corpus.search = { wanted, found };
  }
  return corpus.search.found;
}

/** A text with one of its tokens in brackets: "The cat sat on the ⟦mat⟧." (a special token before or after it). */
function inContext(corpus, token) {
  const s = corpus.sentence[token];
  const text = corpus.texts[s];
  const [start, end] = [corpus.spans[2 * token], corpus.spans[2 * token + 1]];
  if (end > start) return `${text.slice(0, start)}⟦${text.slice(start, end)}⟧${text.slice(end)}`;
  const mark = `⟦${displayToken(corpus.tokens[token])}⟧`; // a token the tokenizer added
  return corpus.position[token] === 0 ? `${mark} ${text}` : `${text} ${mark}`;
}

function mount(el) {
  const corpusChoice = segmented("Corpus", "corpus", [
    { value: "builtin", text: "Built-in", title: "varied English sentences and short passages shipped with the app" },
    { value: "mine", text: "My analyses", title: `the prompts you analysed with this model in this browser (the latest ${limits.my_analyses_max_keys}), as they are now` },
    ...(limits.analysed_texts ? [{ value: "analysed", text: "Analysed here",
      title: "every user's prompts analysed with this model on this server (the most recent ones), as they are now" }] : []),
  ], (value) => setView({ corpus: value === "builtin" ? null : value, focus: null }));
  const computing = h("div", { className: "global-computing", "data-testid": "global-computing", hidden: true }, [
    h("p", { className: "view-info" }), h("progress", { max: 1, value: 0 })]);
  const colour = segmented("Colour by", "colour", [
    { value: "qk", text: "Query / key", title: "queries blue, keys orange" },
    { value: "position", text: "Position", title: "the token's position in its text, light (first) to dark (last)" },
    { value: "category", text: "Category", title: "special, first token, punctuation, word start, word continuation" },
  ], (value) => setView({ colour: value === "qk" ? null : value }));
  const projection = segmented("Projection", "projection", [
    { value: "pca", text: "PCA", title: "principal components: fast, keeps global distances" },
    { value: "tsne", text: "t-SNE", title: "keeps neighbourhoods; computed on the server the first time a head is opened (a minute or two)" },
    { value: "umap", text: "UMAP", title: "keeps neighbourhoods and some global shape; computed the first time a head is opened" },
  ], (value) => setView({ projection: value === "pca" ? null : value, focus: "head" }));
  const search = h("input", { type: "search", name: "search", placeholder: "highlight a token, e.g. the", "data-control": "search",
    "aria-label": "Highlight the points of a token", onChange: () => setView({ search: search.value || null }) });
  const back = h("button", { type: "button", className: "quiet", text: "← All heads", "data-control": "all-heads",
    onClick: () => setView({ focus: null }) });
  const selects = layerHeadSelects((change) => setView({ ...change, focus: "head" }));
  const legend = h("p", { className: "view-info global-legend", "data-testid": "global-legend" });
  const tiles = h("canvas", { className: "global-tiles", tabindex: 0, "data-testid": "global-tiles",
    "aria-label": "Every head's queries and keys over the corpus; click a head to open it" });
  const detail = h("canvas", { className: "global-detail", tabindex: 0, "data-testid": "global-detail",
    "aria-label": "One head's queries and keys; wheel to zoom, drag to pan, click a point to see where its query attends" });
  const chosen = h("div", { className: "global-chosen", "data-testid": "global-chosen" });
  const status = statusLine("Hover a point for its token in its text; click one for the keys its query attends to.");
  const matrixPart = h("div", { className: "canvas-scroll" }, [tiles]);
  const headPart = h("div", { className: "global-head" }, [h("div", { className: "toolbar" }, [back, ...selects.roots, projection.root]),
    detail, chosen, status.root]);
  const body = h("div", { className: "view-body" }, [matrixPart, headPart]);
  el.append(h("div", { className: "toolbar" }, [corpusChoice.root, colour.root,
    h("label", { className: "control" }, [h("span", { text: "Search" }), search])]), legend, computing, body);
  ui = { el, body, corpusChoice, computing, colour, projection, search, selects, legend, tiles, detail, chosen, status, matrixPart, headPart,
    grid: null, view: null, selected: null, headKey: null, state: null, atlas: null, head: null };
  bindTiles();
  bindDetail();
}

// ---- the tiles: every head ----

function bindTiles() {
  const at = (event) => gridCellAt(ui.grid, pointerIn(ui.tiles, event));
  ui.tiles.addEventListener("mousemove", (event) => {
    const cell = at(event);
    if (cell) showTooltip(`layer ${cell.layer}, head ${cell.head}: click to open`, event.clientX, event.clientY);
    else hideTooltip();
  });
  ui.tiles.addEventListener("mouseleave", hideTooltip);
  ui.tiles.addEventListener("click", (event) => {
    const cell = at(event);
    if (cell) setView({ focus: "head", layer: cell.layer, head: cell.head });
  });
}

function drawTiles(state, payload, corpus) {
  const look = theme();
  const width = contentWidth(ui.body);
  const g = gridLayout(payload.layers, payload.heads, width, window.innerHeight * HEIGHT_FRACTION, look,
    { minCell: TILE_MIN, maxCell: TILE_MAX });
  ui.grid = g;
  const ctx = prepareCanvas(ui.tiles, g.width, g.height);
  const [queryColours, keyColours] = colours(corpus, payload, state.colour);
  const sample = payload.sample.data;
  const points = payload.points.data; // [L, H, 2S, 2]
  const found = matches(corpus, state.search);
  const perHead = 4 * sample.length;
  drawGrid(ctx, g, look, {
    selected: state.focus === "head" ? { layer: state.layer, head: state.head } : null,
    paint: (layer, head, x, y, cell) => {
      const base = (layer * payload.heads + head) * perHead;
      const half = (cell - 2 * TILE_MARGIN) / 2;
      for (let i = 0; i < 2 * sample.length; i++) {
        const isKey = i >= sample.length;
        const token = sample[isKey ? i - sample.length : i];
        const hit = found?.has(token);
        ctx.globalAlpha = found && !hit ? DIM_ALPHA : 1;
        ctx.fillStyle = hit ? look.ink : (isKey ? keyColours : queryColours)[token];
        const side = hit ? TILE_POINT * MATCH_POINT : TILE_POINT;
        ctx.fillRect(x + TILE_MARGIN + half * (1 + points[base + 2 * i]) - side / 2,
          y + TILE_MARGIN + half * (1 - points[base + 2 * i + 1]) - side / 2, side, side);
      }
      ctx.globalAlpha = 1;
    },
  });
  ui.tiles.dataset.tiles = String(payload.layers * payload.heads);
  ui.tiles.dataset.geometry = JSON.stringify({ label: g.label, header: g.header, pitch: g.pitch, cell: g.cell, headsAcross: g.headsAcross });
}

// ---- one head in detail ----

/** Screen position of point i of the head on the detail canvas (zoom and pan applied). */
function project(points, i) {
  const { size, scale, x, y } = ui.view;
  const half = (size / 2 - 6) * scale;
  return [size / 2 + x + half * points[2 * i], size / 2 + y - half * points[2 * i + 1]];
}

/** The point nearest to a canvas position within HIT_RADIUS, or -1 (queries 0..T-1, keys T..2T-1). */
function pointAt(position) {
  const points = ui.head?.points.data;
  if (!points) return -1;
  let best = -1;
  let bestDistance = HIT_RADIUS * HIT_RADIUS;
  for (let i = 0; i < points.length / 2; i++) {
    const [px, py] = project(points, i);
    const distance = (px - position.x) ** 2 + (py - position.y) ** 2;
    if (distance < bestDistance) [best, bestDistance] = [i, distance];
  }
  return best;
}

function bindDetail() {
  const canvas = ui.detail;
  let press = null;
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const view = ui.view;
    if (!view) return;
    const factor = event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP;
    const scale = Math.min(MAX_ZOOM, Math.max(1, view.scale * factor));
    const { x, y } = pointerIn(canvas, event);
    const [cx, cy] = [x - view.size / 2, y - view.size / 2]; // keep the point under the pointer in place
    view.x = cx - ((cx - view.x) * scale) / view.scale;
    view.y = cy - ((cy - view.y) * scale) / view.scale;
    view.scale = scale;
    drawDetail();
  }, { passive: false });
  canvas.addEventListener("mousedown", (event) => {
    press = { ...pointerIn(canvas, event), x0: ui.view?.x ?? 0, y0: ui.view?.y ?? 0, moved: false };
  });
  window.addEventListener("mouseup", () => { press = null; });
  canvas.addEventListener("mousemove", (event) => {
    const at = pointerIn(canvas, event);
    if (press && ui.view) {
      press.moved ||= Math.abs(at.x - press.x) + Math.abs(at.y - press.y) > DRAG_PX;
      if (press.moved) {
        ui.view.x = press.x0 + at.x - press.x;
        ui.view.y = press.y0 + at.y - press.y;
        drawDetail();
        return;
      }
    }
    const point = pointAt(at);
    if (point < 0) {
      hideTooltip();
      return;
    }
    const count = ui.corpus.count;
    const token = point % count;
    const text = `${point >= count ? "key" : "query"} “${displayToken(ui.corpus.tokens[token])}” in text ${ui.corpus.sentence[token] + 1}: ${inContext(ui.corpus, token)}`;
    showTooltip(text, event.clientX, event.clientY);
    ui.status.say(text);
  });
  canvas.addEventListener("mouseleave", hideTooltip);
  canvas.addEventListener("click", (event) => {
    if (press?.moved) return;
    const point = pointAt(pointerIn(canvas, event));
    ui.selected = point < 0 ? null : point % ui.corpus.count;
    drawDetail();
    showChosen();
  });
}

/** The top keys of the selected token's query: [[token, weight]], strongest first. */
function topKeys(token) {
  const k = ui.atlas.top_keys;
  const { top, weights } = ui.head;
  const start = ui.corpus.starts[ui.corpus.sentence[token]];
  const out = [];
  for (let j = 0; j < k; j++) {
    const position = top.data[token * k + j];
    if (position !== 65535) out.push([start + position, weights.data[token * k + j] * weights.scale]);
  }
  return out;
}

function drawDetail() {
  const state = ui.state;
  const { corpus, head } = ui;
  const look = theme();
  const { size } = ui.view;
  const ctx = prepareCanvas(ui.detail, size, size);
  ctx.strokeStyle = look.faint;
  ctx.strokeRect(0.5, 0.5, size - 1, size - 1);
  const points = head.points.data;
  const count = corpus.count;
  const [queryColours, keyColours] = colours(corpus, ui.atlas, state.colour);
  const found = matches(corpus, state.search);
  for (let i = 0; i < 2 * count; i++) {
    const token = i % count;
    const hit = found?.has(token);
    ctx.globalAlpha = found && !hit ? DIM_ALPHA : 0.85;
    ctx.fillStyle = hit ? look.ink : (i >= count ? keyColours : queryColours)[token];
    const side = hit ? DETAIL_POINT * MATCH_POINT : DETAIL_POINT;
    const [px, py] = project(points, i);
    ctx.fillRect(px - side / 2, py - side / 2, side, side);
  }
  ctx.globalAlpha = 1;
  if (ui.selected !== null) {
    const [qx, qy] = project(points, ui.selected);
    for (const [key, weight] of topKeys(ui.selected)) {
      const [kx, ky] = project(points, count + key);
      ctx.strokeStyle = look.accent;
      ctx.globalAlpha = 0.35 + 0.65 * weight;
      ctx.lineWidth = Math.max(1, LINE_WIDTH * weight) * look.line;
      ctx.beginPath();
      ctx.moveTo(qx, qy);
      ctx.lineTo(kx, ky);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = look.ink;
    ctx.lineWidth = 2;
    ctx.strokeRect(qx - 5, qy - 5, 10, 10);
  }
  ui.detail.dataset.points = String(2 * count);
  ui.detail.dataset.scale = ui.view.scale.toFixed(2);
}

/** The chosen token under the scatter: its text, the keys it attends to, and the way to the head view. */
function showChosen() {
  const token = ui.selected;
  if (token === null) {
    ui.chosen.replaceChildren();
    return;
  }
  const { corpus, state } = ui;
  const s = corpus.sentence[token];
  const keys = topKeys(token).map(([key, weight]) => `“${displayToken(corpus.tokens[key])}” ${weight.toFixed(2)}`);
  const open = h("button", { type: "button", text: "Open this text at this token in the head view", "data-control": "open-in-head",
    onClick: () => setView({ view: "head", text: corpus.texts[s], key: null, layer: state.layer, head: state.head,
      token: corpus.position[token], focus: null }) });
  ui.chosen.replaceChildren(
    h("p", { className: "global-context", "data-testid": "global-context", text: inContext(corpus, token) }),
    h("p", { className: "view-info", text: `Its query attends most to: ${keys.join(" · ") || "nothing"}` }), open);
}

function showHead(state, atlas, corpus, entry) {
  ui.selects.sync({ layers: atlas.layers, heads: atlas.heads }, state);
  ui.projection.sync(state.projection ?? "pca");
  const method = state.projection === "tsne" ? "t-SNE" : state.projection === "umap" ? "UMAP" : "PCA";
  const head = arrived(ui.headPart, entry, `Computing the ${method} of layer ${state.layer}, head ${state.head}…`
    + (method === "PCA" ? "" : " (the first time, a minute or two on the server)"));
  ui.detail.hidden = !head;
  if (!head) return;
  const key = `${head.layer}/${head.head}/${head.method}`;
  if (ui.headKey !== key) { // a new head: whole picture, nothing chosen
    ui.headKey = key;
    ui.selected = null;
    ui.view = { size: 0, scale: 1, x: 0, y: 0 };
    showChosen();
  }
  ui.head = head;
  ui.view.size = Math.max(240, Math.min(contentWidth(ui.body), window.innerHeight * HEIGHT_FRACTION));
  drawDetail();
}

/** The server is computing this atlas: how far it has come, and the next ask in POLL_MS. */
function showComputing(payload, request) {
  const { state, done, total } = payload.computing;
  const where = (CORPUS_NAMES[payload.corpus_name] ?? `corpus ${payload.corpus_name}`) + leftOut(payload.corpus);
  ui.computing.hidden = false;
  ui.computing.firstChild.textContent = state === "waiting"
    ? `The server will compute the global view of ${payload.model} on ${where} after the one it is computing now…`
    : `Computing the global view of ${payload.model} on ${where}: ${done} of ${total} texts through the model `
      + "(once; it is kept for everyone, and analyses go first)…";
  Object.assign(ui.computing.lastChild, { max: total, value: done });
  ui.computing.lastChild.style.width = PROGRESS_WIDTH;
  if (!polled.has(payload)) {
    polled.add(payload);
    setTimeout(() => dropDetail(request), POLL_MS);
  }
}

/** Which corpus choice is pressed; the prompts analysed here become a fixed corpus id once their
 * atlas is there (kept under that id too: not fetched again), so a share link opens the same
 * picture however many prompts follow. */
function syncCorpus(state, atlas, request) {
  const name = atlas?.corpus_name ?? state.corpus ?? "builtin";
  ui.corpusChoice.sync(name in CORPUS_NAMES ? name : null);
  if (atlas && !atlas.computing && state.corpus === "analysed") {
    putDetail(detailId({ ...request, fields: { ...request.fields, corpus: atlas.corpus } }), detailFor(state, request));
    queueMicrotask(() => setView({ corpus: atlas.corpus }, { history: "replace" }));
  }
}

/** "My analyses": none yet, or waiting for the server to name their corpus (then the view goes
 * on by that id, and the link with it). True while there is no atlas to ask for. */
function choosingMine(state) {
  if (state.corpus !== "mine") return false;
  ui.corpusChoice.sync("mine");
  ui.computing.hidden = true;
  ui.matrixPart.hidden = ui.headPart.hidden = true;
  ui.legend.textContent = "";
  const [request] = need(state);
  if (!request) {
    notice(ui.body, `No prompt analysed with ${state.analysis.model} in this browser yet: analyse one or two, then choose My analyses again.`);
    return true;
  }
  const answer = arrived(ui.body, detailFor(state, request), "Finding your analyses on the server…");
  if (answer) {
    named.set(answer.corpus, answer);
    const byId = { ...state, corpus: answer.corpus };
    if (answer.computing) putDetail(detailId(need(byId)[0]), { status: "ready", payload: answer }); // its progress, asked again in POLL_MS
    queueMicrotask(() => setView({ corpus: answer.corpus }, { history: "replace" }));
  }
  return true;
}

/** " (2 left out: 1 no longer on the server, 1 too long for a corpus)" for a corpus of my analyses. */
function leftOut(corpusId) {
  const skipped = Object.entries(named.get(corpusId)?.skipped ?? {}).filter(([, count]) => count);
  const total = skipped.reduce((sum, [, count]) => sum + count, 0);
  return total ? ` (${total} left out: ${skipped.map(([why, count]) => `${count} ${SKIPPED[why]}`).join(", ")})` : "";
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  ui.colour.sync(state.colour ?? "qk");
  if (document.activeElement !== ui.search) ui.search.value = state.search ?? "";
  if (choosingMine(state)) return;
  const [atlasRequest, headRequest] = need(state) ?? [];
  const answer = arrived(ui.body, detailFor(state, atlasRequest), "Loading the global view of this model…");
  syncCorpus(state, answer, atlasRequest);
  const atlas = answer?.computing ? null : answer;
  ui.computing.hidden = !answer?.computing;
  if (answer?.computing) showComputing(answer, atlasRequest);
  ui.matrixPart.hidden = !atlas || state.focus === "head";
  ui.headPart.hidden = !atlas || state.focus !== "head";
  if (!atlas) {
    ui.legend.textContent = "";
    return;
  }
  const corpus = corpusOf(atlas);
  ui.atlas = atlas;
  ui.corpus = corpus;
  const found = matches(corpus, state.search);
  ui.legend.textContent = `${atlas.model} on ${CORPUS_NAMES[atlas.corpus_name] ?? `corpus ${atlas.corpus_name}`}${leftOut(atlas.corpus)}: `
    + `${corpus.texts.length} texts, ${corpus.count} tokens. Each head's queries and keys, scaled to comparable norms and `
    + `centred together (AttentionViz), then projected to 2-D`
    + (state.focus === "head" ? "." : `; each tile shows ${atlas.sample.data.length} tokens by PCA. Click a head to open it.`)
    + (found ? ` “${state.search}” occurs ${found.size} times.` : "");
  if (state.focus === "head") showHead(state, atlas, corpus, detailFor(state, headRequest));
  else drawTiles(state, atlas, corpus);
}
