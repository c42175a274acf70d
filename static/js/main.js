// Wiring: page controls -> store; store -> socket requests (the analysis, then whatever detail
// the active view needs) and -> views; socket answers -> store. Views never call the server:
// each says what it needs with need(state), and this module fetches it once.
import { cellOrigin, gridLayout } from "./headgrid.js";
import { STREAMS } from "./protocol.js";
import { errorTitle, settings } from "./settings.js";
import { connect, request } from "./socket.js";
import {
  analysisMatches, detailByRid, detailId, getState, putDetail, setCanceller, setData, setView, subscribe, viewOf,
} from "./store.js";
import { startClassroom } from "./classroom.js";
import { captionNeed } from "./gallery.js";
import { assembledOverview } from "./layerstream.js";
import { remember } from "./myanalyses.js";
import { bindHistory, fromQuery, shareUrl } from "./url.js";
import { VIEW_NAMES, loadViews } from "./views/index.js";
import { overviewImage } from "./views/model.js";

const PROJECTOR_KEY = "attention-atlas.projector"; // localStorage flag for large-font, high-contrast mode
const EXAMPLE_PROMPT = "The cat sat on the mat because it was tired.";
const TITLE_CHARS = 40; // of the prompt shown in the window title

const $ = (selector) => document.querySelector(selector);
const page = {
  form: $("#analyze-form"), model: $("#model"), prompt: $("#prompt"), analyze: $("#analyze"),
  targetField: $("#target-field"), target: $("#target"),
  progress: $("#progress"), progressBar: $("#progress .bar"), progressLabel: $("#progress .label"),
  preview: $("#live-overview"),
  error: $("#error-banner"), errorTitle: $("#error-banner .title"), errorMessage: $("#error-banner .message"),
  errorClose: $("#error-banner .dismiss"), info: $("#run-info"), tabs: [...document.querySelectorAll("[role=tab]")],
  panels: Object.fromEntries(VIEW_NAMES.map((view) => [view, $(`#view-${view}`)])), empty: $("#empty-state"),
  copy: $("#copy-link"), share: $("#share"), shareField: $("#share-field"), shareStatus: $("#share-status"),
  projector: $("#projector"), tablist: $("[role=tablist]"), hint: $("#tab-hint"),
};
const refetched = new Set(); // analysis keys re-requested after the server's cache dropped them
let shownText = null; // the state text last written into the prompt box
let shownTarget = null; // the decoder text last written into its box
let shownModel = null; // the state model last written into the model menu
let modelPicked = false; // the user chose a model in the menu that no Analyze has used yet
let updateQueued = false;
let views = null; // name -> view module, once loaded (start() does not wait for them)

// ---- requests ----

/** Ask for the analysis the state names: `analyze` model + text, or `open` a cached one by its key. */
function ensureAnalysis(state) {
  const model = state.model || settings.default;
  const { text, key } = state;
  const target = state.target ?? null;
  if ((!key && !text.trim()) || analysisMatches(state)) return;
  const asked = (run) => run && (key ? run.key === key
    : !run.key && run.text === text && run.model === model && run.target === target);
  if (asked(state.pending) || asked(state.failed)) return;
  const layers = state.view === "head" ? [state.layer] : []; // streamed right after the overview
  if (state.connection === "lost") { // queued: onStatus drops this pending run on reconnect, which sends it
    setData({ pending: { rid: null, queued: true, model, text, target, key, layers },
      progress: { stage: "waiting for the server to come back", fraction: 0 } });
    return;
  }
  const rid = key ? request("open", { key, layers })
    : request("analyze", { model, text, layers, ...(target ? { target } : {}) });
  setData({ pending: { rid, model, text, target, key, layers },
    progress: { stage: key ? "opening the analysis" : `analysing with ${model}`, fraction: 0 } });
}

/** Whether the analysis still streaming will bring this request's answer anyway. */
function streamed(state, needed) {
  const pending = state.pending;
  return Boolean(pending && pending.rid === state.analysis.rid && needed.event === "layer"
    && needed.fields.mode === "attention" && pending.layers.includes(needed.fields.layer));
}

/** Ask once for each request the view needs (none, one or a list); the sink tokens every view marks come with the overview. */
function ensureDetail(state) {
  if (!analysisMatches(state) || state.connection === "lost") return; // asked for on reconnect
  const needs = [views[state.view].need(state), captionNeed(state)].flat().filter(Boolean); // and the roles a gallery caption names
  for (const needed of needs) {
    if (streamed(state, needed) || (STREAMS.includes(needed.event) && state.pending)) continue; // one stream at a time
    const id = detailId(needed);
    if (!state.details.has(id)) putDetail(id, { status: "pending", rid: request(needed.event, needed.fields), event: needed.event });
  }
}

// ---- answers ----

