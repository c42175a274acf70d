// View state <-> URL query string (docs/protocol.md "Share links"). Every view change a user
// makes pushes a history entry; back/forward restore the state of that entry.
import { DEFAULT_VIEW, VIEW_FIELDS, sanitise, setView, subscribe, viewOf } from "./store.js";

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
    partial[name] = name === "heads" ? value.split(",").filter((part) => part !== "") : value;
  }
  return { ...DEFAULT_VIEW, ...sanitise(partial) };
}

/** The absolute share link of a view state. */
export function shareUrl(view) {
  const query = toQuery(view);
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
