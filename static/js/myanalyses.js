// The analyses this browser ran itself, per model: the global view's "My analyses" corpus names
// them by their keys, and the server reads them back from its cache (docs/protocol.md
// `atlas_corpus`). Kept in localStorage, the latest `limits.my_analyses_max_keys` per model; the keys
// leave the browser only in that request (and a corpus's share link names the corpus, not them).
import { limits } from "./settings.js";

const STORAGE_KEY = "attention-atlas.my-analyses"; // localStorage: {model: [analysis keys, oldest first]}
const KEY_PATTERN = /^[0-9a-f]{64}$/; // an analysis key (app/cache.py is_key)

/** {model: [keys]} as stored; anything else (another version's, edited by hand) reads as empty. */
function stored() {
  try {
    const all = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}");
    return all && typeof all === "object" && !Array.isArray(all) ? all : {};
  } catch {
    return {};
  }
}

/** Note an analysis this page ran (moved to the end if it is there already). */
export function remember(model, key) {
  const all = stored();
  const keys = (Array.isArray(all[model]) ? all[model] : []).filter((known) => known !== key);
  all[model] = [...keys, key].slice(-limits.my_analyses_max_keys);
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(all));
  } catch {
    // storage full or switched off: the corpus just leaves this analysis out
  }
}

/** The keys of this browser's analyses with `model`, oldest first. */
export function myAnalyses(model) {
  const keys = stored()[model];
  return Array.isArray(keys) ? keys.filter((key) => KEY_PATTERN.test(key)).slice(-limits.my_analyses_max_keys) : [];
}
