// A single self-contained HTML file of one analysis, made in the browser: it opens from a disk,
// an e-mail or a USB stick with no server and no internet. It runs the page's own model and
// head views, not a copy of them (as CircuitsVis's render_local inlines the bundle it serves):
// the ES modules of offlinemain.js and everything it imports, fetched from this server as the
// page loads them, and the page's stylesheet. The file also holds, as JSON blocks that are never
// executed, the server's published settings and the data: the tokens, the overview thumbnails
// and every layer's attention (as many as fit the exporter's budget), from which the token view
// is drawn too. In the file a small loader (bootModules) gives each module a blob:
// URL, its imports pointed at the others', and imports the main one. Its Content-Security-Policy
// forbids every network request.
import { isWireArray } from "./protocol.js";
import { settings } from "./settings.js";

const FORMAT_VERSION = 3; // of the embedded data (3: `layers`, every layer the file holds)
const MAIN_MODULE = "offlinemain.js"; // the file's main module, a path under static/js
const STYLESHEET = new URL("../css/atlas.css", import.meta.url); // the page's own
const MODULES = new URL("./", import.meta.url); // static/js on this server
const TITLE_CHARS = 60; // of the prompt in the file's title
const POLICY = "default-src 'none'; script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; img-src data: blob:";
const STYLE = ` /* the file's own layout, beside the page's stylesheet */
main > h2 { margin: 1.2rem 0 0.4rem; font-size: 1.1rem; }
.offline-prompt { margin: 1rem 0 0; white-space: pre-wrap; }
footer { max-width: 1600px; margin: 0 auto; padding: 0 1.5rem 2rem; color: var(--muted); font-size: 0.88rem; }
`;

/** Bytes -> base64, in chunks (String.fromCharCode takes a bounded number of arguments). */
function toBase64(bytes) {
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * A value the store holds as JSON that protocol.js decodePayload restores: decoded arrays as
 * wire arrays again (base64; float16 ones, decoded to float32, stay float32), other typed
 * arrays as lists.
 */
function toJson(value) {
  if (ArrayBuffer.isView(value)) return Array.from(value);
  if (Array.isArray(value)) return value.map(toJson);
  if (value === null || typeof value !== "object") return value;
  if (isWireArray(value) && ArrayBuffer.isView(value.data)) {
    const dtype = value.dtype === "float16" ? "float32" : value.dtype;
    return { dtype, shape: value.shape, data: toBase64(value.data), scale: value.scale };
  }
  return Object.fromEntries(Object.entries(value).map(([name, item]) => [name, toJson(item)]));
}

/**
 * The embedded data: `analysis` is the store's (tokens, overview with decoded arrays), `layers`
 * the HTTP API's `layer` payloads of layers 0, 1, ... (arrays with base64 data) and `view` the
 * state it opens with.
 */
export function offlineData(analysis, layers, view) {
  const { key, model, text, target, tokens, overview, sinks } = analysis;
  return {
    format: FORMAT_VERSION,
    created: new Date().toISOString(),
    analysis: toJson({ key, model, text, target, tokens, overview, sinks }),
    layers,
    view: { layer: Math.min(view.layer, layers.length - 1), head: view.head, heads: view.heads, token: view.token,
      threshold: view.threshold },
  };
}

/**
 * `source` with the specifier of each static import or export of a relative path ("./x.js",
 * "../x.js") replaced by `replace(path)`, where `path` is the imported module's path under
 * static/js and `from` the importing module's. Self-contained: the offline file's loader
 * carries it as source text.
 */
function rewriteImports(source, from, replace) {
  return source.replace(/(\b(?:import|from)\s*)(["'])(\.\.?\/[^"'\n]+)\2/g,
    (_, head, quote, specifier) => `${head}${quote}${replace(new URL(specifier, `file:///${from}`).pathname.slice(1))}${quote}`);
}

/**
 * The loader in the offline file. It runs there, not here: it may use nothing from outside its
 * own body (it is inserted as source text), only the file's #atlas-modules block and `rewrite`
 * (rewriteImports). Each module becomes a blob: URL, its imports pointed at the blob URLs of the
 * modules it imports; then the main module is imported. Fails, saying so in the page, on an
 * import the file does not hold or an import cycle (which blob URLs cannot express).
 */
function bootModules(rewrite) {
  const { main, sources } = JSON.parse(document.getElementById("atlas-modules").textContent);
  const urls = new Map();
  const load = (path, trail) => {
    if (urls.has(path)) return urls.get(path);
    if (!Object.hasOwn(sources, path) || trail.includes(path)) throw new Error(`cannot load ${[...trail, path].join(" → ")}`);
    const source = rewrite(sources[path], path, (imported) => load(imported, [...trail, path]));
    urls.set(path, URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
    return urls.get(path);
  };
  new Promise((resolve) => resolve(import(load(main, [])))).catch((error) => {
    document.getElementById("meta").textContent = `This file could not start its viewer: ${error.message}`;
    throw error;
  });
}

async function fetchText(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not read ${url.pathname} (${response.status} ${response.statusText})`);
  return response.text();
}

/** The sources of `main` and of every module it imports, however deep: {path under static/js: source}. */
async function moduleSources(main) {
  const sources = {};
  const visit = async (path) => {
    if (Object.hasOwn(sources, path)) return;
    sources[path] = null; // claimed: each module is fetched once
    sources[path] = await fetchText(new URL(path, MODULES));
    const imports = [];
    rewriteImports(sources[path], path, (imported) => {
      imports.push(imported);
      return imported;
    });
    await Promise.all(imports.map(visit));
  };
  await visit(main);
  return sources;
}

/** JSON for a <script type="application/json"> block: no "</script>" can end it early. */
function jsonBlock(value) {
  return JSON.stringify(value).replace(/</g, "\\u003c");
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** The whole offline document of `data` (offlineData) as a string. */
export async function offlineHtml(data) {
  const [sources, css] = await Promise.all([moduleSources(MAIN_MODULE), fetchText(STYLESHEET)]);
  const text = data.analysis.text;
  const title = `${text.slice(0, TITLE_CHARS)}${text.length > TITLE_CHARS ? "…" : ""} · Attention Atlas`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${POLICY}">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style>${css.replace(/<\/style/gi, "<\\/style")}</style>
<style>${STYLE}</style>
</head>
<body>
<header class="masthead"><div class="brand"><h1>Attention Atlas</h1><p id="meta"></p></div></header>
<main>
<p id="prompt" class="offline-prompt"></p>
<h2>Model view</h2>
<section id="view-model" class="view" data-view="model"></section>
<h2>Head view</h2>
<section id="view-head" class="view" data-view="head"></section>
<h2>Token view</h2>
<section id="view-token" class="view" data-view="token"></section>
</main>
<footer>Saved from Attention Atlas. This file needs no server and makes no network requests.</footer>
<script type="application/json" id="atlas-config">${jsonBlock(settings)}</script>
<script type="application/json" id="atlas-data">${jsonBlock(data)}</script>
<script type="application/json" id="atlas-modules">${jsonBlock({ main: MAIN_MODULE, sources })}</script>
<script>(${bootModules})(${rewriteImports});</script>
</body>
</html>
`;
}
