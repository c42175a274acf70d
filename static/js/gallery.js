// Demo gallery: curated prompts from GET /api/gallery (app/gallery.toml), each with a title, an
// explanation and a link that carries its pre-selected view. Opening an item opens its link in
// this page like a share link (fields this page does not know stay in the URL); the server has
// precomputed the analyses (`python -m app gallery`), so they open at once. While the page shows
// a gallery prompt (opened here, from a link, or by the presenter), its "what to look for" stays
// as a caption card above the view, with the tokens it talks about ("token 19", quoted words) as
// chips that choose them, and marked in the views' token strips. The heads it names ("layer 5
// head 3", and the role its link filters or switches off, once the head roles are computed) are
// outlined over the model and head-roles grids, and the cells it names ("from token 19 to token
// 5": query row 19, key column 5) over the matrix: outlines laid over the canvases from the geometry they publish (data-grid), so no
// view draws a gallery's marks itself, and exports stay free of them.
import { binOf, displayToken } from "./draw.js";
import { settings } from "./settings.js";
import { analysisMatches, detailFor, getState, setData, setView, subscribe } from "./store.js";
import { h } from "./ui.js";
import { openQuery } from "./url.js";

const GALLERY_URL = "/api/gallery";
const QUOTED_MAX = 24; // characters of a quoted word the caption may name as a token
const MARK = "gallery-mark"; // class of a token-strip button the caption talks about
const HEAD_PATTERN = /\blayer (\d+),? head (\d+)/gi; // how a caption names one head
const CELL_PATTERN = /\bfrom token (\d+) to token (\d+)/gi; // ...and one matrix cell (query, key)
const HEAD_GRIDS = ["model-canvas", "heads-canvas"]; // head grids (headgrid.js publishGrid) marked with the caption's heads
const MATRIX = "matrix-canvas"; // marked with the cells between the caption's tokens
const MIN_MARK = 6; // px, smallest side of a cell's outline (pooled matrices have cells of a pixel or two)

let ui = null;

/** Build the gallery into `panel`; items load the first time it opens. */
export function mountGallery(panel) {
  const list = h("div", { className: "gallery-list", role: "list", "data-testid": "gallery-list" });
  const status = h("p", { className: "gallery-status", role: "status" });
  panel.append(h("div", { className: "panel-head" }, [
    h("h2", { text: "Demo gallery" }),
    h("p", { text: "Prompts that show something worth teaching, each opening on the view that shows it." }),
    h("button", { type: "button", className: "quiet close", text: "Close", onClick: () => toggleGallery(false) }),
  ]), status, list);
  const caption = h("aside", { className: "gallery-caption", "data-testid": "gallery-caption", hidden: true });
  document.querySelector("[role=tablist]")?.before(caption);
  ui = { panel, list, status, caption, loaded: false, items: [], shown: null };
  subscribe(showCaption);
  subscribe(() => requestAnimationFrame(markAll)); // after the views have drawn their strips and grids
  window.addEventListener("resize", () => requestAnimationFrame(markAll));
  load();
}

/** Token indices an item's explanation names: "token 19", and quoted words ("keys", " blue")
 * matched to the prompt's tokens. */
function namedTokens(item, tokens) {
  const text = explanation(item);
  const found = new Set([...text.matchAll(/\btokens? (\d+)/g)].map(([, n]) => Number(n)));
  for (const [, word] of text.matchAll(new RegExp(`"([^"]{1,${QUOTED_MAX}})"`, "g"))) {
    tokens.forEach((token, i) => {
      if (displayToken(token) === word.trim()) found.add(i);
    });
  }
  return [...found].filter((i) => i < tokens.length).sort((a, b) => a - b);
}

/** The tokens the shown caption names, once its analysis is on the page. */
function captionTokens(state) {
  const item = ui.shown;
  if (!item || ui.caption.hidden || !state.analysis || !analysisMatches(state)) return [];
  return namedTokens(item, state.analysis.tokens.tokens);
}

/** [layer, head] pairs an item's explanation names ("layer 5 head 3"). */
function namedHeads(item) {
  return [...explanation(item).matchAll(HEAD_PATTERN)].map(([, layer, head]) => [Number(layer), Number(head)]);
}

/** [query, key] cells the shown caption names ("from token 19 to token 5"), within the prompt. */
function captionCells(state) {
  const item = ui.shown;
  if (!item || ui.caption.hidden || !state.analysis || !analysisMatches(state)) return [];
  const n = state.analysis.overview.tokens;
  return [...explanation(item).matchAll(CELL_PATTERN)].map(([, query, key]) => [Number(query), Number(key)])
    .filter(([query, key]) => query < n && key < n);
}

