// Interventions view: test why the model does what the other views show. Switch heads off
// (ablation: zero, or the head's mean over the prompt) and see the next-token prediction before
// and after, which heads downstream attend differently, and every view of the ablated run; or
// patch heads from this prompt (clean) into a corrupted one of the same length and see which
// heads restore the prediction (activation patching).
// State (in links and the presenter's broadcast): `ablate` (flat head indices layer * heads +
// head), `ablateRole` (every head of a role, e.g. INDUCTION), `ablateMode` ("mean"; null = zero),
// `corrupt` (the corrupted prompt).
// Data: `heads` (roles to pick by), `ablate` {key, heads, mode} -> {ablated key, effect},
// `compare` {key, other: ablated key}, and `patch` {key, corrupt} -> restored [L, H].
import { contentWidth, displayToken, drawLegend, formatNumber, prepareCanvas, theme } from "../draw.js";
import { drawGrid, gridLayout, gridPointer, publishGrid, strikeCell, toggledHead } from "../headgrid.js";
import { DIVERGING, ROLE_ORDER, SEQUENTIAL, lutColour, roleColour, signedIndex, unitIndex } from "../palette.js";
import { limits } from "../settings.js";
import { detailFor, setView } from "../store.js";
import { changed, h, notice, promptForm, segmented, statusLine } from "../ui.js";

// The indirect-object pair of Wang et al. (2022): the name to predict changes with one word.
const EXAMPLE = { text: "When Mary and John went to the store, John gave a drink to", corrupt: "When Mary and John went to the store, Paul gave a drink to" };
const GRID_HEIGHT = 0.42; // of the window height each grid may take
const LEGEND_H = 10; // px

let ui = null;

/** Flat head indices to switch off: the state's, plus every head of its role once roles are known. */
export function chosenHeads(state) {
  const explicit = state.ablate ?? [];
  if (!state.ablateRole) return explicit;
  const roles = detailFor(state, rolesRequest(state))?.payload?.roles;
  if (!roles) return null; // wait for the roles
  const heads = roles[0].length;
  const ofRole = roles.flatMap((row, layer) => row.flatMap((role, head) => (role === state.ablateRole ? [layer * heads + head] : [])));
  return [...new Set([...explicit, ...ofRole])].sort((a, b) => a - b);
}

function rolesRequest(state) {
  return { event: "heads", fields: { key: state.analysis.key } };
}

/** Patching compares next-token predictions: only a causal language model makes them. */
function isCausal(state) {
  return Boolean(state.analysis.tokens.info.causal);
}

function patchRequest(state) {
  if (!state.corrupt || !isCausal(state)) return null;
  return { event: "patch", fields: { key: state.analysis.key, corrupt: state.corrupt } };
}

function isAblatedRun(state) {
  return Boolean(state.analysis?.tokens?.info?.ablation);
}

function ablateRequest(state) {
  const heads = chosenHeads(state);
  if (!heads?.length) return null;
  return { event: "ablate", fields: { key: state.analysis.key, heads, mode: state.ablateMode ?? "zero" } };
}

export function need(state) {
  if (!state.analysis || isAblatedRun(state)) return null;
  const needs = [rolesRequest(state)];
  const ablate = ablateRequest(state);
  if (ablate) {
    needs.push(ablate);
    const answer = detailFor(state, ablate);
    if (answer?.status === "ready") needs.push({ event: "compare", fields: { key: state.analysis.key, other: answer.payload.ablated } });
  }
  const patch = patchRequest(state);
  if (patch) needs.push(patch);
  return needs;
}

