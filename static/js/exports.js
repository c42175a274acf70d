// Share and export the current view: a short permalink (POST /api/links, kept on this server),
// a PNG (the view's canvases composed at their places on the page, under a caption with the
// prompt), an SVG (the same picture as vector elements: cells, lines and text, vector.js), the
// raw data (the server's JSON and NPZ exports) and a self-contained offline HTML file (offline.js).
// File names say what is drawn: the model, the view, and the layer, heads or token it shows.
import { displayToken, theme } from "./draw.js";
import { offlineData, offlineHtml } from "./offline.js";
import { limits, viewLabel } from "./settings.js";
import { allHeads, analysisMatches, getState, selectedHeads, subscribe, tokenIndex, viewOf } from "./store.js";
import { h } from "./ui.js";
import { toQuery } from "./url.js";
import { canvasToSvg, isTraced, xmlText } from "./vector.js";
import { isLayerMode } from "./weights.js";

export { xmlText }; // the SVG export's text filter, for tests

const CAPTION_PX = 15; // font size of the caption of PNG and SVG exports, CSS px
const CAPTION_LINES = 3; // prompt lines at most under the title
const MARGIN = 16; // CSS px around the exported picture
const SVG_NS = "http://www.w3.org/2000/svg";
const LAYER_VIEWS = ["head", "matrix", "neuron", "mixing"]; // views that draw one layer
const HEAD_VIEWS = ["matrix", "neuron"]; // views that draw one head
const TOKEN_VIEWS = ["token", "neuron", "generate", "routes"]; // views that draw one token's attention (or routes)
const OFFLINE_MAX_BYTES = 32 * 2 ** 20; // attention an offline file holds (every layer of smollm2 up to ~340 tokens)

let ui = null;

/** Build the share and export controls into `panel`. */
export function mountExports(panel) {
  const button = (text, testid, onClick, title) => h("button", { type: "button", text, title, "data-testid": testid, onClick });
  ui = {
    panel,
    shortField: h("input", { type: "text", readonly: true, "aria-label": "Short link", "data-testid": "short-link",
      placeholder: "Press “Make short link”" }),
    status: h("p", { className: "export-status", role: "status", "data-testid": "export-status" }),
    json: h("a", { className: "button-link", text: "Data (JSON)", "data-testid": "export-json" }),
    npz: h("a", { className: "button-link", text: "Data (NPZ)", "data-testid": "export-npz",
      title: "Every captured array (attention, queries, keys, norms) for NumPy" }),
  };
  panel.append(
    h("div", { className: "panel-head" }, [
      h("h2", { text: "Share and export" }),
      h("button", { type: "button", className: "quiet close", text: "Close", onClick: () => toggleExports(false) }),
    ]),
    h("div", { className: "export-row" }, [
      h("span", { className: "control-label", text: "Permalink" }), ui.shortField,
      button("Make short link", "make-short-link", makeShortLink, "A short /s/… link to this view, kept on this server"),
    ]),
    h("div", { className: "export-row" }, [
      h("span", { className: "control-label", text: "Picture" }),
      button("PNG", "export-png", () => run(exportPng), "The view's drawings and its prompt as a PNG image"),
      button("SVG", "export-svg", () => run(exportSvg), "The same picture with the title and prompt as SVG text"),
      h("span", { className: "control-label", text: "Data" }), ui.json, ui.npz,
      h("span", { className: "control-label", text: "Offline" }),
      button("HTML file", "export-html", () => run(exportOffline),
        "One HTML file with this analysis and a viewer: opens with no server and no internet"),
    ]),
    ui.status,
  );
  subscribe((state, change) => {
    if (change.view) ui.shortField.value = ""; // a short link names one view
    syncLinks(state);
  });
  syncLinks(getState());
}

export function toggleExports(open = ui.panel.hidden) {
  ui.panel.hidden = !open;
}

/** Open the panel and make a short link at once (the masthead's "Short link"). */
export function shortLinkNow() {
  toggleExports(true);
  makeShortLink();
}

function syncLinks(state) {
  const active = Boolean(state.analysis && analysisMatches(state));
  const key = active ? state.analysis.key : "";
  const tooLong = active && state.analysis.overview.tokens > limits.json_export_max_tokens;
  setLink(ui.json, active && !tooLong ? `/api/analysis/${key}/export.json` : null);
  ui.json.title = tooLong ? `The JSON export holds at most ${limits.json_export_max_tokens} tokens: use NPZ`
    : "Tokens and attention [layers, heads, query, key] as JSON lists";
  setLink(ui.npz, active ? `/api/analysis/${key}/export.npz` : null);
  for (const control of ui.panel.querySelectorAll("[data-testid^=export-]:is(button)")) control.disabled = !active;
}

