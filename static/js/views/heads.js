// Head roles view (after Clark et al. 2019 and Dodrio): every head of the model as one cell of
// a layers x heads grid, coloured by a measure of its attention (entropy, mean distance, sink,
// previous/self/next, delimiter and offset shares...) or by its role (SINK, PREVIOUS, BROAD...)
// or cluster. Heads can be sorted within each layer and are ranked in a list; a filter dims
// all heads but one role or cluster; the prompt's attention sinks are named. Click a head to
// open it in the head view. Data: the `heads` event (metrics float16 [L, H] per measure,
// roles [L][H] strings, clusters int32 [L, H], sinks).
import { contentWidth, displayToken, drawLegend, formatNumber, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme } from "../draw.js";
import { drawGrid, gridCellAt, gridKeyMove, gridLayout, publishGrid, rankedList, setOrder, strikeCell, toggledHead } from "../headgrid.js";
import { HEAD_COLOURS, ROLE_ORDER, SEQUENTIAL, inkOn, lutColour, roleColour, unitIndex } from "../palette.js";
import { detailFor, setView, switchedOffHeads } from "../store.js";
import { openQuery } from "../url.js";
import { arrived, changed, h, segmented, statusLine } from "../ui.js";

const HEIGHT_FRACTION = 0.62; // of the window height the grid tries to fit in
const MAX_CELL = 56; // px, largest cell side
const LEGEND_HEIGHT = 10; // px
const LEGEND_WIDTH = 300; // px
const RANKED = 12; // heads in the ranked list
const CATEGORICAL = ["role", "cluster"]; // measures coloured by category, not on a scale
// Measures with a label and a fixed [0, 1] scale; the rest (entropy, distance) scale to their maximum.
const PROBE_URL = "/api/probe"; // a repeated random-word sequence for the model (app/requests.py `probe`)
const MEASURES = {
  entropy: { label: "Entropy (nats)", unit: false },
  entropy_norm: { label: "Normalised entropy", unit: true },
  distance: { label: "Mean distance (tokens)", unit: false },
  sink: { label: "Sink share (key 0)", unit: true },
  special: { label: "Special-token share", unit: true },
  punctuation: { label: "Punctuation share", unit: true },
  delimiter: { label: "Delimiter share", unit: true },
  previous: { label: "Previous-token share", unit: true },
  self: { label: "Self share", unit: true },
  next: { label: "Next-token share", unit: true },
  // head detectors (TransformerLens conventions): duplicate and induction need a prompt that repeats
  previous_token: { label: "Previous-token score (detector)", unit: true },
  duplicate_token: { label: "Duplicate-token score (detector)", unit: true },
  induction: { label: "Induction score (detector)", unit: true },
};
// The measure that says how strongly a head plays its role (ranking within a role).
const ROLE_STRENGTH = { SINK: "sink", SELF: "self", PREVIOUS: "previous", NEXT: "next", BROAD: "entropy_norm", DELIMITER: "delimiter",
  INDUCTION: "induction", DUPLICATE: "duplicate_token" };
const TOOLTIP_MEASURES = ["entropy", "entropy_norm", "distance", "sink", "previous", "self", "next", "delimiter"];

let ui = null;

export function need(state) {
  if (!state.analysis) return null;
  return { event: "heads", fields: { key: state.analysis.key } };
}

function measureLabel(name) {
  if (name === "role") return "Role";
  if (name === "cluster") return "Cluster (similar attention maps)";
  const offset = /^offset([+-]\d+)$/.exec(name);
  return MEASURES[name]?.label ?? (offset ? `Share at offset ${offset[1]}` : name);
}

/** The measure in use: the state's, when the payload has it, else roles. */
function measureOf(state, payload) {
  const name = state.measure;
  return name && (name === "cluster" || name in payload.metrics) ? name : "role";
}

function roleStrength(payload, layer, head) {
  const role = payload.roles[layer][head];
  const name = ROLE_STRENGTH[role] ?? (role.startsWith("OFFSET") ? `offset${role.slice(6)}` : null);
  const metric = name && payload.metrics[name];
  return metric ? metric.data[layer * payload.metrics[name].shape[1] + head] : 0;
}

function categoryOf(payload, measure, layer, head) {
  return measure === "cluster" ? `CLUSTER${payload.clusters.data[layer * payload.clusters.shape[1] + head]}` : payload.roles[layer][head];
}

function categoryRank(category) {
  const index = ROLE_ORDER.findIndex((role) => category.startsWith(role));
  return category.startsWith("CLUSTER") ? Number(category.slice(7)) : index < 0 ? ROLE_ORDER.length : index;
}

function colourOf(category) {
  return category.startsWith("CLUSTER") ? HEAD_COLOURS[Number(category.slice(7)) % HEAD_COLOURS.length] : roleColour(category);
}