function mount(el) {
  const picker = h("canvas", { "data-testid": "ablate-picker", tabindex: 0,
    "aria-label": "Every head: click to choose heads to switch off" });
  const rolesBox = h("div", { className: "toolbar intervene-roles", "data-testid": "ablate-roles" });
  const modeControl = segmented("Switch off as", "ablate-mode", [
    { value: "zero", text: "Zero", title: "the head writes nothing" },
    { value: "mean", text: "Mean", title: "the head writes its mean output over the prompt's positions" },
  ], (value) => setView({ ablateMode: value === "mean" ? value : null }));
  const run = h("button", { type: "button", className: "primary", "data-control": "ablate-run", onClick: () => {
    setView({ ablate: [...ui.picked], ablateRole: null });
  } });
  const clear = h("button", { type: "button", className: "quiet", text: "Clear", "data-control": "ablate-clear", onClick: () => {
    ui.picked.clear();
    setView({ ablate: null, ablateRole: null, ablateMode: null });
  } });
  const summary = h("p", { className: "view-info", "data-testid": "ablate-summary" });
  const table = h("table", { className: "intervene-top", "data-testid": "ablate-top" });
  const openRun = h("button", { type: "button", className: "quiet", "data-control": "open-ablated",
    text: "Open the ablated run in every view", onClick: () => setView({ key: ui.ablated }) });
  const difference = h("canvas", { "data-testid": "ablate-difference",
    "aria-label": "How much each head's attention moved when the chosen heads were switched off" });
  const effect = h("div", { className: "intervene-effect", "data-testid": "ablate-effect" }, [
    summary, h("div", { className: "intervene-pair" }, [
      h("section", {}, [h("h3", { text: "Next token, before → after" }), table]),
      h("section", {}, [h("h3", { text: "Attention moved downstream (layers × heads)" }), difference, openRun])]),
  ]);
  const { root: patchForm, input: corrupt } = promptForm({
    field: "corrupt", label: "Corrupted prompt (the prompt above is the clean one)", testid: "patch-form",
    placeholder: "The same prompt with one word changed (same number of tokens)",
    submit: { text: "Patch every head", control: "patch-run" },
    example: { text: "Example: Mary and John", control: "patch-example", title: EXAMPLE.corrupt,
      onClick: () => setView({ text: EXAMPLE.text, corrupt: EXAMPLE.corrupt }) },
  });
  const patchInfo = h("p", { className: "view-info", "data-testid": "patch-summary" });
  const patchGrid = h("canvas", { "data-testid": "patch-grid", tabindex: 0,
    "aria-label": "Share of the logit difference each head restores; click a head to choose it" });
  const patchBar = h("div", { className: "bar" });
  const patchProgress = h("div", { className: "progress", "data-testid": "patch-progress", hidden: true },
    [h("div", { className: "track" }, [patchBar])]);
  const patchBody = h("div", { className: "intervene-patch" }, [patchProgress, patchInfo, h("div", { className: "canvas-scroll" }, [patchGrid])]);
  const ablatedNote = h("div", { className: "notice", "data-testid": "ablated-run-note" });
  const status = statusLine("Click heads to choose them, or pick a role; then switch them off.");
  const ablateSection = h("section", { className: "intervene-section" }, [
    h("h3", { text: "Switch heads off (ablation)" }),
    h("div", { className: "toolbar" }, [modeControl.root, run, clear]), rolesBox,
    h("div", { className: "canvas-scroll" }, [picker]), effect]);
  const patchSection = h("section", { className: "intervene-section" }, [
    h("h3", { text: "Patch heads from this prompt into a corrupted one" }), patchForm, patchBody]);
  el.append(ablatedNote, h("div", { className: "view-body intervene" }, [ablateSection, patchSection]), status.root);
  ui = { el, picker, rolesBox, modeControl, run, summary, table, openRun, difference, effect, corrupt, patchInfo, patchGrid, patchBody, patchProgress, patchBar,
    ablatedNote, ablateSection, patchSection, status, picked: new Set(), shown: undefined };

  gridPointer(picker, () => ui.pickerGeometry, describePick, togglePick);
  gridPointer(patchGrid, () => ui.patchGeometry, describePatch, togglePick);
  gridPointer(difference, () => ui.differenceGeometry, describeDifference, (cell) => setView({ view: "head", ...cell, heads: [cell.head] }));
}

function flat({ layer, head }) {
  return layer * ui.state.analysis.overview.heads + head;
}

function togglePick(cell) {
  ui.picked = new Set(toggledHead(ui.picked, flat(cell)));
  render(ui.state, ui.el, true);
}

function describePick(cell) {
  const role = ui.roles?.[cell.layer]?.[cell.head];
  const on = ui.picked.has(flat(cell)) ? "chosen: click to keep it on" : "click to choose it";
  return `Layer ${cell.layer}, head ${cell.head}${role ? ` · ${role}` : ""}\n${on}`;
}

function describePatch(cell) {
  const value = ui.patch.restored.data[flat(cell)];
  return `Layer ${cell.layer}, head ${cell.head}\nrestores ${formatNumber(100 * value)}% of the logit difference\nclick to choose it for switching off`;
}

function describeDifference(cell) {
  return `Layer ${cell.layer}, head ${cell.head}\nattention moved ${formatNumber(ui.moved.data[flat(cell)])}\nclick to open it in the head view`;
}

/** Keep the picked set in step with the state when a link, history or the presenter changes it. */
function syncPicked(state) {
  const chosen = chosenHeads(state); // null until a role's heads are known
  const key = JSON.stringify([state.analysis.key, chosen, state.ablateMode]);
  if (ui.shown === key) return;
  ui.shown = key;
  ui.picked = new Set(chosen ?? []);
  ui.corrupt.value = state.corrupt ?? "";
}

