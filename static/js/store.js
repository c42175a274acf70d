// The single source of state, with publish/subscribe. Two kinds of state live here:
// - view state (model, text, view, layer, head, heads, token, threshold, mode, and every other
//   setting a user can change in a view: the locked token, the matrix zoom, scales...): what a
//   share link and the presenter's broadcast hold; changed with setView(), which tells
//   listeners whether to push history;
// - session data (the analysis, detail payloads, progress, errors): changed with setData().
// Views read state and call setView(); they never keep their own copy of it.
import { ATTENTION_MODES } from "./protocol.js";
import { limits } from "./settings.js";
import { VIEW_NAMES } from "./views/index.js";

export const VIEW_FIELDS = ["model", "text", "target", "view", "layer", "head", "heads", "token", "threshold", "mode",
  "measure", "sort", "filter", "fusion", "text2", "generate", "sampling", "seed", "temperature", "step", "start", "key",
  "lock", "zoom", "scale", "sinks", "order",
  "corpus", "projection", "colour", "focus", "search",
  "ablate", "ablateRole", "ablateMode", "corrupt", "tau"];
export const LIST_FIELDS = ["heads", "zoom", "ablate"]; // written into links as comma-separated integers
export const DEFAULT_VIEW = {
  model: null, text: "", view: "model", layer: 0, head: 0,
  target: null, // encoder-decoder models: the text the decoder reads; null = the model's own output
  heads: null, // null = only the chosen head
  token: null, // null = the last token on causal models, else the first token the tokenizer did not add
  threshold: 0, mode: "attention",
  // analysis views; null is each one's default and is left out of share links
  measure: null, // head summary colouring: a metric name or "cluster"; null = roles
  sort: null, // "rank" = heads sorted within each layer by the measure; null = by head index
  filter: null, // a role ("PREVIOUS") or cluster ("CLUSTER3") shown, others dimmed; null = all
  fusion: null, // rollout / flow head fusion: "max" or "min"; null = mean
  text2: null, // compare: the second prompt
  generate: null, // generation stepper: new tokens to generate; null = none asked for
  sampling: null, // "sample"; null = greedy
  seed: null, // sampling seed; null = 0
  temperature: null, // sampling temperature; null = 1
  step: null, // generated token shown (0 = the first one)
  start: null, // logit lens: first position of the window; null = the window of the chosen token
  key: null, // an analysis opened by its cache key (/?key=..., e.g. an uploaded capture); null = analyse model + text
  lock: null, // head view: the locked token, "q5" (query 5) or "k5" (key 5); null = none
  zoom: null, // matrix view block [row0, row1, col0, col1] (token ranges, end exclusive); null = whole matrix
  scale: null, // rollout colours and bars: "log"; null = linear
  sinks: null, // model, matrix and rollout colour scales: "keep" = include the first token and sinks; null = leave them out
  order: null, // logit lens: "top" = embeddings at the top; null = at the bottom
  // global view (AttentionViz): null is each one's default and is left out of share links
  corpus: null, // "mine" (this browser's analyses), "analysed" (the prompts analysed here), a corpus's 16-hex id; null = built-in
  projection: null, // a head's detail: "tsne" or "umap"; null = PCA (the tiles are always PCA)
  colour: null, // points coloured by "position" (in their text) or token "category"; null = query / key
  focus: null, // "head" = the chosen layer and head in detail; null = every head as a tile
  search: null, // a token whose points are highlighted; null = none
  // interventions: null is each one's default and is left out of share links
  ablate: null, // heads switched off, as flat indices (layer * heads + head); null = none
  ablateRole: null, // every head of this role switched off too ("INDUCTION"); null = none
  ablateMode: null, // "mean" = replaced by their mean over the prompt; null = zeroed
  corrupt: null, // activation patching: the corrupted prompt; null = none
  tau: null, // information-flow routes: the edge threshold (0..1); null = the paper's 0.04
};
const MAX_DETAILS = 60; // detail payloads kept per analysis (oldest dropped first)

const state = {
  ...DEFAULT_VIEW,
  projector: false,
  connection: "connecting",
  analysis: null, // {rid, key, model, text, tokens, overview, done}
  pending: null, // {rid, model, text} of the analysis in flight
  progress: null, // {stage, fraction}
  error: null, // {code, message}
  details: new Map(), // request id -> {status: "pending" | "ready" | "error", rid, payload, error}
};
const listeners = new Set();

export function getState() {
  return state;
}

