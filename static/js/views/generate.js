// Generation stepper (decoders): continue the prompt (greedy, or sampled with a seed and a
// temperature), then step through the generated tokens. For the current token: the generated
// text with it highlighted, and where it attends: its outgoing attention in every layer and
// head (rows) over the tokens so far (columns), with the mean over all heads as bars above.
// With causal attention the analysis of prompt + continuation holds exactly the attention each
// token had during generation. While the model runs, each token shows as it is chosen
// (`generated_token`: "token 7 of 20", with the attention row of the query that chose it), and
// Cancel stops the model work. Data: the `generate` stream (generated_token*, generated, tokens,
// overview, done), then `token` events on that analysis. Settings and step live in the URL, so links replay it
// (the server caches the generation).
import {
  binOf, binStart, contentWidth, displayToken, drawLegend, fitText, formatNumber, hatchPattern, heatmapImage,
  hideTooltip, labelWidth, pointerIn, poolColumns, prepareCanvas, showTooltip, theme, tokenLabels,
} from "../draw.js";
import { BAR_COLOUR, SEQUENTIAL } from "../palette.js";
import { limits } from "../settings.js";
import { cancelDetail, detailFor, dropDetail, setView } from "../store.js";
import { changed, decoderNotice, h, notice, segmented, statusLine } from "../ui.js";

const PANEL_HEIGHT = 420; // px the head rows aim for
const MIN_ROW = 2; // px per head row, at least...
const MAX_ROW = 6; // ...and at most
const LAYER_GAP = 2; // px between layer groups
const MIN_COL = 3; // px per key column; longer texts are max-pooled
const MAX_COL = 44; // px per key column
const BARS_H = 70; // px of the mean-attention bars
const MAX_LABEL = 110; // px of a column label before it ends in …
const LABEL_ANGLE = Math.PI / 3; // column labels rise at 60 degrees
const LEGEND_H = 10; // px

let ui = null;

function settings(state) {
  const sample = state.sampling === "sample";
  return { max_new_tokens: state.generate, sample, seed: sample ? state.seed ?? 0 : 0, temperature: sample ? state.temperature ?? 1 : 1 };
}

function generation(state) {
  return { event: "generate", fields: { model: state.analysis.model, text: state.text, ...settings(state) } };
}

/** The generated tokens' range [first, end) and the current one's index, once generated. */
function steps(state, result) {
  const first = result.generated.first_generated;
  const end = result.tokens.tokens.length;
  const index = Math.min(end - 1, first + (state.step ?? 0));
  return { first, end, index, count: end - first };
}

export function need(state) {
  if (!state.analysis?.tokens.info.causal || !state.generate) return null;
  const request = generation(state);
  const entry = detailFor(state, request);
  if (entry?.status !== "ready") return request;
  const { index, count } = steps(state, entry.payload);
  return count > 0 ? [request, { event: "token", fields: { key: entry.payload.generated.key, index } }] : request;
}

