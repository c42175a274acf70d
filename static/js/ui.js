// Small DOM helpers shared by the views: an element builder (text only, never HTML), labelled
// selects, segmented toggles and the clickable token strip. Each control is built once and
// then synced to the store's state on every render.
import { displayToken } from "./draw.js";
import { layerName } from "./layers.js";
import { decoderModels } from "./settings.js";
import { setView } from "./store.js";

/** Build an element: props are attributes, `text` (textContent), `className`, and `on*` listeners. */
export function h(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2).toLowerCase(), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

/** A labelled <select> of numbered items (layers, heads); sync(count, value, label(i)). */
export function numberSelect(label, name, onChange) {
  const select = h("select", { name, "data-control": name, onChange: () => onChange(Number(select.value)) });
  const root = h("label", { className: "control" }, [h("span", { text: label }), select]);
  let built = "";
  return {
    root,
    sync(count, value, itemLabel = String) {
      const signature = `${count}|${itemLabel(0)}|${itemLabel(count - 1)}`;
      if (signature !== built) {
        select.replaceChildren(...Array.from({ length: count }, (_, i) => h("option", { value: i, text: itemLabel(i) })));
        built = signature;
      }
      select.value = String(value);
    },
  };
}

/** Layer and head selects; `onChange({layer})` / `onChange({head})`; sync(overview, state). */
export function layerHeadSelects(onChange) {
  const layer = numberSelect("Layer", "layer", (value) => onChange({ layer: value }));
  const head = numberSelect("Head", "head", (value) => onChange({ head: value }));
  return {
    roots: [layer.root, head.root],
    sync(overview, state) {
      layer.sync(overview.layers, state.layer, (i) => layerName(state.analysis?.tokens.info, i));
      head.sync(overview.heads, state.head);
    },
  };
}

/**
 * A labelled checkbox bound to one view field: checked <-> `on`, unchecked <-> `off` (one of them
 * null, the field's default); sync(state). Every view setting lives in the store, so it is in
 * the share link and the presenter's broadcast.
 */
export function fieldCheckbox(text, field, { on, off, title }) {
  const box = h("input", { type: "checkbox", "data-control": field, onChange: () => setView({ [field]: box.checked ? on : off }) });
  return {
    root: h("label", { className: "control", title }, [box, h("span", { text })]),
    sync(state) {
      box.checked = state[field] === on;
    },
  };
}

/** "Scale without the first token and sinks" (the sinks field), shared by the model, matrix and rollout views. */
export function sinkScaleToggle() {
  return fieldCheckbox("Scale without first token & sinks", "sinks", { on: null, off: "keep",
    title: "the first token and attention sinks often take most of the attention; leave them out of the colour "
      + "scale (they are clipped at its top) to see the rest" });
}

/** Buttons of which exactly one is pressed; sync(value). */
export function segmented(label, name, options, onChange) {
  const buttons = options.map(({ value, text, title }) => h("button", {
    type: "button", "data-value": value, title, text, onClick: () => onChange(value),
  }));
  const root = h("div", { className: "control segmented", role: "group", "aria-label": label, "data-control": name }, [
    h("span", { text: label }), ...buttons,
  ]);
  return {
    root,
    sync(value) {
      for (const button of buttons) button.setAttribute("aria-pressed", String(button.dataset.value === value));
    },
  };
}

/**
 * The prompt's tokens as buttons; clicking one calls onPick(index). sync(tokens, special,
 * selected, marks): `marks` maps a class name to a Set of token indices that carry it
 * (e.g. {sink: sinkSet(state)} for the attention-sink badge, {changed: ...} in compare).
 */
export function tokenStrip(label, onPick) {
  const list = h("div", { className: "token-strip", role: "group", "aria-label": label });
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-index]");
    if (button) onPick(Number(button.dataset.index));
  });
  let shown = null;
  let current = null;
  let marked = "";
  return {
    root: list,
    sync(tokens, special, selected, marks = {}) {
      if (shown !== tokens) {
        list.replaceChildren(...tokens.map((token, i) => h("button", {
          type: "button", "data-index": i, className: special[i] ? "special" : null,
          title: `token ${i}: ${JSON.stringify(token)}`, text: displayToken(token),
        })));
        shown = tokens;
        current = null;
        marked = "";
      }
      const signature = Object.entries(marks).map(([name, set]) => `${name}:${[...set]}`).join("|");
      if (signature !== marked) {
        for (const [name, set] of Object.entries(marks)) {
          for (const button of list.children) button.classList.toggle(name, set.has(Number(button.dataset.index)));
        }
        marked = signature;
      }
      if (current !== selected) {
        list.querySelector("[aria-pressed='true']")?.setAttribute("aria-pressed", "false");
        const button = list.children[selected];
        if (button) {
          button.setAttribute("aria-pressed", "true");
          if (current !== null) button.scrollIntoView({ block: "nearest", inline: "nearest" });
        }
        current = selected;
      }
    },
  };
}