function setLink(anchor, href) {
  if (href) {
    anchor.href = href;
    anchor.setAttribute("download", "");
    anchor.removeAttribute("aria-disabled");
  } else {
    anchor.removeAttribute("href");
    anchor.setAttribute("aria-disabled", "true");
  }
}

async function run(task) {
  ui.status.textContent = "Preparing…";
  try {
    ui.status.textContent = await task(getState());
  } catch (error) {
    ui.status.textContent = `The export failed: ${error.message}`;
  }
}

// ---- short links ----

async function makeShortLink() {
  ui.status.textContent = "Making a short link…";
  try {
    const response = await fetch("/api/links", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: location.search.slice(1) || toQuery(viewOf(getState())) }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    ui.shortField.value = `${location.origin}${body.path}`;
    ui.shortField.focus();
    ui.shortField.select();
    try {
      await navigator.clipboard.writeText(ui.shortField.value);
      ui.status.textContent = "Short link copied to the clipboard. It lasts as long as this server keeps its cache folder.";
    } catch {
      ui.status.textContent = "Copy the selected short link (Ctrl+C). It lasts as long as this server keeps its cache folder.";
    }
  } catch (error) {
    ui.status.textContent = `No short link: ${error.message}`;
  }
}

// ---- pictures ----

/** Whether the view draws its layer's one map, the heads summed (a layer mode), not chosen heads. */
function headsSummed(state) {
  return isLayerMode(state.mode) && ["head", "matrix"].includes(state.view);
}

/** What a view draws, for file names: its layer, heads and token where it draws one, e.g.
 * ["l2", "h3"], ["l2", "all-heads"], ["l2", "h0+h4"], ["l2", "heads-summed"], ["t5"]; nothing for
 * whole-model views. */
function drawn(state) {
  const parts = [];
  if (LAYER_VIEWS.includes(state.view)) parts.push(`l${state.layer}`);
  if (headsSummed(state)) parts.push("heads-summed");
  else if (HEAD_VIEWS.includes(state.view)) parts.push(`h${state.head}`);
  if (state.view === "head" && !headsSummed(state)) {
    const heads = selectedHeads(state);
    parts.push(heads.length === allHeads(state).length ? "all-heads" : heads.length ? heads.map((head) => `h${head}`).join("+") : "no-heads");
  }
  if (TOKEN_VIEWS.includes(state.view)) parts.push(`t${tokenIndex(state)}`);
  return parts;
}

/** A file name for this view: atlas-MODEL-VIEW[-what it draws].EXT, e.g. atlas-minilm-head-l2-all-heads.svg */
function fileName(state, extension) {
  const parts = ["atlas", state.analysis.model, state.view, ...drawn(state)];
  return `${parts.join("-").replace(/[^A-Za-z0-9.+_-]+/g, "_")}.${extension}`;
}

/** One line about what the view shows: view, model, and the layer, head or token where they matter. */
function describe(state) {
  const parts = [`${viewLabel(state.view)} view`, state.analysis.tokens.info?.title || state.analysis.model];
  if (["head", "matrix", "neuron"].includes(state.view)) parts.push(`layer ${state.layer}`);
  if (headsSummed(state)) parts.push("all heads summed (‖Σ_h α_h f_h‖)");
  else if (state.view === "head" && state.heads) parts.push(`heads ${state.heads.join(", ") || "none"}`);
  if (["matrix", "neuron"].includes(state.view) && !headsSummed(state)) parts.push(`head ${state.head}`);
  if (["token", "neuron"].includes(state.view)) {
    const index = tokenIndex(state);
    parts.push(`token ${index} «${displayToken(state.analysis.tokens.tokens[index] ?? "")}»`);
  }
  return parts.join(" · ");
}

/** Every canvas of an element, inside open shadow roots too (BokehJS draws in one), that is on screen. */
function canvasesIn(root) {
  const found = [];
  for (const element of root.querySelectorAll("*")) {
    if (element instanceof HTMLCanvasElement) found.push(element);
    if (element.shadowRoot) found.push(...canvasesIn(element.shadowRoot));
  }
  return found.filter((canvas) => {
    const box = canvas.getBoundingClientRect();
    return canvas.width > 0 && canvas.height > 0 && box.width > 0 && box.height > 0;
  });
}

