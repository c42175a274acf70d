// Colour-blind-safe colours used by every view: one categorical set for heads, one sequential
// ramp for attention (white = 0, so empty cells blend with the page) and one blue/orange
// diverging ramp for signed values (vectors, scores). Ramps are 256-entry RGBA lookup tables
// so canvas code writes ImageData without per-pixel colour maths.

// Okabe & Ito (2008), then Paul Tol's "muted" set for models with more than eight heads.
export const HEAD_COLOURS = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#444444", "#B8A100",
  "#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE", "#CC6677",
];

// ColorBrewer YlGnBu (marked colour-blind safe), starting from pure white at 0.
const SEQUENTIAL_STOPS = ["#ffffff", "#edf8b1", "#c7e9b4", "#7fcdbb", "#41b6c4", "#1d91c0", "#225ea8", "#253494", "#081d58"];
// Blue (negative) -> white (0) -> orange (positive); distinguishable under all common CVD types.
const DIVERGING_STOPS = ["#08306b", "#2171b5", "#6baed6", "#c6dbef", "#f7f7f7", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704"];

export const MASKED_COLOUR = "#c8c8c8"; // cells the attention mask forbids (drawn hatched)
export const BAR_COLOUR = "#0072B2"; // Okabe-Ito blue, for bars of a single quantity
export const LUT_SIZE = 256; // entries per ramp

export function headColour(head) {
  return HEAD_COLOURS[head % HEAD_COLOURS.length];
}

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function buildLut(stops) {
  const rgb = stops.map(hexToRgb);
  const lut = new Uint8ClampedArray(LUT_SIZE * 4);
  for (let i = 0; i < LUT_SIZE; i++) {
    const position = (i / (LUT_SIZE - 1)) * (rgb.length - 1);
    const lower = Math.min(Math.floor(position), rgb.length - 2);
    const t = position - lower;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = rgb[lower][c] + (rgb[lower + 1][c] - rgb[lower][c]) * t;
    lut[i * 4 + 3] = 255;
  }
  return lut;
}

export const SEQUENTIAL = buildLut(SEQUENTIAL_STOPS);
export const DIVERGING = buildLut(DIVERGING_STOPS);

/** LUT index of a value in [0, 1] (sequential) — clamps outside values. */
export function unitIndex(value) {
  return Math.max(0, Math.min(LUT_SIZE - 1, Math.round(value * (LUT_SIZE - 1))));
}

/** LUT index of a signed value on a symmetric scale [-limit, limit] (diverging). */
export function signedIndex(value, limit) {
  return unitIndex(limit > 0 ? 0.5 + value / (2 * limit) : 0.5);
}

/** CSS colour of one LUT entry. */
export function lutColour(lut, index) {
  return `rgb(${lut[index * 4]},${lut[index * 4 + 1]},${lut[index * 4 + 2]})`;
}

// Attention sinks (tokens that soak up attention; the `heads` event's `sinks`): one badge colour
// in every view, Okabe-Ito orange, clear of the selection accent and readable with dark text.
export const SINK_COLOUR = "#E69F00";
export const DARK_INK = "#1b1f24"; // the page's --ink: text on light fills (the sink badge, light cells)

// Head roles of the head summary (docs/analyses.md), Okabe & Ito's eight colours plus greys;
// SINK shares the sink badge's orange. OFFSET-k / OFFSET+k roles take their sign's colour.
// INDUCTION and DUPLICATE (head detectors, on prompts that repeat) take black and a dark grey.
export const ROLE_COLOURS = {
  SINK: "#E69F00", INDUCTION: "#000000", DUPLICATE: "#5A5A5A", SELF: "#CC79A7", PREVIOUS: "#0072B2",
  NEXT: "#56B4E9", "OFFSET-": "#009E73", "OFFSET+": "#F0E442", DELIMITER: "#D55E00", BROAD: "#8C8C8C",
  MIXED: "#DADDE1",
};
export const ROLE_ORDER = ["SINK", "INDUCTION", "DUPLICATE", "SELF", "PREVIOUS", "NEXT", "OFFSET-", "OFFSET+",
  "DELIMITER", "BROAD", "MIXED"];

/** Colour of a role label such as "PREVIOUS" or "OFFSET-2". */
export function roleColour(role) {
  return ROLE_COLOURS[role] ?? ROLE_COLOURS[role.slice(0, 7)] ?? ROLE_COLOURS.MIXED;
}

/** Dark or white text, whichever reads better on a fill colour ("#rrggbb" or "rgb(r,g,b)"). */
export function inkOn(colour) {
  const [r, g, b] = colour.startsWith("#") ? hexToRgb(colour) : colour.match(/\d+/g).map(Number);
  const luminance = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; // of the sRGB values; enough to choose
  return luminance < 0.5 ? "#ffffff" : DARK_INK;
}