/** A status line under a canvas (what the pointer is over, or a hint). */
export function statusLine(hint) {
  const line = h("p", { className: "view-status", "aria-live": "polite", text: hint });
  return {
    root: line,
    say(text) {
      line.textContent = text || hint;
    },
  };
}

/**
 * The payload a view asked for, once it has arrived (else null); until then, or when the
 * request failed, a notice at the top of the view's `body` says so. `entry` is the store's
 * detail entry for the view's request.
 */
export function arrived(body, entry, loading = "Loading…") {
  if (entry?.status === "error") notice(body, entry.error.message, "error");
  else notice(body, entry?.status === "ready" ? "" : loading);
  return entry?.status === "ready" ? entry.payload : null;
}

/** A notice that a view needs a decoder (`text` says why), with a one-click switch to each
 * model that is one: the same prompt is analysed there, and the view stays open. */
export function decoderNotice(el, text) {
  notice(el, text);
  const box = el.querySelector(":scope > .notice");
  for (const model of decoderModels()) {
    box.append(" ", h("button", { type: "button", className: "primary", text: `Switch to ${model.name}`,
      title: `Analyse this prompt on ${model.title}`, "data-switch-model": model.name, onClick: () => setView({ model: model.name }) }));
  }
}

/**
 * A form for one more prompt that a view field holds (compare's prompt B, patching's corrupted
 * prompt): a textarea, a submit button (Ctrl/Cmd+Enter too) that sets the field (null when
 * blank), and an example button; the textarea's data-control is the field's name.
 */
export function promptForm({ field, label, placeholder, submit, example, testid }) {
  const input = h("textarea", { name: field, rows: 2, spellcheck: "false", "data-control": field, placeholder });
  const root = h("form", { className: "compare-form", "data-testid": testid }, [
    h("label", { className: "field compare-field" }, [h("span", { text: label }), input]),
    h("button", { type: "submit", className: "primary", text: submit.text, "data-control": submit.control }),
    h("button", { type: "button", className: "quiet", text: example.text, "data-control": example.control,
      title: example.title, onClick: example.onClick }),
  ]);
  root.addEventListener("submit", (event) => {
    event.preventDefault();
    setView({ [field]: input.value.trim() ? input.value : null });
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) root.requestSubmit();
  });
  return { root, input };
}

/** Placeholder shown while a view waits for data, or when it failed. */
export function notice(el, text, kind = "info") {
  let box = el.querySelector(":scope > .notice");
  if (!text) {
    box?.remove();
    return;
  }
  if (!box) {
    box = h("p", { className: "notice" });
    el.prepend(box);
  }
  box.dataset.kind = kind;
  box.textContent = text;
}

/** Whether any of a view's render inputs differ (by identity) from the last call; remembers them. */
export function changed(holder, inputs) {
  const previous = holder.inputs;
  holder.inputs = inputs;
  return !previous || previous.length !== inputs.length || inputs.some((value, i) => value !== previous[i]);
}

/** A function that runs `draw` once on the next animation frame, however often it is called. */
export function frameScheduler(draw) {
  let frame = 0;
  return () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      draw();
    });
  };
}

/**
 * A scrolling window onto a tall list drawn on one canvas: the canvas sticks to the top of
 * the window and a spacer gives the scrollbar the list's full height, so only the visible
 * rows are ever drawn. `onScroll` is called on every scroll.
 */
export function virtualScroller(canvas, onScroll) {
  const spacer = h("div", { className: "spacer" });
  const root = h("div", { className: "virtual-scroll" }, [canvas, spacer]);
  root.addEventListener("scroll", onScroll, { passive: true });
  return {
    root,
    get top() {
      return root.scrollTop;
    },
    /** Fit the window to `total` px of content, at most `maxHeight`; returns the window height. */
    size(total, maxHeight) {
      const height = Math.round(Math.min(total, maxHeight));
      root.style.height = `${height}px`;
      spacer.style.height = `${Math.max(0, total - height)}px`;
      return height;
    },
    /** First and last row index visible for rows of `rowH` px after `pad` px. */
    rows(pad, rowH, count, height) {
      return [Math.max(0, Math.floor((root.scrollTop - pad) / rowH)),
        Math.min(count - 1, Math.ceil((root.scrollTop + height - pad) / rowH))];
    },
  };
}