/** The view's canvases and text labels (headings, info lines) and the box around them, in CSS px. */
function layout(panel) {
  const canvases = canvasesIn(panel);
  if (!canvases.length) throw new Error("this view has no drawing to export yet");
  const labels = [...panel.querySelectorAll("h3, .view-info")].filter((el) => el.getBoundingClientRect().height > 0 && el.textContent.trim());
  const boxes = [...canvases, ...labels].map((el) => el.getBoundingClientRect());
  const left = Math.min(...boxes.map((b) => b.left));
  const top = Math.min(...boxes.map((b) => b.top));
  const width = Math.max(...boxes.map((b) => b.right)) - left;
  const height = Math.max(...boxes.map((b) => b.bottom)) - top;
  return { canvases, labels, left, top, width, height };
}

/** A label's text, font, colour and place (relative to the layout's corner). */
function labelText(label, { left, top }) {
  const box = label.getBoundingClientRect();
  const css = getComputedStyle(label);
  return { text: label.textContent.trim(), font: `${css.fontWeight} ${css.fontSize} ${css.fontFamily}`, colour: css.color,
    x: box.left - left, y: box.top - top + box.height / 2, width: box.width };
}

/**
 * The view's drawings on one canvas: each canvas at its place on the page (CSS px x `scale`),
 * headings and info lines as text. Fails when the view has nothing drawn yet.
 */
function composeBody(panel, scale, look) {
  const found = layout(panel);
  const { canvases, labels, left, top, width, height } = found;
  const out = document.createElement("canvas");
  out.width = Math.ceil(width * scale);
  out.height = Math.ceil(height * scale);
  const ctx = out.getContext("2d");
  ctx.scale(scale, scale);
  ctx.fillStyle = look.bg;
  ctx.fillRect(0, 0, width, height);
  for (const canvas of canvases) {
    const box = canvas.getBoundingClientRect();
    ctx.drawImage(canvas, box.left - left, box.top - top, box.width, box.height);
  }
  for (const label of labels) {
    const { text, font, colour, x, y, width: room } = labelText(label, found);
    ctx.font = font;
    ctx.fillStyle = colour;
    ctx.textBaseline = "middle";
    ctx.fillText(text, x, y, room);
  }
  return { canvas: out, width, height, layout: found };
}

/** Caption lines: the description (bold), then the prompt wrapped to the picture's width. */
function caption(state, width, look) {
  const family = getComputedStyle(document.body).fontFamily;
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = `400 ${CAPTION_PX}px ${family}`;
  const prompt = [];
  let line = "";
  for (const word of `“${state.analysis.text.replace(/\s+/g, " ").trim()}”`.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (ctx.measureText(next).width <= width || !line) {
      line = next;
      continue;
    }
    prompt.push(line);
    line = word;
    if (prompt.length === CAPTION_LINES) break;
  }
  if (prompt.length < CAPTION_LINES) prompt.push(line);
  else prompt[CAPTION_LINES - 1] += " …";
  return { title: `Attention Atlas · ${describe(state)}`, prompt, lineHeight: Math.round(CAPTION_PX * 1.5),
    colour: look.ink, muted: look.muted, family };
}

/** Body, caption and the whole picture's size, in CSS px. */
function picture(state) {
  const look = theme();
  const scale = Math.max(1, window.devicePixelRatio || 1);
  const body = composeBody(document.getElementById(`view-${state.view}`), scale, look);
  const text = caption(state, Math.max(body.width, 480), look);
  const header = MARGIN + text.lineHeight * (1 + text.prompt.length) + MARGIN / 2;
  return { look, scale, body, text, header, width: Math.max(body.width, 480) + 2 * MARGIN, height: header + body.height + MARGIN };
}

async function exportPng(state) {
  const shot = picture(state);
  const out = document.createElement("canvas");
  out.width = Math.ceil(shot.width * shot.scale);
  out.height = Math.ceil(shot.height * shot.scale);
  const ctx = out.getContext("2d");
  ctx.scale(shot.scale, shot.scale);
  ctx.fillStyle = shot.look.bg;
  ctx.fillRect(0, 0, shot.width, shot.height);
  ctx.textBaseline = "top";
  captionLines(shot).forEach(({ text, y, bold }) => {
    ctx.font = `${bold ? 700 : 400} ${CAPTION_PX}px ${shot.text.family}`;
    ctx.fillStyle = bold ? shot.text.colour : shot.text.muted;
    ctx.fillText(text, MARGIN, y);
  });
  ctx.drawImage(shot.body.canvas, MARGIN, shot.header, shot.body.width, shot.body.height);
  const blob = await new Promise((resolve, reject) => out.toBlob((b) => (b ? resolve(b) : reject(new Error("the browser made no PNG"))), "image/png"));
  const name = fileName(state, "png");
  download(blob, name);
  return `Saved ${name} (${out.width} × ${out.height} px).`;
}

