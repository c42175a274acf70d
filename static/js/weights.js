// The weight modes as the model, head, matrix and token views offer them: one button per mode
// (the `segmented` control's options) and the legend's words for it, written once. Modes and
// their meaning: protocol.js (ATTENTION_MODES) and docs/analyses.md (Kobayashi et al. 2020).
import { LAYER_NORM_MODES } from "./protocol.js";

const OPTIONS = {
  attention: { text: "Attention", title: "softmax attention weights" },
  scores: { text: "Scores", title: "pre-softmax q·k × scaling; masked cells hatched" },
  value: { text: "‖αf‖ share", title: "Kobayashi et al. 2020, per head: ‖α f(x)‖ as shares of each query's row" },
  norm: { text: "‖αf‖", title: "Kobayashi et al. 2020, per head: raw ‖α f(x)‖ (norm units)" },
  layer_share: { text: "‖Σαf‖ share",
    title: "Kobayashi et al. 2020, the whole layer: ‖Σ_h α_h f_h(x)‖ (heads summed before the norm) as shares of each query's row" },
  layer: { text: "‖Σαf‖", title: "Kobayashi et al. 2020, the whole layer: raw ‖Σ_h α_h f_h(x)‖ (heads summed before the norm, norm units)" },
};

/** What a value in each mode is, for legends and tooltips. */
export const WEIGHT_LABELS = {
  attention: "attention",
  scores: "score (pre-softmax)",
  value: "‖αf‖ share of the row",
  norm: "‖αf‖ (norm units)",
  layer_share: "layer ‖Σαf‖ share of the row",
  layer: "layer ‖Σαf‖ (norm units)",
};

/** The `segmented` options ({value, text, title}) of the given modes, in that order. */
export function weightOptions(modes) {
  return modes.map((value) => ({ value, ...OPTIONS[value] }));
}

/** Whether a mode draws one map for a whole layer (its heads summed) rather than one per head. */
export function isLayerMode(mode) {
  return LAYER_NORM_MODES.includes(mode);
}
