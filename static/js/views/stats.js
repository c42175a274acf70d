// Stats view: the server's Bokeh panel of per-head statistics for this analysis (`stats`
// event, a Bokeh json_item), rendered by the locally served BokehJS. If the server cannot
// produce it, the panel says why.
import { detailFor } from "../store.js";
import { h, notice } from "../ui.js";

let ui = null;

export function need(state) {
  if (!state.analysis) return null;
  return { event: "stats", fields: { key: state.analysis.key } };
}

function mount(el) {
  const plot = h("div", { className: "stats-plot", "data-testid": "stats-plot" });
  el.append(h("p", { className: "view-info", text: "Statistics of every head of this analysis, computed on the server." }),
    h("div", { className: "view-body" }, [plot]));
  ui = { el, plot, shown: null };
  return ui;
}

export function render(state, el) {
  if (!ui) mount(el);
  if (!state.analysis) return;
  const body = ui.el.querySelector(".view-body");
  const entry = detailFor(state, need(state));
  if (!entry || entry.status === "pending") {
    notice(body, "Computing statistics…");
    return;
  }
  if (entry.status === "error") {
    notice(body, `Statistics are not available: ${entry.error.message}`, "error");
    ui.plot.replaceChildren();
    ui.plot.dataset.state = "error";
    ui.shown = null;
    return;
  }
  if (ui.shown === entry.payload) return;
  if (!window.Bokeh?.embed) {
    notice(body, "The plotting library (BokehJS) did not load; reload the page.", "error");
    return;
  }
  notice(body, "");
  ui.plot.replaceChildren();
  ui.shown = entry.payload;
  ui.plot.dataset.state = "loading";
  window.Bokeh.embed.embed_item(entry.payload.plot, ui.plot)
    .then(() => { ui.plot.dataset.state = "ready"; })
    .catch((error) => {
      notice(body, `The statistics could not be drawn: ${error.message || error}`, "error");
      ui.plot.dataset.state = "error";
    });
}