function mount(el) {
  const count = h("input", { type: "number", name: "max_new_tokens", min: 1, max: limits.max_generate_tokens,
    value: limits.default_new_tokens, "data-control": "max-new-tokens" });
  const sampling = segmented("Decoding", "sampling", [
    { value: "greedy", text: "Greedy", title: "always the most likely next token" },
    { value: "sample", text: "Sampled", title: "drawn from the distribution, with a seed so links replay it" },
  ], (value) => {
    ui.sample = value === "sample";
    syncForm();
  });
  const seed = h("input", { type: "number", name: "seed", min: 0, step: 1, value: 0, "data-control": "seed" });
  const temperature = h("input", { type: "number", name: "temperature", min: limits.min_temperature,
    max: limits.max_temperature, step: 0.05, value: 1, "data-control": "temperature" });
  const form = h("form", { className: "toolbar generate-form", "data-testid": "generate-form" }, [
    h("label", { className: "control" }, [h("span", { text: "New tokens" }), count]), sampling.root,
    h("label", { className: "control" }, [h("span", { text: "Seed" }), seed]),
    h("label", { className: "control" }, [h("span", { text: "Temperature" }), temperature]),
    h("button", { type: "submit", className: "primary", text: "Generate", "data-control": "generate" }),
  ]);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const wanted = { generate: Number(count.value) || limits.default_new_tokens, sampling: ui.sample ? "sample" : null,
      seed: ui.sample ? seed.value : null, temperature: ui.sample ? temperature.value : null, step: 0 };
    if (setView(wanted)) return;
    const request = generation(ui.state); // the same settings again: retry a failed run
    if (["error", "cancelled"].includes(detailFor(ui.state, request)?.status)) dropDetail(request);
  });
  const cancel = h("button", { type: "button", text: "Cancel", title: "stop the model: nothing more is generated",
    "data-testid": "cancel-generation", onClick: () => cancelDetail(generation(ui.state)) });
  const liveLabel = h("span", { className: "step-label", "data-testid": "generate-live-label", "aria-live": "polite" });
  const live = h("div", { className: "toolbar generate-live", "data-testid": "generate-live" }, [liveLabel, cancel]);
  const back = h("button", { type: "button", className: "quiet", text: "◀", title: "previous token", "data-control": "step-back",
    onClick: () => step(-1) });
  const forward = h("button", { type: "button", className: "quiet", text: "▶", title: "next token", "data-control": "step-forward",
    onClick: () => step(1) });
  const slider = h("input", { type: "range", min: 0, max: 0, step: 1, value: 0, name: "step", "data-control": "step" });
  slider.addEventListener("input", () => setView({ step: Number(slider.value) }, { history: "replace" }));
  const label = h("span", { className: "step-label", "data-testid": "step-label" });
  const text = h("p", { className: "generated-text", "data-testid": "generated-text" });
  text.addEventListener("click", (event) => {
    const span = event.target.closest("span[data-step]");
    if (span) setView({ step: Number(span.dataset.step) });
  });
  const heading = h("h3", {});
  const canvas = h("canvas", { "data-testid": "generate-attention",
    "aria-label": "Where the current token attends: layers and heads (rows) over the tokens so far (columns)" });
  const status = statusLine("Rows: heads, grouped by layer; columns: the tokens so far (later ones hatched). Bars: the mean over every head.");
  const stepper = h("div", { className: "toolbar stepper" }, [h("span", { className: "control-label", text: "Step" }), back, slider, forward, label]);
  const result = h("div", { className: "generate-result" }, [stepper, text, heading, h("div", { className: "canvas-scroll" }, [canvas])]);
  el.append(form, live, h("div", { className: "view-body" }, [result]), status.root);
  ui = { el, count, sampling, seed, temperature, form, slider, label, text, heading, canvas, result, status, back, forward,
    stepper, live, liveLabel, cancel, sample: false, synced: null, geometry: null };
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", hideTooltip);
  return ui;
}

function step(direction) {
  const { count } = ui.steps;
  const current = Math.min(count - 1, ui.state.step ?? 0);
  setView({ step: Math.max(0, Math.min(count - 1, current + direction)) });
}

/** Put the state's settings into the form, when they changed (not while someone types). */
function syncForm(state = null) {
  if (state) {
    const signature = JSON.stringify([state.generate, state.sampling, state.seed, state.temperature]);
    if (signature !== ui.synced) {
      ui.synced = signature;
      const wanted = settings(state);
      if (state.generate) ui.count.value = String(wanted.max_new_tokens);
      ui.sample = wanted.sample;
      ui.seed.value = String(state.seed ?? 0);
      ui.temperature.value = String(state.temperature ?? 1);
    }
  }
  ui.sampling.sync(ui.sample ? "sample" : "greedy");
  ui.seed.disabled = !ui.sample;
  ui.temperature.disabled = !ui.sample;
}

function syncText(result, current) {
  const { tokens } = result.tokens;
  const { first } = ui.steps;
  if (ui.text.dataset.key !== result.generated.key) {
    ui.text.dataset.key = result.generated.key;
    ui.text.replaceChildren(...tokens.map((token, i) => h("span", {
      "data-index": i, "data-step": i >= first ? i - first : null, className: i >= first ? "generated" : "prompt",
      title: i >= first ? `generated token ${i - first + 1}: ${JSON.stringify(token)}` : null,
      text: token.replace(/\n/g, "↵\n"), // a line break stays visible (and highlightable) as ↵
    })));
  }
  ui.text.querySelector(".current")?.classList.remove("current");
  ui.text.children[current]?.classList.add("current");
  ui.text.dataset.current = String(current);
}

/** The prompt and the tokens generated so far (the newest marked), while the model runs. */
function liveText(tokens, first) {
  ui.text.dataset.key = "live";
  ui.text.replaceChildren(...tokens.map((token, i) => h("span", {
    className: i < first ? "prompt" : i === tokens.length - 1 ? "generated newest" : "generated",
    text: token.replace(/\n/g, "↵\n"),
  })));
  delete ui.text.dataset.current; // the stepper's token: none until the result arrives
}

/** A generation in progress or cancelled: each token as the model chose it, with the attention
 * row of the token before it (the query that chose it), over every layer and head. */
