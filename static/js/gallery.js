// Demo gallery: curated prompts from GET /api/gallery (app/gallery.toml), each with a title, an
// explanation and a link that carries its pre-selected view. Opening an item opens its link in
// this page like a share link (fields this page does not know stay in the URL); the server has
// precomputed the analyses (`python -m app gallery`), so they open at once.
import { h } from "./ui.js";
import { openQuery } from "./url.js";

const GALLERY_URL = "/api/gallery";

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
  ui = { panel, list, status, loaded: false };
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
    ui.list.replaceChildren(...body.items.map(card));
    ui.status.textContent = body.items.length ? "" : "This server offers no gallery items for its models.";
  } catch (error) {
    ui.loaded = false; // try again next time
    ui.status.textContent = `The gallery could not be loaded: ${error.message}`;
  }
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
    h("p", { className: "gallery-text", text: item.explanation.replace(/\s+/g, " ").trim() }),
    h("p", { className: "gallery-prompt", text: `“${item.text}”` }),
  ]);
}