/** The head role an item's link filters (head roles) or switches off (interventions), if any. */
function namedRole(item) {
  const query = new URLSearchParams(item.link.split("?")[1] ?? "");
  const role = query.get("filter") || query.get("ablateRole");
  return role && !role.startsWith("CLUSTER") ? role : null; // clusters are numbered anew per prompt
}

/** The head summary a shown caption's role needs (main.js asks for it beside the view's own needs). */
export function captionNeed(state) {
  if (!ui?.shown || ui.caption.hidden || !namedRole(ui.shown) || !state.analysis || !analysisMatches(state)) return null;
  return { event: "heads", fields: { key: state.analysis.key } };
}

/** The heads the shown caption names: by number, and by role once the head summary is here. */
function captionHeads(state) {
  const item = ui.shown;
  if (!item || ui.caption.hidden || !state.analysis || !analysisMatches(state)) return { named: [], all: [] };
  const { layers, heads } = state.analysis.overview;
  const named = namedHeads(item).filter(([layer, head]) => layer < layers && head < heads);
  const entry = detailFor(state, captionNeed(state));
  const roles = entry?.status === "ready" ? entry.payload.roles : []; // [L][H] role names
  const role = namedRole(item);
  const byRole = roles.flatMap((row, layer) => row.flatMap((name, head) => (name === role ? [[layer, head]] : [])));
  const all = new Map([...named, ...byRole].map((pair) => [String(pair), pair])); // a head named both ways is marked once
  return { named, all: [...all.values()] };
}

/** The caption's marks everywhere: token strips, chips, head grids and the matrix. */
function markAll() {
  const state = getState();
  const tokens = captionTokens(state);
  const heads = captionHeads(state);
  markTokens(tokens);
  listChips(state, tokens, heads.named);
  for (const id of HEAD_GRIDS) {
    const canvas = document.querySelector(`.view [data-testid=${id}]`);
    if (canvas) overlay(canvas, canvas.offsetParent ? heads.all.map(([layer, head]) => headBox(canvas, layer, head)).filter(Boolean) : []);
  }
  const matrix = document.querySelector(`.view [data-testid=${MATRIX}]`);
  if (matrix) overlay(matrix, matrix.offsetParent ? cellBoxes(matrix, captionCells(state)) : []);
}

/** Mark the caption's tokens in every token strip. */
function markTokens(named) {
  const set = new Set(named);
  for (const button of document.querySelectorAll(".view .token-strip button[data-index]")) {
    button.classList.toggle(MARK, set.has(Number(button.dataset.index)));
  }
}

/** The caption's tokens and numbered heads as chips that choose them. */
function listChips(state, tokens, heads) {
  const signature = `${state.analysis?.key}|${tokens}|${heads.join(";")}`;
  if (!ui.chips || ui.chipsFor === signature) return;
  ui.chipsFor = signature;
  ui.chips.replaceChildren(...(tokens.length || heads.length ? [h("span", { className: "control-label", text: "Look at" })] : []),
    ...tokens.map((index) => h("button", { type: "button", className: `quiet ${MARK}`, "data-token": index,
      title: `choose token ${index}`, text: `«${displayToken(state.analysis.tokens.tokens[index])}» ${index}`,
      onClick: () => setView({ token: index }) })),
    ...heads.map(([layer, head]) => h("button", { type: "button", className: `quiet ${MARK}`, "data-head": `${layer},${head}`,
      title: `open layer ${layer} head ${head}`, text: `layer ${layer} head ${head}`,
      onClick: () => setView({ layer, head, heads: [head] }) })));
}

/** Where head (layer, head) is on a head grid's canvas, from the geometry it published. */
function headBox(canvas, layer, head) {
  const g = JSON.parse(canvas.dataset.grid ?? "null");
  if (!g) return null;
  const slot = g.order ? g.order[layer].indexOf(head) : head; // a sorted grid moves heads within their layer
  const [row, col] = g.headsAcross ? [layer, slot] : [slot, layer];
  return { x: g.left + col * g.pitch, y: g.top + row * g.pitch, w: g.cell, h: g.cell, data: { layer, head } };
}