function renderLive(entry, body, el) {
  const latest = entry.parts?.generated_token;
  const cancelled = entry.status === "cancelled";
  ui.cancel.hidden = cancelled;
  notice(body, "");
  if (!latest) {
    const stage = entry.parts?.progress?.stage;
    ui.liveLabel.textContent = cancelled ? "Cancelled before the first token; press Generate to run it again."
      : `Generating${stage ? ` (${stage})` : ""}…`;
    return;
  }
  const { total, tokens, attention } = latest;
  const made = latest.step + 1; // tokens generated so far
  const n = tokens.length - 1; // tokens before the new one: the columns of its attention row
  const word = `«${displayToken(tokens[n])}»`;
  ui.liveLabel.textContent = cancelled ? `Cancelled after ${made} of ${total} tokens; press Generate to run it again.`
    : entry.parts.generated ? "Generated; analysing the whole text…" : `Generating: token ${made} of ${total}: ${word}`;
  ui.live.dataset.step = String(made);
  ui.result.hidden = false;
  ui.stepper.hidden = true;
  ui.tokens = tokens;
  liveText(tokens, n + 1 - made);
  ui.heading.textContent = `«${displayToken(tokens[n - 1])}» chose ${word}: where it attended, in every layer and head`;
  ui.inputs = null; // the stepper's drawing is gone: redraw it when the result arrives
  drawAttention(attention, n - 1, tokens.slice(0, n), contentWidth(el), theme());
  delete ui.canvas.dataset.token; // data-token: the stepper's drawing of the analysed result
  ui.canvas.dataset.live = String(n - 1);
}

function hover(event) {
  const g = ui.geometry;
  if (!g) return;
  const point = pointerIn(ui.canvas, event);
  const bin = Math.floor((point.x - g.left) / g.col);
  if (bin < 0 || bin >= g.bins) return hideTooltip();
  const first = binStart(bin, g.bins, 0, g.n);
  const end = binStart(bin + 1, g.bins, 0, g.n);
  const tokens = ui.tokens;
  const key = end - first === 1 ? `«${displayToken(tokens[first])}» (token ${first})` : `tokens ${first}–${end - 1}`;
  if (point.y < g.top) return showTooltip(`${key}: mean attention ${formatNumber(g.mean[bin])}`, event.clientX, event.clientY);
  const layer = Math.floor((point.y - g.top) / g.layerH);
  const head = Math.floor((point.y - g.top - layer * g.layerH) / g.row);
  if (layer >= g.layers || head >= g.heads) return hideTooltip();
  const value = g.pooled[(layer * g.heads + head) * g.bins + bin] / 255;
  return showTooltip(`Layer ${layer}, head ${head}: «${displayToken(tokens[g.index])}» → ${key}: ${formatNumber(value)}`,
    event.clientX, event.clientY);
}

function drawAttention(outgoing, index, tokens, width, look) {
  const [layers, heads, n] = outgoing.shape;
  const row = Math.max(MIN_ROW, Math.min(MAX_ROW, Math.floor(PANEL_HEIGHT / (layers * heads))));
  const layerH = row * heads + LAYER_GAP;
  const ctx = ui.canvas.getContext("2d");
  ctx.font = look.font(0.9);
  const left = labelWidth(ctx, [`layer ${layers - 1}`, "mean of all"], 200) + 12;
  const bins = Math.max(1, Math.min(n, Math.floor((width - left - 8) / MIN_COL)));
  const col = Math.max(MIN_COL, Math.min(MAX_COL, Math.floor((width - left - 8) / bins)));
  const labelled = bins === n && col >= look.size * 1.1;
  const { labels, width: widest } = tokenLabels(ctx, tokens, MAX_LABEL);
  const labelsH = labelled ? widest * Math.sin(LABEL_ANGLE) + look.size : look.size * 1.5;
  const pooled = poolColumns(outgoing.data, layers * heads, n, bins);
  const mean = new Float32Array(bins); // mean over layers and heads, per key bin
  for (let r = 0; r < layers * heads; r++) for (let b = 0; b < bins; b++) mean[b] += pooled[r * bins + b] / 255 / (layers * heads);
  const top = labelsH + BARS_H + look.size;
  const g = { left, top, col, row, layerH, layers, heads, n, bins, pooled, mean, index };
  ui.geometry = g;
  const out = prepareCanvas(ui.canvas, Math.max(width, left + bins * col + 8), top + layers * layerH + LEGEND_H + look.size * 2.6);

  out.font = look.font(0.9);
  const chosen = binOf(index, bins, n);
  if (labelled) { // column labels along the top, the current token in the accent colour
    for (let c = 0; c < n; c++) {
      out.save();
      out.translate(left + c * col + col / 2, labelsH - 4);
      out.rotate(-LABEL_ANGLE);
      out.fillStyle = c === index ? look.accent : c > index ? look.muted : look.ink;
      out.font = look.font(0.9, c === index ? "700" : "400");
      out.textAlign = "left";
      out.textBaseline = "middle";
      out.fillText(fitText(out, labels[c], MAX_LABEL), 0, 0);
      out.restore();
    }
  } else {
    out.fillStyle = look.muted;
    out.textAlign = "left";
    out.textBaseline = "bottom";
    const every = Math.ceil((look.size * 4) / col); // label every this many bins
    for (let b = 0; b < bins; b += every) out.fillText(String(binStart(b, bins, 0, n)), left + b * col, labelsH - 2);
  }
  const peak = Math.max(1e-6, ...mean);
  const barsTop = labelsH + 4;
  out.fillStyle = BAR_COLOUR;
  for (let b = 0; b < bins; b++) {
    const height = (mean[b] / peak) * (BARS_H - 8);
    out.fillRect(left + b * col + (col > 4 ? 1 : 0), barsTop + BARS_H - 8 - height, Math.max(1, col - (col > 4 ? 2 : 0)), height);
  }
  out.fillStyle = look.muted;
  out.font = look.font(0.85);
  out.textAlign = "right";
  out.textBaseline = "middle";
  out.fillText("mean of all", left - 8, barsTop + BARS_H / 2 - 8);
  out.fillText(`max ${formatNumber(peak)}`, left - 8, barsTop + BARS_H / 2 + look.size - 8);

  const image = heatmapImage(layers * heads, bins, SEQUENTIAL, (r, c) => pooled[r * bins + c]);
  out.imageSmoothingEnabled = false;
  for (let l = 0; l < layers; l++) out.drawImage(image, 0, l * heads, bins, heads, left, top + l * layerH, bins * col, heads * row);
  const every = Math.ceil(look.size / Math.max(1, layerH));
  for (let l = 0; l < layers; l += every) out.fillText(`layer ${l}`, left - 8, top + l * layerH + (heads * row) / 2);
  if (chosen + 1 < bins) { // the tokens after this one did not exist yet
    out.fillStyle = hatchPattern(out, look.muted);
    out.globalAlpha = 0.55;
    out.fillRect(left + (chosen + 1) * col, barsTop, (bins - chosen - 1) * col, top + layers * layerH - barsTop);
    out.globalAlpha = 1;
  }
  out.strokeStyle = look.accent;
  out.lineWidth = 2 * look.line;
  out.strokeRect(left + chosen * col - 1, barsTop - 2, col + 2, top + layers * layerH - barsTop);
  drawLegend(out, left, top + layers * layerH + 6, Math.min(220, Math.max(120, bins * col)), LEGEND_H, SEQUENTIAL,
    ["0", "attention", "1"], look);
}