function onAnalysisEvent(event, payload) {
  const state = getState();
  const pending = state.pending;
  if (event === "progress") setData({ progress: { stage: payload.stage, fraction: payload.fraction } });
  else if (event === "overview_layer") {
    (pending.layers ??= [])[payload.layer] = payload;
    drawPreview(pending.layers, payload.layer);
  } else if (event === "tokens") pending.tokens = payload;
  else if (event === "overview") {
    state.details.clear(); // the model and text are the ones asked for, so the view state matches exactly
    payload = assembledOverview(payload, pending.layers);
    const { model, text } = pending.key ? pending.tokens : pending; // an analysis opened by key names its own
    const target = pending.key ? null : pending.target;
    setData({ analysis: { rid: payload.rid, key: payload.key, model, text, target, tokens: pending.tokens, opened: Boolean(pending.key),
      overview: payload, sinks: payload.sinks, done: null }, error: null, failed: null });
    if (!pending.key && !target) remember(model, payload.key); // for the global view's "My analyses"
    setView({ ...viewOf(state), model, text }, { history: "replace" }); // clamp indices, name the model
  } else if (event === "layer") {
    const fields = { key: payload.key, layer: payload.layer, mode: payload.mode };
    putDetail(detailId({ event: "layer", fields }), { status: "ready", payload });
  } else if (event === "done") {
    setData({ pending: null, progress: null, analysis: state.analysis && { ...state.analysis, done: payload } });
  } else if (event === "error") {
    setData({ pending: null, progress: null, error: payload,
      failed: { model: pending.model, text: pending.text, target: pending.target, key: pending.key } });
  }
}

function onEvent(event, payload) {
  const state = getState();
  if (state.pending && payload.rid !== null && payload.rid === state.pending.rid) { // a queued run has no rid yet
    onAnalysisEvent(event, payload);
    return;
  }
  const found = detailByRid(payload.rid);
  if (!found) {
    if (event === "error" && payload.rid === null) setData({ error: payload }); // not tied to a request
    return; // an answer to a request nobody waits for any more
  }
  const [id, entry] = found;
  if (STREAMS.includes(entry.event) && event !== "error") {
    onStreamEvent(id, entry, event, payload);
  } else if (event === "progress") { // long model work answered once (patching): the view shows how far it is
    putDetail(id, { ...entry, progress: payload });
  } else if (event !== "error") {
    putDetail(id, { status: "ready", payload });
    if (event === "heads" && state.analysis?.key === payload.key) setData({ analysis: { ...state.analysis, sinks: payload.sinks } });
  } else if (payload.code === "not_found" && state.analysis && !refetched.has(state.analysis.key)) {
    refetched.add(state.analysis.key); // the server evicted this analysis: run it again, once
    state.details.clear();
    setData({ analysis: null });
  } else {
    putDetail(id, { status: "error", error: payload });
  }
}

/** An event of a stream a view asked for (a second prompt, a generation): parts gathered until `done`. */
function onStreamEvent(id, entry, event, payload) {
  const layers = entry.parts?.layers ?? [];
  if (event === "overview_layer") layers[payload.layer] = payload;
  const part = event === "overview" ? assembledOverview(payload, layers) : payload;
  const parts = { ...entry.parts, layers, [event]: part };
  putDetail(id, event === "done" ? { status: "ready", event: entry.event, payload: parts } : { ...entry, parts });
}

function onStatus(status, detail) {
  const state = getState();
  if (status === "connected") {
    if (state.connection === "lost") { // requests in flight were lost with the connection; queued ones go now
      for (const [id, entry] of state.details) if (entry.status === "pending") state.details.delete(id);
      setData({ pending: null, progress: null });
    }
    setData({ connection: "connected", error: state.error?.code === "disconnected" ? null : state.error });
  } else if (state.connection !== "lost") {
    setData({ connection: "lost",
      error: { code: "disconnected", message: `The app cannot reach its server (${detail || status}); retrying…` } });
  }
}

// ---- page chrome ----

