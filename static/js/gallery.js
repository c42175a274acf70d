// Demo gallery: curated prompts from GET /api/gallery (app/gallery.toml), each with a title, an
// explanation and a link that carries its pre-selected view. Opening an item opens its link in
// this page like a share link (fields this page does not know stay in the URL); the server has
// precomputed the analyses (`python -m app gallery`), so they open at once. While the page shows
// a gallery prompt (opened here, from a link, or by the presenter), its "what to look for" stays
// as a caption card above the view, with the tokens it talks about ("token 19", quoted words) as
// chips that choose them, and marked in the views' token strips.
import { displayToken } from "./draw.js";
import { settings } from "./settings.js";
import { analysisMatches, getState, setView, subscribe } from "./store.js";
import { h } from "./ui.js";
import { openQuery } from "./url.js";

const GALLERY_URL = "/api/gallery";
const QUOTED_MAX = 24; // characters of a quoted word the caption may name as a token
const MARK = "gallery-mark"; // class of a token-strip button the caption talks about

let ui = null;

/** Build the gallery into `panel`; items load the first time it opens. */
export function mountGallery(panel) {
  const list = h("div", { className: "gallery-list", role: "list", "data-testid": "gallery-list" });
  const status = h("p", { className: "gallery-status", role: "status" });
  panel.append(h("div", { className: "panel-head" }, [
    h("h2", { text: "Demo gallery" }),
    h("p", { text: "Prompts that show something worth teaching, each opening on the view that shows it." }),
    h("button", { type: "button", className: "quiet close", text: "Close", onClick: () => toggleGallery(false) }),
  ]), status, list);
  const caption = h("aside", { className: "gallery-caption", "data-testid": "gallery-caption", hidden: true });
  document.querySelector("[role=tablist]")?.before(caption);
  ui = { panel, list, status, caption, loaded: false, items: [], shown: null };
  subscribe(showCaption);
  subscribe(() => requestAnimationFrame(markTokens)); // after the views have drawn their strips
  load();
}

/** Token indices an item's explanation names: "token 19", and quoted words ("keys", " blue")
 * matched to the prompt's tokens. */
function namedTokens(item, tokens) {
  const text = explanation(item);
  const found = new Set([...text.matchAll(/\btokens? (\d+)/g)].map(([, n]) => Number(n)));
  for (const [, word] of text.matchAll(new RegExp(`"([^"]{1,${QUOTED_MAX}})"`, "g"))) {
    tokens.forEach((token, i) => {
      if (displayToken(token) === word.trim()) found.add(i);
    });
  }
  return [...found].filter((i) => i < tokens.length).sort((a, b) => a - b);
}

/** The tokens the shown caption names, once its analysis is on the page. */
function captionTokens(state) {
  const item = ui.shown;
  if (!item || ui.caption.hidden || !state.analysis || !analysisMatches(state)) return [];
  return namedTokens(item, state.analysis.tokens.tokens);
}

/** Mark the caption's tokens in every token strip, and list them in the caption as chips. */
function markTokens() {
  const state = getState();
  const named = captionTokens(state);
  const set = new Set(named);
  for (const button of document.querySelectorAll(".view .token-strip button[data-index]")) {
    button.classList.toggle(MARK, set.has(Number(button.dataset.index)));
  }
  const signature = `${state.analysis?.key}|${named}`;
  if (!ui.chips || ui.chipsFor === signature) return;
  ui.chipsFor = signature;
  ui.chips.replaceChildren(...(named.length ? [h("span", { className: "control-label", text: "Look at" })] : []),
    ...named.map((index) => h("button", { type: "button", className: `quiet ${MARK}`, "data-token": index,
      title: `choose token ${index}`, text: `«${displayToken(state.analysis.tokens.tokens[index])}» ${index}`,
      onClick: () => setView({ token: index }) })));
}

/** The caption card of the gallery item whose model and prompt the page shows, or none. */
function showCaption(state) {
  const model = state.model || settings.default;
  const item = ui.items.find((entry) => entry.text === state.text && entry.model === model && !state.key) ?? null;
  ui.caption.hidden = !item || ui.dismissed === item;
  if (!item || ui.shown === item) return;
  ui.shown = item;
  ui.caption.dataset.item = item.id;
  ui.chips = h("p", { className: "gallery-chips", "data-testid": "gallery-chips" });
  ui.chipsFor = null;
  ui.caption.replaceChildren(
    h("div", { className: "gallery-caption-text" }, [
      h("strong", { text: `What to look for: ${item.title}` }),
      h("p", { text: explanation(item) }),
      ui.chips,
    ]),
    h("button", { type: "button", className: "quiet", text: "×", "aria-label": "Hide this caption", onClick: () => {
      ui.dismissed = item;
      ui.caption.hidden = true;
    } }),
  );
}

export function toggleGallery(open = ui.panel.hidden) {
  ui.panel.hidden = !open;
  if (open && !ui.loaded) load();
}

async function load() {
  ui.loaded = true;
  ui.status.textContent = "Loading the gallery…";
  try {
    const response = await fetch(GALLERY_URL, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    ui.items = body.items;
    ui.list.replaceChildren(...body.items.map(card));
    showCaption(getState());
    ui.status.textContent = body.items.length ? "" : "This server offers no gallery items for its models.";
  } catch (error) {
    ui.loaded = false; // try again next time
    ui.status.textContent = `The gallery could not be loaded: ${error.message}`;
  }
}

/** An item's "what to look for", on one line (the TOML keeps it wrapped). */
function explanation(item) {
  return item.explanation.replace(/\s+/g, " ").trim();
}

function card(item) {
  const query = item.link.split("?")[1] ?? "";
  const view = new URLSearchParams(query).get("view") ?? "model";
  const open = (event) => {
    event.preventDefault();
    toggleGallery(false);
    openQuery(query);
    document.querySelector("[role=tablist]")?.scrollIntoView({ block: "start", behavior: "smooth" });
  };
  return h("article", { className: "gallery-item", role: "listitem", "data-item": item.id }, [
    h("h3", {}, [h("a", { href: item.link, text: item.title, onClick: open, "data-testid": "gallery-open" })]),
    h("p", { className: "gallery-meta", text: `${item.model} · ${view} view` }),
    h("p", { className: "gallery-text", text: explanation(item) }),
    h("p", { className: "gallery-prompt", text: `“${item.text}”` }),
  ]);
}
