// Logit lens (after nostalgebraist 2020): what a decoder would predict next if it stopped after
// each layer, read by putting the residual stream through the final norm and the unembedding.
// A table of layers (rows; the embeddings at the bottom or top) x positions (columns): each
// cell holds the top-1 predicted token, coloured by its probability; hover for the top k,
// click to choose the position (and jump to the token view). Windows of as many positions as
// the server answers, paged. Data: the `lens` event (ids int32 and probs float16 [L + 1, count, k], words).
// Encoders (no next-token head) get a notice instead.
import { displayToken, drawLegend, formatNumber, hideTooltip, prepareCanvas, showTooltip, theme } from "../draw.js";
import { SEQUENTIAL, inkOn, lutColour, unitIndex } from "../palette.js";
import { limits } from "../settings.js";
import { detailFor, setView, tokenIndex } from "../store.js";
import { arrived, decoderNotice, h, segmented, statusLine } from "../ui.js";

const WINDOW = limits.lens_max_positions; // positions per lens request: as many as the server answers
const LEGEND_W = 220; // px of the colour legend
const LEGEND_H = 10; // px

let ui = null;

function windowOf(state) {
  const n = state.analysis.overview.tokens;
  const start = Math.min(state.start ?? Math.floor(tokenIndex(state) / WINDOW) * WINDOW, n - 1);
  return { start, count: Math.min(WINDOW, n - start), n };
}

export function need(state) {
  if (!state.analysis?.tokens.info.causal) return null;
  const { start, count } = windowOf(state);
  return { event: "lens", fields: { key: state.analysis.key, start, count } };
}

function mount(el) {
  const previous = h("button", { type: "button", className: "quiet", text: `◀ Previous ${WINDOW}`, "data-control": "lens-previous",
    onClick: () => page(-1) });
  const next = h("button", { type: "button", className: "quiet", text: `Next ${WINDOW} ▶`, "data-control": "lens-next",
    onClick: () => page(1) });
  const range = h("span", { className: "zoom-info" });
  const order = segmented("Embeddings", "lens-order", [
    { value: "bottom", text: "At the bottom", title: "layers read upwards, as the residual stream flows" },
    { value: "top", text: "At the top", title: "layers read downwards" },
  ], (value) => setView({ order: value === "top" ? "top" : null }));
  const table = h("table", { className: "lens-table", "data-testid": "lens-table" });
  const detail = h("div", { className: "lens-detail", "aria-live": "polite" });
  const status = statusLine("Each cell: the most likely next token after that layer at that position, shaded by its probability. "
    + "Underlined: it is the token that really comes next. Hover for the top predictions; click to choose the position.");
  const legend = h("canvas", { className: "lens-legend", "data-testid": "lens-legend",
    "aria-label": "Colour legend: a cell's shade is the probability of its top prediction, from 0 to 1" });
  el.append(h("div", { className: "toolbar" }, [previous, range, next, order.root, legend]),
    h("div", { className: "view-body" }, [h("div", { className: "lens-scroll" }, [table]), detail]), status.root);
  ui = { el, previous, next, range, order, table, detail, status, legend, built: null };

  table.addEventListener("mouseover", (event) => {
    const cell = event.target.closest("td[data-layer]");
    if (!cell) return hideTooltip();
    const box = cell.getBoundingClientRect();
    return showTooltip(predictions(Number(cell.dataset.layer), Number(cell.dataset.position)), box.right, box.top);
  });
  table.addEventListener("mouseleave", hideTooltip);
  table.addEventListener("click", (event) => {
    const cell = event.target.closest("[data-position]");
    if (!cell) return;
    ui.pinned = cell.dataset.layer === undefined ? null : Number(cell.dataset.layer);
    if (!setView({ token: Number(cell.dataset.position) })) syncSelection(ui.state);
  });
  return ui;
}

function page(direction) {
  const { start, n } = windowOf(ui.state);
  const next = Math.max(0, Math.min(n - 1, start + direction * WINDOW));
  setView({ start: next });
}

/** Top-k lines of one cell: "«word» 0.83". */
function predictions(layer, position) {
  const p = ui.payload;
  const column = position - p.start;
  const topK = p.ids.shape[2]; // predictions per cell
  const base = (layer * p.count + column) * topK;
  const where = layer === 0 ? "after the embeddings" : `after layer ${layer - 1}`;
  const lines = [`Position ${position} ${where}:`];
  for (let k = 0; k < topK; k++) {
    lines.push(`«${displayToken(p.words[String(p.ids.data[base + k])] ?? "?")}» ${formatNumber(p.probs.data[base + k])}`);
  }
  return lines.join("\n");
}