function syncChrome(state) {
  const active = Boolean(views && state.analysis && analysisMatches(state)); // shown once its view can draw it
  document.documentElement.dataset.busy = String(Boolean(state.pending));
  document.documentElement.dataset.view = state.view;
  document.documentElement.dataset.analysis = active ? state.analysis.key : "";
  for (const tab of page.tabs) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
    tab.tabIndex = tab.dataset.view === state.view ? 0 : -1; // one tab stop; arrow keys move within
  }
  if (!page.tabs.includes(document.activeElement) && !page.tablist.matches(":hover")) showHint(null);
  for (const [view, panel] of Object.entries(page.panels)) panel.hidden = !active || view !== state.view;
  page.empty.hidden = active;
  page.empty.textContent = state.pending?.queued ? "Waiting for the server: your analysis is sent when it is back."
    : state.pending ? "Analysing…"
    : state.failed ? "Nothing to show for this prompt: see the message above."
      : "Type a prompt and press Analyze to see how the model attends.";

  page.progress.hidden = !state.progress;
  if (!state.pending?.layers) page.preview.hidden = true;
  if (state.progress) {
    page.progressBar.style.width = `${Math.round(100 * state.progress.fraction)}%`;
    page.progressLabel.textContent = `${state.progress.stage}…`;
  }
  page.error.hidden = !state.error;
  if (state.error) {
    page.errorTitle.textContent = errorTitle(state.error.code);
    page.errorMessage.textContent = state.error.message;
    page.error.dataset.code = state.error.code;
  }
  if (state.text !== shownText) { // history or a share link changed the prompt
    shownText = state.text;
    if (state.text) page.prompt.value = state.text;
  }
  if (state.model !== shownModel) { // a link, history, the presenter or an analysis named a model...
    shownModel = state.model;
    if (state.model && !modelPicked) page.model.value = state.model; // ...but a model the user picked stays picked
  }
  syncTarget(state, active);
  page.info.textContent = active ? runInfo(state.analysis) : "";
  page.info.title = active && state.analysis.overview.sink_rule ? `Attention sinks: ${state.analysis.overview.sink_rule}` : "";
  page.shareField.value = shareUrl(viewOf(state));
  document.title = state.text ? `${state.text.slice(0, TITLE_CHARS)}${state.text.length > TITLE_CHARS ? "…" : ""} · Attention Atlas`
    : "Attention Atlas";
}

/**
 * The decoder-text box: shown for an encoder-decoder analysis (or a link that names a target),
 * holding the state's target or else the model's own output, which the analysis reports.
 */
function syncTarget(state, active) {
  const info = active ? state.analysis.tokens.info : null;
  page.targetField.hidden = !(info?.encoder_decoder || state.target);
  const shown = state.target ?? info?.target ?? null;
  if (shown !== null && shown !== shownTarget) {
    shownTarget = shown;
    page.target.value = shown;
  }
}

/** The target a submitted form asks for: null (the model's own output) unless the user wrote another. */
function submittedTarget(state) {
  const value = page.target.value;
  if (page.targetField.hidden || !value.trim()) return null;
  const own = state.analysis && !state.target ? state.analysis.tokens.info.target : null;
  return value === own ? null : value;
}

/**
 * The model view as it fills in, layer by layer, while the model runs (a long prompt's first
 * sight): layers across, heads down, so a deep model fills a strip from left to right. Only the
 * column of the layer that just arrived is drawn: drawing every layer received so far again at
 * each arrival cost the page O(layers²) pixels per analysis, on the cores the model was still
 * running on.
 */
function drawPreview(layers, layer) {
  const { layers: count, heads, side } = layers[layer];
  const g = gridLayout(count, heads, Infinity, Infinity, null, // native size, no gaps or labels
    { minCell: side, maxCell: side, gap: 0, labelEms: 0, headerEms: 0, headsAcross: false });
  const fresh = page.preview.hidden; // a new analysis: sizing the canvas clears the last one's layers
  if (fresh) {
    page.preview.width = g.width;
    page.preview.height = g.height;
  }
  const ctx = page.preview.getContext("2d");
  for (const l of fresh ? layers.keys() : [layer]) {
    if (!layers[l]) continue;
    const image = overviewImage({ layers: 1, heads, side, thumbnails: layers[l].thumbnails });
    for (let hd = 0; hd < heads; hd++) ctx.drawImage(image, hd * side, 0, side, side, ...cellOrigin(g, l, hd), side, side);
  }
  page.preview.dataset.layers = String(layers.filter(Boolean).length);
  page.preview.hidden = false;
}

function runInfo(analysis) {
  const info = analysis.tokens.info;
  const parts = [info.title || analysis.model, `${analysis.overview.tokens} tokens`,
    `${analysis.overview.layers} layers × ${analysis.overview.heads} heads`];
  if (info.encoder_decoder) {
    const [source, target] = [info.segments.encoder, info.segments.decoder].map(([first, end]) => end - first);
    parts[1] = `${source} source + ${target} target tokens`;
    parts[2] = `${info.layer_kinds.filter((kind) => kind === "encoder").length} encoder + `
      + `${info.layer_kinds.filter((kind) => kind === "cross").length} decoder blocks × ${analysis.overview.heads} heads`;
  }
  if (info.kv_heads && info.kv_heads !== info.heads) parts.push(`${info.kv_heads} key/value heads`);
  if (info.ablation) { // an intervened run (the interventions view): say so in every view
    const count = info.ablation.ablate.length;
    parts.unshift(`ABLATED RUN: ${count} head${count > 1 ? "s" : ""} switched off (${info.ablation.ablate_mode})`);
  }
  const sinks = analysis.sinks?.length ?? 0;
  if (sinks) parts.push(`${sinks} attention sink${sinks > 1 ? "s" : ""} (hover for the rule)`);
  if (analysis.done) parts.push(analysis.done.cached ? "from cache" : `computed in ${analysis.done.seconds.toFixed(2)} s`);
  return parts.join(" · ");
}