/** One button per role the prompt's heads have ("All INDUCTION heads (3)"). */
function syncRoles(payload) {
  ui.roles = payload?.roles;
  if (!payload || !changed(ui.rolesBox, [payload])) return;
  const counts = new Map();
  for (const row of payload.roles) for (const role of row) counts.set(role, (counts.get(role) ?? 0) + 1);
  const buttons = ROLE_ORDER.filter((role) => counts.has(role)).map((role) => h("button", {
    type: "button", className: "quiet", "data-role": role, text: `All ${role} heads (${counts.get(role)})`,
    title: `choose every head labelled ${role} on this prompt`,
    onClick: () => setView({ ablate: null, ablateRole: role }),
  }));
  ui.rolesBox.replaceChildren(h("span", { className: "control-label", text: "Choose by role:" }), ...buttons);
}

function drawPicker(state, look, width) {
  const { layers, heads } = state.analysis.overview;
  const g = gridLayout(layers, heads, width, window.innerHeight * GRID_HEIGHT, look, { maxCell: 36 });
  ui.pickerGeometry = g;
  publishGrid(ui.picker, g);
  const ctx = prepareCanvas(ui.picker, Math.max(g.width, 200), g.height);
  const ablated = new Set(chosenHeads(state) ?? []);
  drawGrid(ctx, g, look, {
    paint: (layer, head, x, y, cell) => {
      const index = layer * heads + head;
      const role = ui.roles?.[layer]?.[head];
      ctx.fillStyle = ui.picked.has(index) ? look.accent : role ? roleColour(role) : look.faint;
      ctx.globalAlpha = ui.picked.has(index) ? 1 : 0.35;
      ctx.fillRect(x, y, cell, cell);
      ctx.globalAlpha = 1;
      if (ablated.has(index)) strikeCell(ctx, x, y, cell, look); // switched off in the run shown below
    },
  });
  ui.picker.dataset.picked = [...ui.picked].sort((a, b) => a - b).join(",");
}

function drawSignedGrid(canvas, geometry, data, layers, heads, width, look, labels, limit) {
  const g = gridLayout(layers, heads, width, window.innerHeight * GRID_HEIGHT, look, { maxCell: 36 });
  ui[geometry] = g;
  publishGrid(canvas, g);
  const ctx = prepareCanvas(canvas, Math.max(g.width, 220), g.height + LEGEND_H + look.size * 2.6);
  const lut = limit === null ? SEQUENTIAL : DIVERGING;
  const top = Math.max(1e-9, ...data.map(Math.abs));
  drawGrid(ctx, g, look, {
    paint: (layer, head, x, y, cell) => {
      const value = data[layer * heads + head];
      ctx.fillStyle = lutColour(lut, limit === null ? unitIndex(value / top) : signedIndex(value, limit));
      ctx.fillRect(x, y, cell, cell);
    },
    selected: null,
  });
  drawLegend(ctx, g.label, g.height + 6, Math.min(260, Math.max(180, g.width - g.label)), LEGEND_H, lut,
    labels(limit === null ? top : limit), look, "drop");
}

function percent(value) {
  return `${formatNumber(100 * value)}%`;
}

function showEffect(state, answer, moved, width, look) {
  const effect = answer.effect;
  ui.ablated = answer.ablated;
  const count = answer.heads.length;
  const how = answer.mode === "mean" ? "replaced by their mean" : "zeroed";
  if (!effect) {
    ui.summary.textContent = `${count} head${count === 1 ? "" : "s"} ${how}. This model has no language-model head, so there is `
      + "no next-token prediction to compare; the attention below and every view of the ablated run show what changed.";
    ui.table.replaceChildren();
  } else {
    const word = (id) => displayToken(effect.top.find((row) => row.id === id)?.text ?? "?");
    ui.summary.textContent = `${count} head${count === 1 ? "" : "s"} ${how}. Predicted next token «${word(effect.predicted)}»: `
      + `${percent(effect.prob_before)} → ${percent(effect.prob_after)} (logit ${effect.logit_change >= 0 ? "+" : ""}${formatNumber(effect.logit_change)}); `
      + `${effect.predicted_after === effect.predicted ? "still the top prediction" : `now «${word(effect.predicted_after)}»`}; `
      + `KL(before ‖ after) ${formatNumber(effect.kl)} nats.`;
    const rows = [...effect.top].sort((a, b) => b.before - a.before);
    ui.table.replaceChildren(
      h("tr", {}, ["Token", "Before", "After"].map((text) => h("th", { text }))),
      ...rows.map((row) => h("tr", { "data-token": row.id }, [
        h("td", { text: `«${displayToken(row.text)}»` }),
        ...["before", "after"].map((side) => h("td", {}, [
          h("span", { className: `bar bar-${side}`, style: `width:${Math.round(80 * row[side])}px` }),
          h("span", { text: percent(row[side]) })])),
      ])),
    );
  }
  if (moved) {
    ui.moved = moved.difference;
    const [layers, heads] = moved.difference.shape;
    drawSignedGrid(ui.difference, "differenceGeometry", [...moved.difference.data], layers, heads, width, look,
      (top) => ["0", "attention moved", formatNumber(top)], null);
  }
  ui.effect.hidden = false;
}