/** Value of the measure for sorting and the list: its metric, or the role's strength. */
function sortValue(payload, measure, layer, head) {
  if (CATEGORICAL.includes(measure)) return roleStrength(payload, layer, head);
  return payload.metrics[measure].data[layer * payload.metrics[measure].shape[1] + head];
}

function compareHeads(payload, measure) {
  return (a, b) => (CATEGORICAL.includes(measure)
    ? categoryRank(categoryOf(payload, measure, ...a)) - categoryRank(categoryOf(payload, measure, ...b)) : 0)
    || sortValue(payload, measure, ...b) - sortValue(payload, measure, ...a);
}

function mount(el) {
  const measure = h("select", { name: "measure", "data-control": "measure",
    onChange: () => setView({ measure: measure.value === "role" ? null : measure.value }) });
  const sort = segmented("Order", "sort", [
    { value: "index", text: "By head", title: "heads in index order within each layer" },
    { value: "rank", text: "Sorted", title: "heads sorted within each layer by the measure (strongest first)" },
  ], (value) => setView({ sort: value === "rank" ? "rank" : null }));
  const filter = h("select", { name: "filter", "data-control": "filter",
    onChange: () => setView({ filter: filter.value || null }) });
  const canvas = h("canvas", { className: "heads-canvas", tabindex: 0, "data-testid": "heads-canvas",
    "aria-label": "Every head coloured by the chosen measure; click one to open it in the head view" });
  const legend = h("div", { className: "roles-legend", role: "group", "aria-label": "Legend", "data-testid": "roles-legend" });
  const ranked = rankedList("ranked-heads", ({ layer, head }) => setView({ view: "head", layer, head, heads: [head] }));
  const sinks = h("p", { className: "view-info sinks-line", "data-testid": "sinks-line" });
  const stats = h("button", { type: "button", className: "quiet", text: "Distribution plots (Stats view) →",
    title: "entropy against distance for every head, on the server's Bokeh plots", onClick: () => setView({ view: "stats" }) });
  const probe = h("button", { type: "button", className: "quiet", text: "Find induction heads", "data-testid": "induction-probe",
    title: "analyse a seeded random sequence of words, repeated, and colour every head by its induction score",
    onClick: () => openProbe(probe) });
  const info = h("p", { className: "view-info" });
  const status = statusLine("Hover a head for its measures; click it to open it in the head view. "
    + "Click a legend entry to show only that role. Arrow keys move, Enter opens; shift-click heads to switch them off "
    + "in the Interventions tab.");
  el.append(
    h("div", { className: "toolbar" }, [
      h("label", { className: "control" }, [h("span", { text: "Colour by" }), measure]), sort.root,
      h("label", { className: "control" }, [h("span", { text: "Show" }), filter]), stats, probe]),
    info,
    h("div", { className: "view-body heads-body" }, [
      h("div", { className: "heads-grid" }, [h("div", { className: "canvas-scroll" }, [canvas]), legend]), ranked.root]),
    sinks, status.root,
  );
  ui = { el, measureSelect: measure, sort, filter, canvas, legend, ranked, sinks, info, status, geometry: null, hover: null };

  legend.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-category]");
    if (button) setView({ filter: ui.state.filter === button.dataset.category ? null : button.dataset.category });
  });
  canvas.addEventListener("mousemove", (event) => {
    const cell = gridCellAt(ui.geometry, pointerIn(canvas, event));
    canvas.style.cursor = cell ? "pointer" : "default";
    if (cell) showTooltip(describeHead(cell), event.clientX, event.clientY);
    else hideTooltip();
    const key = cell ? `${cell.layer},${cell.head}` : "";
    if (canvas.dataset.hover !== key) {
      canvas.dataset.hover = key;
      ui.hover = cell;
      draw();
    }
  });
  canvas.addEventListener("mouseleave", () => {
    hideTooltip();
    canvas.dataset.hover = "";
    ui.hover = null;
    draw();
  });
  canvas.addEventListener("click", (event) => {
    const cell = gridCellAt(ui.geometry, pointerIn(canvas, event));
    if (!cell) return;
    hideTooltip();
    if (event.shiftKey) setView({ ablate: toggledHead(ui.state.ablate, cell.layer * ui.geometry.heads + cell.head) }); // interventions
    else setView({ view: "head", layer: cell.layer, head: cell.head, heads: [cell.head] });
  });
  canvas.addEventListener("keydown", (event) => { // arrows move the chosen head, Enter opens it
    const { layer, head } = ui.state;
    const next = gridKeyMove(ui.geometry, event.key, { layer, head });
    if (next) {
      event.preventDefault();
      setView(next, { history: "replace" });
    } else if (event.key === "Enter") setView({ view: "head", heads: [head] });
  });
  return ui;
}

