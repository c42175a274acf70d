// The server's published settings (app/published.py page_settings), read once from the page's
// #atlas-config block: its models and default model, the views' tab labels, the error titles and
// every limit the page shows or clamps to. Limits live on the server; nothing here mirrors one.
import { CLIENT_ERRORS } from "./protocol.js";

function read() {
  const block = document.getElementById("atlas-config");
  if (!block) throw new Error("the page has no #atlas-config block of settings (templates/index.html)");
  return JSON.parse(block.textContent);
}

/** {models, default, views, errors, limits}: see app/published.py. */
export const settings = read();
export const limits = settings.limits;

/** The title shown above an error's message, for a server's code or one of the page's own. */
export function errorTitle(code) {
  return settings.errors[code] ?? CLIENT_ERRORS[code] ?? "Something went wrong";
}

/** A view's tab label ("Head roles"), or its name when it has none. */
export function viewLabel(name) {
  return settings.views.find((view) => view.name === name)?.label ?? name;
}

/** The models that are causal language models (what the decoder views need), told by their
 * titles ("… Llama decoder, …"; an encoder-decoder is not one). */
export function decoderModels() {
  return settings.models.filter((model) => /\bdecoder\b/i.test(model.title) && !/encoder-decoder/i.test(model.title));
}
