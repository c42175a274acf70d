// The main module of an offline file (offline.js writes the file; main.js is the page's): the
// page's own model, head and token views, drawn from the analysis the file holds instead of a
// server. The file holds the attention of every layer up to the exporter's budget; the token
// view's rows and columns are read from those layers (dense ones). A layer or mode the file does
// not hold gets a notice saying so. Nothing here talks to a network.
import { layerName } from "./layers.js";
import { decodeEvent, decodePayload } from "./protocol.js";
import { detailFor, detailId, getState, putDetail, setData, setView, subscribe } from "./store.js";
import * as headView from "./views/head.js";
import * as modelView from "./views/model.js";
import * as tokenView from "./views/token.js";

const saved = JSON.parse(document.getElementById("atlas-data").textContent);
const panels = [[modelView, document.getElementById("view-model")], [headView, document.getElementById("view-head")],
  [tokenView, document.getElementById("view-token")]];
let layers = []; // the decoded `layer` payloads the file holds, by layer
let queued = false;

/** The entry for a request the file cannot answer (a layer beyond its budget, another mode). */
function notSaved(analysis) {
  const last = layerName(analysis.tokens.info, layers.length - 1);
  const held = layers.length === analysis.overview.layers ? "every layer's attention weights"
    : `the attention weights of layers up to ${last}`;
  return { status: "error", error: { code: "not_in_file", message: `This file holds ${held}, as weights (not norms) `
    + "and, for the token view, as a dense matrix: open the analysis in Attention Atlas for the rest." } };
}

/** The `token` payload of token `index`, read from the dense layers: its row (outgoing) and
 * column (incoming) in every head, uint8 [L, H, N] as the server shapes it; null if not dense. */
function tokenPayload(analysis, index) {
  if (layers.length !== analysis.overview.layers || layers.some((layer) => layer.format !== "dense")) return null;
  const [heads, n] = layers[0].attention.shape;
  const outgoing = new Uint8Array(layers.length * heads * n);
  const incoming = new Uint8Array(layers.length * heads * n);
  layers.forEach(({ attention }, layer) => {
    for (let head = 0; head < heads; head++) {
      const at = (layer * heads + head) * n;
      for (let j = 0; j < n; j++) {
        outgoing[at + j] = attention.data[(head * n + index) * n + j];
        incoming[at + j] = attention.data[(head * n + j) * n + index];
      }
    }
  });
  const wire = (data) => ({ dtype: "uint8", shape: [layers.length, heads, n], data, scale: layers[0].attention.scale });
  return { key: analysis.key, index, mode: "attention", outgoing: wire(outgoing), incoming: wire(incoming) };
}

/** Answer what the views need from the file (a held layer, a token's row and column). */
function answer(state, needed) {
  if (!needed || detailFor(state, needed)) return;
  const { event, fields } = needed;
  const layer = event === "layer" && fields.mode === "attention" ? layers[fields.layer] : null;
  const token = event === "token" && fields.mode === "attention" ? tokenPayload(state.analysis, fields.index) : null;
  const payload = layer ?? token;
  putDetail(detailId(needed), payload ? { status: "ready", payload } : notSaved(state.analysis));
}

function update() {
  queued = false;
  const state = getState();
  for (const [view] of panels) [view.need(state)].flat().forEach((needed) => answer(state, needed));
  for (const [view, panel] of panels) view.render(state, panel);
  document.documentElement.dataset.ready = "true";
}

function schedule() {
  if (queued) return;
  queued = true;
  queueMicrotask(update);
}

function start() {
  const analysis = { ...decodePayload(saved.analysis), opened: true, done: null };
  const info = analysis.tokens.info;
  document.getElementById("meta").textContent = `${info?.title || analysis.model} · ${analysis.overview.tokens} tokens · `
    + `${analysis.overview.layers} layers × ${analysis.overview.heads} heads · saved ${saved.created.slice(0, 10)}`;
  document.getElementById("prompt").textContent = analysis.text;
  setData({ analysis });
  layers = saved.layers.map((layer) => decodeEvent("layer", layer));
  setView({ ...saved.view, view: "head", key: analysis.key, model: analysis.model, text: analysis.text }, { history: "none" });
  subscribe(schedule);
  window.addEventListener("resize", schedule);
  schedule();
}

start();