async function exportSvg(state) {
  const shot = picture(state);
  const doc = document.implementation.createDocument(SVG_NS, "svg", null);
  const svg = doc.documentElement;
  const add = (tag, attributes, text) => {
    const node = doc.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, xmlText(String(value)));
    if (text !== undefined) node.textContent = xmlText(text);
    svg.append(node);
    return node;
  };
  svg.setAttribute("width", String(Math.ceil(shot.width)));
  svg.setAttribute("height", String(Math.ceil(shot.height)));
  svg.setAttribute("viewBox", `0 0 ${Math.ceil(shot.width)} ${Math.ceil(shot.height)}`);
  add("title", {}, shot.text.title);
  add("desc", {}, state.analysis.text);
  add("rect", { width: "100%", height: "100%", fill: shot.look.bg });
  for (const { text, y, bold } of captionLines(shot)) {
    add("text", { x: MARGIN, y: y + CAPTION_PX, "font-family": shot.text.family, "font-size": CAPTION_PX,
      "font-weight": bold ? 700 : 400, fill: bold ? shot.text.colour : shot.text.muted }, text);
  }
  const found = shot.body.layout;
  const untraced = found.canvases.filter((canvas) => !isTraced(canvas));
  if (untraced.length) throw new Error("this view is drawn by a plotting library: export it as PNG");
  const defs = add("defs", {});
  for (const canvas of found.canvases) {
    const box = canvas.getBoundingClientRect();
    svg.append(canvasToSvg(canvas, doc, defs, MARGIN + box.left - found.left, shot.header + box.top - found.top, box.width));
  }
  for (const label of found.labels) {
    const { text, font, colour, x, y } = labelText(label, found);
    add("text", { x: MARGIN + x, y: shot.header + y, style: `font: ${font}`, fill: colour, "dominant-baseline": "central" }, text);
  }
  const source = `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(doc)}\n`;
  const name = fileName(state, "svg");
  download(new Blob([source], { type: "image/svg+xml" }), name);
  return `Saved ${name}.`;
}

function captionLines(shot) {
  const step = shot.text.lineHeight;
  return [{ text: shot.text.title, y: MARGIN, bold: true },
    ...shot.text.prompt.map((text, i) => ({ text, y: MARGIN + step * (i + 1), bold: false }))];
}

// ---- offline HTML ----

/** Bytes a layer of `analysis` takes in the file: dense uint8 [H, N, N], or top-k links. */
function layerBytes(analysis) {
  const { heads, tokens } = analysis.overview;
  const perRow = tokens <= limits.dense_layer_max_tokens ? tokens : 3 * limits.layer_top_k; // uint16 index + uint8 weight
  return heads * tokens * perRow;
}

async function exportOffline(state) {
  const { key, overview } = state.analysis;
  const layers = Math.max(1, Math.min(overview.layers, Math.floor(OFFLINE_MAX_BYTES / layerBytes(state.analysis))));
  const payloads = [];
  for (let layer = 0; layer < layers; layer++) { // one at a time: a long model stays inside the event rate limit
    ui.status.textContent = `Preparing: layer ${layer + 1} of ${layers}…`;
    const response = await fetch(`/api/analysis/${key}/layer?layer=${layer}&mode=attention`);
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.message || response.statusText);
    payloads.push(payload);
  }
  const html = await offlineHtml(offlineData(state.analysis, payloads, state));
  const held = layers === overview.layers ? "every layer" : `layers 0–${layers - 1} of ${overview.layers}`;
  const name = `atlas-${state.analysis.model}-${layers === overview.layers ? "all-layers" : `layers0-${layers - 1}`}.html`
    .replace(/[^A-Za-z0-9._-]+/g, "_");
  download(new Blob([html], { type: "text/html" }), name);
  return `Saved ${name} (${Math.ceil(html.length / 1024)} KB, ${held}; up to ${OFFLINE_MAX_BYTES / 2 ** 20} MB of attention): `
    + "it opens in any browser with no server and no internet.";
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