function build(state, p) {
  const tokens = state.analysis.tokens.tokens;
  const rows = p.ids.shape[0];
  const order = Array.from({ length: rows }, (_, i) => (ui.state.order === "top" ? i : rows - 1 - i));
  const positions = Array.from({ length: p.count }, (_, i) => p.start + i);
  const head = h("tr", {}, [h("th", { scope: "col", text: "input →" }), ...positions.map((i) => h("th", {
    scope: "col", "data-position": i, title: `token ${i}: ${JSON.stringify(tokens[i])}`, text: displayToken(tokens[i]) }))]);
  const body = order.map((layer) => h("tr", {}, [
    h("th", { scope: "row", text: layer === 0 ? "embeddings" : `layer ${layer - 1}` }),
    ...positions.map((position, column) => {
      const base = (layer * p.count + column) * p.ids.shape[2];
      const word = p.words[String(p.ids.data[base])] ?? "?";
      const prob = p.probs.data[base];
      const cell = h("td", { "data-layer": layer, "data-position": position, text: displayToken(word),
        className: word === tokens[position + 1] ? "hit" : null });
      const colour = lutColour(SEQUENTIAL, unitIndex(prob));
      cell.style.background = colour;
      cell.style.color = inkOn(colour);
      return cell;
    })]));
  const actual = h("tr", { className: "actual" }, [h("th", { scope: "row", text: "next token" }),
    ...positions.map((i) => h("td", { "data-position": i, text: i + 1 < tokens.length ? displayToken(tokens[i + 1]) : "—" }))]);
  ui.table.replaceChildren(h("thead", {}, [head]), h("tbody", {}, ui.embeddingsTop ? [actual, ...body] : [...body, actual]));
}

function syncSelection(state) {
  const selected = tokenIndex(state);
  for (const cell of ui.table.querySelectorAll(".selected")) cell.classList.remove("selected");
  for (const cell of ui.table.querySelectorAll(`[data-position="${selected}"]`)) cell.classList.add("selected");
  const p = ui.payload;
  ui.table.dataset.selected = String(selected);
  if (selected < p.start || selected >= p.start + p.count) {
    ui.detail.replaceChildren();
    return;
  }
  const layer = ui.pinned ?? p.ids.shape[0] - 1;
  const word = `«${displayToken(state.analysis.tokens.tokens[selected])}»`;
  ui.detail.replaceChildren(
    h("pre", { className: "lens-top", text: predictions(layer, selected) }),
    h("button", { type: "button", className: "quiet", "data-control": "lens-to-token", text: `See what attends to ${word} (token view) →`,
      onClick: () => setView({ view: "token", token: selected }) }),
  );
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  const body = ui.el.querySelector(".view-body");
  const causal = analysis.tokens.info.causal;
  for (const control of [ui.previous, ui.next, ui.order.root, ui.legend]) control.hidden = !causal;
  if (!causal) {
    ui.table.replaceChildren();
    ui.detail.replaceChildren();
    ui.range.textContent = "";
    return decoderNotice(body, `The logit lens reads what each layer would predict as the next token, so it needs a decoder `
      + `(a causal language model such as smollm2); ${analysis.model} is an encoder without a next-token head.`);
  }
  ui.order.sync(state.order === "top" ? "top" : "bottom");
  if (ui.legendLook !== state.projector) { // the shades' key, in the toolbar beside the table
    ui.legendLook = state.projector;
    const look = theme();
    const ctx = prepareCanvas(ui.legend, LEGEND_W + 8, LEGEND_H + look.size * 2 + 4);
    drawLegend(ctx, 4, 2, LEGEND_W, LEGEND_H, SEQUENTIAL, ["0", "probability of the top prediction", "1"], look, "drop");
  }
  const { start, count, n } = windowOf(state);
  ui.range.textContent = `positions ${start}–${start + count - 1} of ${n}`;
  ui.previous.disabled = start === 0;
  ui.next.disabled = start + count >= n;
  const payload = arrived(body, detailFor(state, need(state)), "Reading every layer's predictions…");
  if (!payload) return;
  if (ui.built !== payload || ui.builtOrder !== state.order) {
    ui.payload = payload;
    build(state, payload);
    ui.built = payload;
    ui.builtOrder = state.order;
    ui.table.dataset.start = String(payload.start);
  }
  syncSelection(state);
}
