// The views, in tab order, by name: view NAME is this folder's NAME.js, which exports
// need(state) and render(state, el). The server lists the same names with their tab labels
// (app/published.py VIEWS), from which the page's tabs and panels are written;
// tests/unit/test_js_protocol.py checks that the two lists agree.

export const VIEW_NAMES = ["model", "head", "token", "neuron", "matrix", "stats", "heads", "rollout", "mixing", "routes", "compare", "intervene", "lens", "generate", "global"];

/** Every view's module by name: {model: {need, render}, ...}. */
export async function loadViews() {
  const modules = await Promise.all(VIEW_NAMES.map((name) => import(`./${name}.js`)));
  return Object.fromEntries(VIEW_NAMES.map((name, i) => [name, modules[i]]));
}