function update() {
  updateQueued = false;
  const state = getState();
  ensureAnalysis(state);
  if (views) ensureDetail(state);
  syncChrome(state);
  if (views && state.analysis && analysisMatches(state)) views[state.view].render(state, page.panels[state.view]);
}

function scheduleUpdate() {
  if (updateQueued) return;
  updateQueued = true;
  queueMicrotask(update);
}

// ---- controls ----

function bindControls() {
  page.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = page.prompt.value;
    if (!text.trim()) {
      setData({ error: { code: "empty_prompt", message: "Type or paste some text first." } });
      return;
    }
    shownText = text;
    modelPicked = false;
    const state = getState();
    for (const [id, entry] of state.details) if (entry.status === "error") state.details.delete(id); // retry them
    setData({ failed: null, error: state.error?.code === "disconnected" ? state.error : null }); // still offline
    setView({ text, target: submittedTarget(state), model: page.model.value, key: null,
      ...(text !== state.text || page.model.value !== state.model ? { lock: null, zoom: null } : {}) }); // a new prompt's tokens
  });
  for (const box of [page.prompt, page.target]) {
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) page.form.requestSubmit();
    });
  }
  page.model.addEventListener("change", () => {
    modelPicked = true;
  });
  page.errorClose.addEventListener("click", () => setData({ error: null }));
  for (const tab of page.tabs) {
    tab.addEventListener("click", () => setView({ view: tab.dataset.view }));
    for (const event of ["mouseenter", "focus"]) tab.addEventListener(event, () => showHint(tab));
    for (const event of ["mouseleave", "blur"]) tab.addEventListener(event, () => showHint(null));
  }
  page.tablist.addEventListener("keydown", moveBetweenTabs);
  page.copy.addEventListener("click", copyLink);
  page.projector.addEventListener("click", () => setProjector(!getState().projector));
  window.addEventListener("resize", scheduleUpdate);
}

const TAB_KEYS = { ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1 }; // step through the tabs (wraps)

/** Arrow keys move to the previous or next tab (Home, End: the first, the last) and open it. */
function moveBetweenTabs(event) {
  const at = page.tabs.indexOf(event.target);
  if (at < 0) return;
  const count = page.tabs.length;
  const to = event.key === "Home" ? 0 : event.key === "End" ? count - 1
    : event.key in TAB_KEYS ? (at + TAB_KEYS[event.key] + count) % count : -1;
  if (to < 0) return;
  event.preventDefault();
  page.tabs[to].focus();
  setView({ view: page.tabs[to].dataset.view });
}

/** The one-line description under the tabs: the pointed-at tab's, else the open view's. */
function showHint(tab) {
  const open = page.tabs.find((candidate) => candidate.dataset.view === getState().view);
  page.hint.textContent = (tab ?? open)?.dataset.hint ?? "";
}

async function copyLink() {
  const url = location.href;
  page.share.hidden = false;
  page.shareField.value = url;
  page.shareField.focus();
  page.shareField.select();
  try {
    await navigator.clipboard.writeText(url);
    page.shareStatus.textContent = "Link copied to the clipboard.";
  } catch {
    page.shareStatus.textContent = "Copy the selected link above (Ctrl+C).";
  }
}

function setProjector(on) {
  document.documentElement.classList.toggle("projector", on);
  page.projector.setAttribute("aria-pressed", String(on));
  try {
    localStorage.setItem(PROJECTOR_KEY, on ? "1" : "0");
  } catch { /* storage may be disabled; the toggle still works for this page */ }
  setData({ projector: on });
}

function start() {
  loadViews().then((loaded) => {
    views = loaded;
    scheduleUpdate();
  });
  bindControls();
  let projector = false;
  try {
    projector = localStorage.getItem(PROJECTOR_KEY) === "1";
  } catch { /* storage disabled */ }
  const initial = fromQuery(location.search);
  if (!location.search) initial.text = EXAMPLE_PROMPT; // a first visit opens analysed (the cache answers after the first)
  page.prompt.value = initial.text || EXAMPLE_PROMPT;
  shownText = initial.text;
  subscribe(scheduleUpdate);
  bindHistory();
  setProjector(projector);
  setView(initial, { history: "replace" });
  startClassroom(); // presenter mode, gallery, exports: listens before the socket connects
  connect(onEvent, onStatus);
  setCanceller((rid) => request("cancel", { request: rid }));
  scheduleUpdate();
}

start();