export function render(state, el) {
  if (!ui) mount(el);
  ui.state = state;
  const analysis = state.analysis;
  if (!analysis) return;
  const body = ui.el.querySelector(".view-body");
  const causal = analysis.tokens.info.causal;
  ui.form.hidden = !causal;
  ui.result.hidden = true;
  if (!causal) {
    return decoderNotice(body, `Generation needs a decoder (a causal language model such as smollm2); ${analysis.model} is an `
      + "encoder, which reads a whole text at once and does not predict a next token.");
  }
  syncForm(state);
  ui.live.hidden = true;
  if (!state.generate) return notice(body, "Choose how many tokens to generate and press Generate.");
  const entry = detailFor(state, generation(state));
  if (entry?.status === "error") return notice(body, `Generation failed: ${entry.error.message}`, "error");
  if (entry?.status === "pending" || entry?.status === "cancelled") {
    ui.live.hidden = false;
    return renderLive(entry, body, el);
  }
  if (entry?.status !== "ready") return notice(body, "Generating…");
  ui.stepper.hidden = false;
  delete ui.canvas.dataset.live;
  const result = entry.payload;
  ui.steps = steps(state, result);
  const { index, count, first } = ui.steps;
  if (count <= 0) return notice(body, "The model ended the text at once: nothing was generated.");
  ui.result.hidden = false;
  ui.tokens = result.tokens.tokens;
  ui.slider.max = String(count - 1);
  ui.slider.value = String(index - first);
  ui.back.disabled = index === first;
  ui.forward.disabled = index === first + count - 1;
  const word = `«${displayToken(ui.tokens[index])}»`;
  ui.label.textContent = `${index - first + 1} of ${count}: ${word} (token ${index})`;
  syncText(result, index);
  const tokenEntry = detailFor(state, { event: "token", fields: { key: result.generated.key, index } });
  if (tokenEntry?.status === "error") return notice(body, tokenEntry.error.message, "error");
  notice(body, tokenEntry?.status === "ready" ? "" : "Loading attention…");
  if (tokenEntry?.status !== "ready" || !changed(ui, [tokenEntry.payload, state.projector, el.clientWidth])) return;
  ui.heading.textContent = `Where ${word} attends, in every layer and head, over the tokens before it`;
  drawAttention(tokenEntry.payload.outgoing, index, ui.tokens, contentWidth(el), theme());
  ui.canvas.dataset.token = String(index);
}
