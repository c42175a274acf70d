// View state <-> URL query string (docs/protocol.md "Share links"). Every view change a user
// makes pushes a history entry; back/forward restore the state of that entry.
import { DEFAULT_VIEW, LIST_FIELDS, VIEW_FIELDS, sanitise, setView, subscribe, viewOf } from "./store.js";

/** The query string of a view state; null fields (all heads, default token) are left out. */
export function toQuery(view) {
  const params = new URLSearchParams();
  for (const name of VIEW_FIELDS) {
    const value = view[name];
    if (value === null || value === undefined || (name === "text" && !value)) continue;
    params.set(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  return params.toString();
}

/** A complete, valid view state from a query string (missing fields take their defaults). */
export function fromQuery(search) {
  const params = new URLSearchParams(search);
  const partial = {};
  for (const name of VIEW_FIELDS) {
    if (!params.has(name)) continue;
    const value = params.get(name);
    partial[name] = LIST_FIELDS.includes(name) ? value.split(",").filter((part) => part !== "") : value;
  }
  return { ...DEFAULT_VIEW, ...sanitise(partial) };
}

/** The absolute share link of a view state; query fields this page does not know stay as they are. */
export function shareUrl(view) {
  const params = new URLSearchParams(toQuery(view));
  for (const [name, value] of new URLSearchParams(location.search)) if (!VIEW_FIELDS.includes(name)) params.append(name, value);
  const query = params.toString();
  return `${location.origin}${location.pathname}${query ? `?${query}` : ""}`;
}

/** Keep the address bar in step with the store, and restore states on back/forward. */
export function bindHistory() {
  subscribe((state, change) => {
    if (!change.view || change.history === "none") return;
    const url = shareUrl(viewOf(state));
    if (url === location.href) return;
    if (change.history === "push") history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  });
  window.addEventListener("popstate", () => setView(fromQuery(location.search), { history: "none" }));
}

/**
 * Show the view of a share-link query string as opening that link would (a gallery item, the
 * presenter's view), without reloading the page: the analysis is only requested again when the
 * model or text differ. The URL becomes that query, unknown fields included. `entry`: "push"
 * (a new history entry) or "replace".
 */
export function openQuery(query, { entry = "push" } = {}) {
  const url = `${location.pathname}?${new URLSearchParams(query)}`;
  if (entry === "push") history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  setView(fromQuery(query), { history: "none" });
}
