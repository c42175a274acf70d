// The main module of an offline file (offline.js writes the file; main.js is the page's): the
// page's own model and head views, drawn from the analysis the file holds instead of a server.
// The file holds one layer's attention weights; the head view says so for any other layer or
// mode. Nothing here talks to a network.
import { layerName } from "./layers.js";
import { decodeEvent, decodePayload } from "./protocol.js";
import { detailFor, detailId, getState, putDetail, setData, setView, subscribe } from "./store.js";
import * as headView from "./views/head.js";
import * as modelView from "./views/model.js";

const saved = JSON.parse(document.getElementById("atlas-data").textContent);
const panels = [[modelView, document.getElementById("view-model")], [headView, document.getElementById("view-head")]];
let queued = false;

/** The head view's entry for a layer or mode the file does not hold. */
function notSaved(analysis, layer) {
  const name = layerName(analysis.tokens.info, layer);
  return { status: "error", error: { code: "not_in_file", message: `This file holds the attention weights of ${name} only: `
    + "open the analysis in Attention Atlas for the others." } };
}

function update() {
  queued = false;
  const state = getState();
  const needed = headView.need(state);
  if (!detailFor(state, needed)) putDetail(detailId(needed), notSaved(state.analysis, saved.layer.layer));
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
  setView({ ...saved.view, view: "head", key: analysis.key, model: analysis.model, text: analysis.text }, { history: "none" });
  putDetail(detailId(headView.need(getState())), { status: "ready", payload: decodeEvent("layer", saved.layer) });
  subscribe(schedule);
  window.addEventListener("resize", schedule);
  schedule();
}

start();