function describeHead({ layer, head }) {
  const p = ui.payload;
  const heads = p.clusters.shape[1];
  const lines = [`Layer ${layer}, head ${head}: ${p.roles[layer][head]} · cluster ${p.clusters.data[layer * heads + head]}`];
  const names = [...new Set([...(CATEGORICAL.includes(ui.measure) ? [] : [ui.measure]), ...TOOLTIP_MEASURES])];
  for (const name of names) {
    if (p.metrics[name]) lines.push(`${measureLabel(name)}: ${formatNumber(p.metrics[name].data[layer * heads + head])}`);
  }
  lines.push("click to open");
  return lines.join("\n");
}

function syncControls(state, payload, measure) {
  const names = ["role", "cluster", ...Object.keys(payload.metrics)];
  if (ui.measureSelect.childElementCount !== names.length) {
    ui.measureSelect.replaceChildren(...names.map((name) => h("option", { value: name, text: measureLabel(name) })));
  }
  ui.measureSelect.value = measure;
  ui.sort.sync(state.sort === "rank" ? "rank" : "index");
  const counts = new Map();
  for (const row of payload.roles) for (const role of row) counts.set(role, (counts.get(role) ?? 0) + 1);
  const clusters = new Map();
  for (const c of payload.clusters.data) clusters.set(`CLUSTER${c}`, (clusters.get(`CLUSTER${c}`) ?? 0) + 1);
  const byRank = (entries) => [...entries].sort((a, b) => categoryRank(a[0]) - categoryRank(b[0]) || a[0].localeCompare(b[0]));
  const roles = byRank(counts);
  const groups = byRank(clusters);
  const options = [["", "all heads"], ...roles.map(([role, n]) => [role, `${role} heads (${n})`]),
    ...groups.map(([name, n]) => [name, `cluster ${name.slice(7)} (${n})`])];
  // values and labels: a new prompt with the same roles must still show its own counts
  const signature = options.map((option) => option.join("=")).join("|");
  if (ui.filter.dataset.options !== signature) { // rebuilt only on change, so an open menu stays open
    ui.filter.replaceChildren(...options.map(([value, text]) => h("option", { value, text })));
    ui.filter.dataset.options = signature;
  }
  ui.filter.value = options.some(([value]) => value === state.filter) ? state.filter : "";
  syncLegend(measure === "cluster" ? groups : measure === "role" ? roles : [], state.filter);
}

function syncLegend(entries, filter) {
  ui.legend.hidden = !entries.length;
  ui.legend.replaceChildren(...entries.map(([category, n]) => {
    const chip = h("span", { className: "chip" });
    chip.style.background = colourOf(category);
    const name = category.startsWith("CLUSTER") ? `cluster ${category.slice(7)}` : category;
    return h("button", { type: "button", className: "legend-item", "data-category": category, "data-role": category,
      "aria-pressed": String(filter === category), title: `show only ${name} heads (click again for all)` },
    [chip, `${name} · ${n}`]);
  }));
}

function draw() {
  const { payload, state } = ui;
  if (!payload) return;
  const look = theme();
  const [layers, heads] = payload.clusters.shape;
  const measure = ui.measure;
  const g = gridLayout(layers, heads, contentWidth(ui.el.querySelector(".heads-grid")), window.innerHeight * HEIGHT_FRACTION, look,
    { maxCell: MAX_CELL });
  if (state.sort === "rank") {
    const byValue = compareHeads(payload, measure);
    setOrder(g, Array.from({ length: layers }, (_, l) => [...Array(heads).keys()]
      .sort((a, b) => byValue([l, a], [l, b]))));
  }
  ui.geometry = g;
  const numeric = !CATEGORICAL.includes(measure);
  const values = numeric ? payload.metrics[measure].data : null;
  let top = 1;
  if (numeric && !MEASURES[measure]?.unit && !measure.startsWith("offset")) top = Math.max(1e-6, ...values);
  const legendH = numeric ? LEGEND_HEIGHT + look.size * 2.4 : 0;
  publishGrid(ui.canvas, g, { order: g.order });
  ui.canvas.dataset.measure = measure;
  const ctx = prepareCanvas(ui.canvas, g.width, g.height + legendH + 4);
  const filter = state.filter;
  const ablate = switchedOffHeads(state);
  drawGrid(ctx, g, look, {
    paint: (layer, head, x, y, cell) => {
      const fill = numeric ? lutColour(SEQUENTIAL, unitIndex(values[layer * heads + head] / top))
        : colourOf(categoryOf(payload, measure, layer, head));
      ctx.fillStyle = fill;
      ctx.fillRect(x, y, cell, cell);
      if (g.order && cell >= look.size * 1.3) { // sorted: name each cell's head
        ctx.fillStyle = inkOn(fill);
        ctx.font = look.font(0.75);
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        ctx.fillText(String(head), x + cell / 2, y + cell / 2);
      }
      if (ablate.has(layer * heads + head)) strikeCell(ctx, x, y, cell, look); // chosen for switching off
    },
    dim: (layer, head) => Boolean(filter) && categoryOf(payload, filter.startsWith("CLUSTER") ? "cluster" : "role", layer, head) !== filter,
    selected: { layer: state.layer, head: state.head },
    hover: ui.hover,
  });
  if (numeric) {
    drawLegend(ctx, g.label, g.height + 6, Math.min(LEGEND_WIDTH, g.width - g.label), LEGEND_HEIGHT, SEQUENTIAL,
      ["0", measureLabel(measure), formatNumber(top)], look);
  }
}