/** Where the named [query, key] cells are on the matrix's canvas (its pooled cells), those the block on screen shows. */
function cellBoxes(canvas, cells) {
  const g = JSON.parse(canvas.dataset.grid ?? "null");
  const block = canvas.dataset.block?.split(",").map(Number);
  if (!g?.rows || !block) return [];
  const [row0, row1, col0, col1] = block;
  const shown = cells.filter(([query, key]) => query >= row0 && query < row1 && key >= col0 && key < col1);
  return shown.map(([query, key]) => ({
    x: g.left + binOf(key - col0, g.cols, col1 - col0) * g.cell, y: g.top + binOf(query - row0, g.rows, row1 - row0) * g.cellH,
    w: g.cell, h: g.cellH, data: { query, key },
  }));
}

/** Outlines over a canvas (a layer of boxes right after it, in the canvas's own pixels); none removes the layer. */
function overlay(canvas, boxes) {
  let layer = canvas.nextElementSibling?.classList.contains("gallery-marks") ? canvas.nextElementSibling : null;
  if (!boxes.length) {
    layer?.remove();
    return;
  }
  if (!layer) {
    layer = h("div", { className: "gallery-marks", "aria-hidden": "true", "data-testid": `${canvas.dataset.testid}-marks` });
    canvas.after(layer); // its parent becomes the positioned box (CSS :has), so canvas and marks scroll together
  }
  layer.style.left = `${canvas.offsetLeft}px`;
  layer.style.top = `${canvas.offsetTop}px`;
  layer.replaceChildren(...boxes.map(({ x, y, w, h: height, data }) => {
    const box = h("div", Object.fromEntries(Object.entries(data).map(([name, value]) => [`data-${name}`, String(value)])));
    const side = (size) => Math.max(MIN_MARK, size);
    box.style.left = `${x + (w - side(w)) / 2}px`;
    box.style.top = `${y + (height - side(height)) / 2}px`;
    box.style.width = `${side(w)}px`;
    box.style.height = `${side(height)}px`;
    return box;
  }));
}

/** The caption card of the gallery item whose model and prompt the page shows, or none. */
function showCaption(state) {
  const model = state.model || settings.default;
  const item = ui.items.find((entry) => entry.text === state.text && entry.model === model && !state.key) ?? null;
  ui.caption.hidden = !item || ui.dismissed === item;
  if (!item || ui.shown === item) return;
  ui.shown = item;
  ui.caption.dataset.item = item.id;
  ui.chips = h("p", { className: "gallery-chips", "data-testid": "gallery-chips" });
  ui.chipsFor = null;
  ui.caption.replaceChildren(
    h("div", { className: "gallery-caption-text" }, [
      h("strong", { text: `What to look for: ${item.title}` }),
      h("p", { text: explanation(item) }),
      ui.chips,
    ]),
    h("button", { type: "button", className: "quiet", text: "×", "aria-label": "Hide this caption", onClick: () => {
      ui.dismissed = item;
      ui.caption.hidden = true;
      markAll(); // and its marks go with it
    } }),
  );
}

export function toggleGallery(open = ui.panel.hidden) {
  ui.panel.hidden = !open;
  if (open && !ui.loaded) load();
}

async function load() {
  ui.loaded = true;
  ui.status.textContent = "Loading the gallery…";
  try {
    const response = await fetch(GALLERY_URL, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    ui.items = body.items;
    ui.list.replaceChildren(...body.items.map(card));
    showCaption(getState());
    setData({}); // a change for the listeners: main.js asks for what the caption needs (captionNeed), marks are drawn
    ui.status.textContent = body.items.length ? "" : "This server offers no gallery items for its models.";
  } catch (error) {
    ui.loaded = false; // try again next time
    ui.status.textContent = `The gallery could not be loaded: ${error.message}`;
  }
}

/** An item's "what to look for", on one line (the TOML keeps it wrapped). */
function explanation(item) {
  return item.explanation.replace(/\s+/g, " ").trim();
}

function card(item) {
  const query = item.link.split("?")[1] ?? "";
  const view = new URLSearchParams(query).get("view") ?? "model";
  const open = (event) => {
    event.preventDefault();
    toggleGallery(false);
    openQuery(query);
    document.querySelector("[role=tablist]")?.scrollIntoView({ block: "start", behavior: "smooth" });
  };
  return h("article", { className: "gallery-item", role: "listitem", "data-item": item.id }, [
    h("h3", {}, [h("a", { href: item.link, text: item.title, onClick: open, "data-testid": "gallery-open" })]),
    h("p", { className: "gallery-meta", text: `${item.model} · ${view} view` }),
    h("p", { className: "gallery-text", text: explanation(item) }),
    h("p", { className: "gallery-prompt", text: `“${item.text}”` }),
  ]);
}