/** Call `listener(state, change)` after every change; change = {view, history}. */
export function subscribe(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function notify(change) {
  for (const listener of listeners) listener(state, change);
}

function toInt(value, fallback) {
  const number = Number.parseInt(value, 10);
  return Number.isFinite(number) && number >= 0 ? number : fallback;
}

/** View fields coerced to valid types; unknown values fall back to the defaults. */
export function sanitise(partial) {
  const out = {};
  for (const [name, value] of Object.entries(partial)) {
    if (!VIEW_FIELDS.includes(name)) continue;
    if (name === "model") out.model = value || null;
    else if (name === "text") out.text = typeof value === "string" ? value : "";
    else if (name === "view") out.view = VIEW_NAMES.includes(value) ? value : DEFAULT_VIEW.view;
    else if (name === "mode") out.mode = ATTENTION_MODES.includes(value) ? value : DEFAULT_VIEW.mode;
    else if (name === "threshold") {
      const number = Number(value);
      out.threshold = Number.isFinite(number) ? Math.min(1, Math.max(0, number)) : 0;
    } else if (name === "heads") {
      out.heads = Array.isArray(value) ? [...new Set(value.map((h) => toInt(h, -1)).filter((h) => h >= 0))].sort((a, b) => a - b) : null;
    } else if (name === "token") out.token = value === null || value === undefined || value === "" ? null : toInt(value, null);
    else if (name in ANALYSIS_FIELDS) out[name] = ANALYSIS_FIELDS[name](value);
    else out[name] = toInt(value, DEFAULT_VIEW[name]);
  }
  return out;
}

const optionalInt = (value) => (value === null || value === undefined || value === "" ? null : toInt(value, null));
const matching = (pattern) => (value) => (typeof value === "string" && pattern.test(value) ? value : null);

/** Parsers of the analysis views' fields: a valid value, or null for "the default". */
const ANALYSIS_FIELDS = {
  measure: matching(/^[a-z][a-z0-9_+-]{0,23}$/),
  sort: (value) => (value === "rank" ? value : null),
  filter: matching(/^[A-Z][A-Z0-9+-]{0,15}$/),
  fusion: (value) => (value === "max" || value === "min" ? value : null),
  text2: (value) => (typeof value === "string" && value ? value : null),
  target: (value) => (typeof value === "string" && value ? value : null),
  generate: (value) => {
    const count = optionalInt(value);
    return count ? Math.min(count, limits.max_generate_tokens) : null;
  },
  sampling: (value) => (value === "sample" ? value : null),
  seed: (value) => optionalInt(value) || null,
  temperature: (value) => {
    const number = Number(value);
    if (value === null || value === "" || !Number.isFinite(number) || number === 1) return null;
    return Math.min(limits.max_temperature, Math.max(limits.min_temperature, number));
  },
  step: optionalInt,
  start: optionalInt,
  key: matching(/^[0-9a-f]{64}$/),
  lock: matching(/^[qk]\d{1,6}$/),
  zoom: (value) => {
    const ends = Array.isArray(value) ? value.map((part) => toInt(part, -1)) : [];
    const valid = ends.length === 4 && ends.every((end) => end >= 0) && ends[0] < ends[1] && ends[2] < ends[3];
    return valid ? ends : null;
  },
  scale: (value) => (value === "log" ? value : null),
  sinks: (value) => (value === "keep" ? value : null),
  order: (value) => (value === "top" ? value : null),
  corpus: (value) => (value === "analysed" || value === "mine" ? value : matching(/^[0-9a-f]{16}$/)(value)),
  projection: (value) => (value === "tsne" || value === "umap" ? value : null),
  colour: (value) => (value === "position" || value === "category" ? value : null),
  focus: (value) => (value === "head" ? value : null),
  search: (value) => (typeof value === "string" && value.trim() ? value.trim().slice(0, 40) : null),
  ablate: (value) => {
    const heads = Array.isArray(value) ? [...new Set(value.map((head) => toInt(head, -1)).filter((head) => head >= 0))] : [];
    return heads.length ? heads.sort((a, b) => a - b) : null;
  },
  ablateRole: matching(/^[A-Z][A-Z0-9+-]{0,15}$/),
  ablateMode: (value) => (value === "mean" ? value : null),
  corrupt: (value) => (typeof value === "string" && value ? value : null),
  tau: (value) => {
    const number = Number(value);
    return value === null || value === "" || !Number.isFinite(number) ? null : Math.min(1, Math.max(0.001, number));
  },
};

function sameValue(a, b) {
  return Array.isArray(a) || Array.isArray(b) ? JSON.stringify(a) === JSON.stringify(b) : a === b;
}

/**
 * Change view state. `history`: "push" (a user action: new history entry), "replace" (a
 * correction, e.g. clamping to the model's size) or "none" (restoring from history).
 * Returns whether anything changed; nothing is notified when nothing did.
 */
export function setView(partial, { history = "push" } = {}) {
  const clean = clampToAnalysis({ ...viewOf(state), ...sanitise(partial) }, state.analysis);
  const changed = VIEW_FIELDS.filter((name) => !sameValue(state[name], clean[name]));
  if (!changed.length) return false;
  for (const name of changed) state[name] = clean[name];
  notify({ view: true, history, changed });
  return true;
}

/** Change session data (analysis, details, progress, errors, display options). */
export function setData(partial) {
  Object.assign(state, partial);
  notify({ view: false });
}

/** The view fields of a state, e.g. for the URL. */
export function viewOf(source) {
  return Object.fromEntries(VIEW_FIELDS.map((name) => [name, source[name]]));
}

/** Indices clamped to the analysed model and prompt (a share link may name a larger model). */
export function clampToAnalysis(view, analysis) {
  if (!analysis) return view;
  const { layers, heads, tokens } = analysis.overview;
  const clamp = (value, size) => Math.min(Math.max(0, value), size - 1);
  return {
    ...view,
    layer: clamp(view.layer, layers),
    head: clamp(view.head, heads),
    heads: view.heads && view.heads.filter((h) => h < heads),
    token: view.token === null ? null : clamp(view.token, tokens),
    lock: view.lock && Number(view.lock.slice(1)) < tokens ? view.lock : null,
    zoom: view.zoom && view.zoom[1] <= tokens && view.zoom[3] <= tokens ? view.zoom : null,
  };
}

/** The model/text/target (or the key) a state wants analysed is the one on screen. */
export function analysisMatches(source) {
  const analysis = source.analysis;
  if (source.key || analysis?.opened) return Boolean(analysis && analysis.key === source.key); // opened by key
  return Boolean(analysis && analysis.text === source.text && analysis.target === (source.target ?? null)
    && (!source.model || analysis.model === source.model));
}

/** Heads shown in the head view: the chosen ones, or the one chosen head (one head reads clearly; all at once blend). */
export function selectedHeads(source) {
  return source.heads ?? [source.head];
}

/** Every head index of the analysed model. */
export function allHeads(source) {
  return Array.from({ length: source.analysis?.overview.heads ?? 0 }, (_, h) => h);
}

/**
 * The token the token, neuron and matrix views look at: the chosen one, else on a causal model
 * the last real token (it sees the whole prompt; the first sees only itself), else the first
 * token the tokenizer did not add.
 */
export function tokenIndex(source) {
  if (source.token !== null) return source.token;
  const special = source.analysis?.tokens.special ?? [];
  const real = special.flatMap((isSpecial, i) => (isSpecial ? [] : [i]));
  if (!real.length) return source.analysis?.tokens.info.causal ? Math.max(0, special.length - 1) : 0;
  return source.analysis.tokens.info.causal ? real[real.length - 1] : real[0];
}

/** Tokens left out of colour scales: the first token and the attention sinks, unless the user keeps them. */
export function scaleSkip(source) {
  if (source.sinks === "keep" || !source.analysis) return EMPTY_SET;
  const sinks = sinkSet(source);
  if (!skipSets.has(sinks)) skipSets.set(sinks, new Set([0, ...sinks]));
  return skipSets.get(sinks);
}

// ---- detail payloads (layer, matrix, token, neuron, stats), keyed by their request ----

/** A request descriptor {event, fields} -> a stable id for the detail cache. */
export function detailId(request) {
  return `${request.event}:${JSON.stringify(request.fields)}`;
}

/** The cached entry for a request descriptor, if any. */
export function detailFor(source, request) {
  return request ? source.details.get(detailId(request)) : undefined;
}

/** Record a detail entry by id (pending, ready or failed), dropping the oldest beyond MAX_DETAILS. */
export function putDetail(id, entry) {
  state.details.delete(id);
  state.details.set(id, entry);
  while (state.details.size > MAX_DETAILS) state.details.delete(state.details.keys().next().value);
  notify({ view: false });
}

let canceller = () => {}; // sends a `cancel` for a request id (main.js sets it: views never call the server)

/** How a request in flight is stopped on the server (main.js, which owns the socket). */
export function setCanceller(cancel) {
  canceller = cancel;
}

/** Stop a pending request (a generation): the server stops its model work; its entry keeps what
 * arrived so far with status "cancelled", and is not asked again until dropped. */
export function cancelDetail(request) {
  const id = detailId(request);
  const entry = state.details.get(id);
  if (entry?.status !== "pending") return;
  canceller(entry.rid);
  putDetail(id, { ...entry, status: "cancelled" });
}

/** Forget a request's entry (e.g. a failed one, so that it is asked again). */
export function dropDetail(request) {
  if (state.details.delete(detailId(request))) notify({ view: false });
}

const EMPTY_SET = new Set();
const sinkSets = new WeakMap(); // sinks array -> Set
const skipSets = new WeakMap(); // sink Set -> Set of the first token and the sinks

/** Indices of the analysis's attention-sink tokens (from the `heads` event), as a Set. */
export function sinkSet(source) {
  const sinks = source.analysis?.sinks;
  if (!sinks) return EMPTY_SET;
  if (!sinkSets.has(sinks)) sinkSets.set(sinks, new Set(sinks));
  return sinkSets.get(sinks);
}

/** Heads a grid strikes out (flat indices): those switched off in the run shown (an ablated
 * run), else those chosen for switching off (the `ablate` field). */
export function switchedOffHeads(source) {
  return new Set(source.analysis?.tokens?.info?.ablation?.ablate ?? source.ablate ?? []);
}

/** The detail request waiting for answer `rid`, if any. */
export function detailByRid(rid) {
  for (const [id, entry] of state.details) if (entry.status === "pending" && entry.rid === rid) return [id, entry];
  return null;
}