function syncRanked(state, payload, measure) {
  const [layers, heads] = payload.clusters.shape;
  const filter = state.filter;
  let all = [];
  for (let l = 0; l < layers; l++) for (let hd = 0; hd < heads; hd++) all.push([l, hd]);
  if (filter) all = all.filter(([l, hd]) => categoryOf(payload, filter.startsWith("CLUSTER") ? "cluster" : "role", l, hd) === filter);
  else if (CATEGORICAL.includes(measure)) all = all.filter(([l, hd]) => payload.roles[l][hd] !== "MIXED");
  const numeric = !CATEGORICAL.includes(measure);
  all.sort((a, b) => sortValue(payload, measure, ...b) - sortValue(payload, measure, ...a));
  const items = all.slice(0, RANKED).map(([layer, head]) => ({
    layer, head, value: formatNumber(sortValue(payload, measure, layer, head)), note: payload.roles[layer][head],
    colour: roleColour(payload.roles[layer][head]),
  }));
  const what = numeric ? measureLabel(measure).toLowerCase() : "the share that defines their role";
  ui.ranked.sync(`${filter ? `${filter.startsWith("CLUSTER") ? `Cluster ${filter.slice(7)}` : filter} heads` : "Heads"}, ranked by ${what}`, items);
}

function syncSinks(state, payload) {
  const tokens = state.analysis.tokens.tokens;
  const named = payload.sinks.map((i) => `«${displayToken(tokens[i])}» (token ${i}, ${formatNumber(payload.sink_score.data[i])}× uniform)`);
  ui.sinks.textContent = named.length
    ? `Attention sinks: ${named.join(", ")}. Heads that park their attention there carry little information; `
      + "try the value-weighted mode of the head and matrix views."
    : "No token is flagged as an attention sink: none receives over 5× what uniform attention would give it in most "
      + "layers. SINK heads can still exist: they put half their attention on the first token, which in a short causal "
      + "prompt already gets a large share from uniform attention.";
}

/**
 * Open the model's repeated random-word sequence (GET /api/probe: the induction-head test of
 * Olsson et al. 2022) in this view, coloured by induction score; a failure shows on the button.
 */
async function openProbe(button) {
  button.disabled = true;
  try {
    const response = await fetch(`${PROBE_URL}?${new URLSearchParams({ model: ui.state.analysis?.model ?? ui.state.model ?? "" })}`,
      { headers: { Accept: "application/json" } });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.message ?? response.statusText);
    openQuery({ model: answer.model, text: answer.text, view: "heads", measure: "induction", sort: "rank" });
  } catch (error) {
    button.title = `could not build the sequence: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  if (!state.analysis) return;
  const payload = arrived(ui.el.querySelector(".heads-body"), detailFor(state, need(state)), "Computing head measures…");
  if (!payload) return;
  const measure = measureOf(state, payload);
  if (!changed(ui, [payload, measure, state.sort, state.filter, state.layer, state.head, state.projector, el.clientWidth, state.ablate])) return;
  ui.payload = payload;
  ui.measure = measure;
  syncControls(state, payload, measure);
  syncRanked(state, payload, measure);
  syncSinks(state, payload);
  const n = state.analysis.overview.tokens;
  ui.info.textContent = `${payload.roles.length} layers × ${payload.roles[0].length} heads`
    + (payload.analysed_tokens < n ? `, measured over the first ${payload.analysed_tokens} of ${n} tokens.` : ".")
    + " Roles: SINK ≥ 50% on key 0, SELF / PREVIOUS / NEXT / OFFSET ≥ 50% at that position, BROAD normalised entropy ≥ 0.8, "
    + "DELIMITER ≥ 50% on special or punctuation tokens, else MIXED."
    + (payload.repeats ? " This prompt repeats tokens: INDUCTION / DUPLICATE ≥ 0.3 of the attention on the token after / at an "
      + "earlier copy (TransformerLens head detectors)." : "");
  draw();
}