function showPatch(state, entry, width, look) {
  if (!state.corrupt) {
    ui.patchBody.hidden = true;
    return;
  }
  ui.patchBody.hidden = false;
  ui.patchGrid.hidden = true;
  if (!isCausal(state)) {
    ui.patchInfo.textContent = "";
    return notice(ui.patchBody, "Patching compares next-token predictions, so it needs a causal language model such as smollm2.");
  }
  if (entry?.status === "error") return notice(ui.patchBody, `Patching failed: ${entry.error.message}`, "error");
  ui.patchProgress.hidden = entry?.status !== "pending";
  ui.patchBar.style.width = `${Math.round(100 * (entry?.progress?.fraction ?? 0))}%`;
  if (entry?.status !== "ready") {
    const stage = entry?.progress?.stage;
    return notice(ui.patchBody, `Patching every head${stage ? `: ${stage}` : "…"} (at most ${limits.patch_max_tokens} tokens)`);
  }
  notice(ui.patchBody, "");
  const patch = entry.payload;
  ui.patch = patch;
  const [layers, heads] = [state.analysis.overview.layers, state.analysis.overview.heads];
  ui.patchInfo.textContent = `Answer «${displayToken(patch.answer_text)}» against «${displayToken(patch.foil_text)}»: logit difference `
    + `${formatNumber(patch.clean_difference)} on the clean prompt, ${formatNumber(patch.corrupt_difference)} on the corrupted one. `
    + "Each head's cell is the share of that gap restored by copying the head's clean output into the corrupted run "
    + "(1 = all of it, 0 = none, negative = the wrong way). Click heads to choose them for switching off.";
  ui.patchGrid.hidden = false;
  const data = [...patch.restored.data];
  const limit = Math.max(0.05, ...data.map(Math.abs));
  drawSignedGrid(ui.patchGrid, "patchGeometry", data, layers, heads, width, look,
    (top) => [`−${formatNumber(top)}`, "share restored", `+${formatNumber(top)}`], limit);
  ui.patchGrid.dataset.ready = "true";
}

export function render(state, el, picking = false) {
  if (!ui) mount(el);
  ui.state = state;
  if (!state.analysis) return;
  const ablatedRun = isAblatedRun(state);
  ui.ablatedNote.hidden = !ablatedRun;
  ui.ablateSection.hidden = ui.patchSection.hidden = ablatedRun;
  if (ablatedRun) {
    const { ablate, ablate_mode: mode } = state.analysis.tokens.info.ablation;
    ui.ablatedNote.replaceChildren(`This is the run with ${ablate.length} head${ablate.length === 1 ? "" : "s"} switched off (${mode}). `,
      h("button", { type: "button", className: "quiet", text: "Back to the original run", "data-control": "ablated-back",
        onClick: () => setView({ key: null }) }));
    return;
  }
  if (!picking) syncPicked(state);
  const rolesEntry = detailFor(state, rolesRequest(state));
  syncRoles(rolesEntry?.status === "ready" ? rolesEntry.payload : null);
  const look = theme();
  const width = Math.min(contentWidth(el), 720);
  const count = ui.picked.size;
  ui.run.textContent = count ? `Switch off ${count} head${count === 1 ? "" : "s"}` : "Switch off…";
  ui.run.disabled = !count;
  ui.modeControl.sync(state.ablateMode ?? "zero");
  drawPicker(state, look, width);

  const ablate = ablateRequest(state);
  const answer = ablate && detailFor(state, ablate);
  ui.effect.hidden = true;
  const body = ui.ablateSection;
  if (answer?.status === "error") notice(body, `Switching heads off failed: ${answer.error.message}`, "error");
  else if (ablate && answer?.status !== "ready") notice(body, `Running the prompt with ${ablate.fields.heads.length} heads switched off…`);
  else notice(body, state.ablateRole && !ablate ? `No head is labelled ${state.ablateRole} on this prompt.` : "");
  if (answer?.status === "ready") {
    const moved = detailFor(state, { event: "compare", fields: { key: state.analysis.key, other: answer.payload.ablated } });
    showEffect(state, answer.payload, moved?.status === "ready" ? moved.payload : null, width, look);
    ui.effect.dataset.ready = String(moved?.status === "ready");
  }
  showPatch(state, detailFor(state, patchRequest(state)), width, look);
}
