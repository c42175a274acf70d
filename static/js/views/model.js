// Model view: every head of every layer as a thumbnail of its attention matrix (rows = query,
// columns = key), from the `overview` event (uint8 [L, H, t, t], each head scaled to its own
// maximum; by default rescaled without the first token's and the sinks' columns, which on a
// decoder would leave every thumbnail one dark column). One canvas: the thumbnails are written
// into one ImageData at their native size and drawn scaled, so even 30 x 9 heads paint in a
// few milliseconds. Click a head to open it. The "Weights" control swaps the thumbnails for
// Kobayashi et al. (2020)'s ||alpha f(x)|| of each head (raw, or as row shares), computed by the
// server from the stored record (`thumbnails` request) in the same layout, or for one map per
// layer of ||sum_h alpha_h f_h(x)|| (its heads summed), the layers wrapped in rows.
import { binOf, contentWidth, drawLegend, formatNumber, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme } from "../draw.js";
import { drawGrid, gridCellAt, gridKeyMove, gridLayout, publishGrid, strikeCell, toggledHead } from "../headgrid.js";
import { SEQUENTIAL } from "../palette.js";
import { layerKinds, layerName } from "../layers.js";
import { NORM_MODES } from "../protocol.js";
import { isLayerMode, WEIGHT_LABELS, weightOptions } from "../weights.js";
import { detailFor, scaleSkip, setView, switchedOffHeads } from "../store.js";
import { arrived, changed, h, notice, segmented, sinkScaleToggle, statusLine } from "../ui.js";

const GAP = 5; // px between thumbnails
const MAX_CELL = 88; // px, largest thumbnail side
const MAX_LAYER_CELL = 160; // px, largest side of a layer map (a layer mode has H times fewer maps)
const MIN_CELL = 30; // px, smallest thumbnail side (the page scrolls down beyond that)...
const NARROW_MIN_CELL = 8; // px, ...unless the heads of a layer would not fit the width (a phone)
const HEIGHT_FRACTION = 0.8; // of the window height the grid tries to fit in
const LABEL_EMS = 4.5; // width of the layer-label column, in label font sizes
const NAMED_LABEL_EMS = 8.5; // ... when layers are named ("decoder 11 cross") in an encoder-decoder model
const HEADER_EMS = 2.4; // height of the head-number row, in label font sizes
const LEGEND_HEIGHT = 10; // px
const LEGEND_WIDTH = 340; // px

const images = new WeakMap(); // overview payload -> Map(skipped columns -> offscreen canvas of all thumbnails)
let ui = null;

/** The weights the thumbnails show: attention (with the analysis) or a norm-based mode. */
function modelMode(mode) {
  return NORM_MODES.includes(mode) ? mode : "attention";
}

export function need(state) {
  const mode = modelMode(state.mode);
  if (!state.analysis || mode === "attention") return null; // attention comes with the analysis
  return { event: "thumbnails", fields: { key: state.analysis.key, mode } };
}

const LAYER_STATUS = "Each square is one layer's ‖Σ_h α_h f_h(x)‖ (Kobayashi et al. 2020): its heads' vectors summed before the norm "
  + "(rows: query tokens, columns: key tokens), scaled to its own strongest link. Click a layer to open it; arrow keys move, Enter opens.";

/** The legend's middle label: what a thumbnail shows, and on whose scale. */
function legendText(mode) {
  return `${WEIGHT_LABELS[mode]}, each ${isLayerMode(mode) ? "layer" : "head"} on its own scale`;
}

/** The thumbnail columns that hold the tokens in `skip` (thumbnails are max-pooled to `side`). */
function skippedColumns(overview, skip) {
  const { side, tokens } = overview;
  return [...new Set([...skip].filter((i) => i < tokens).map((i) => (tokens > side ? binOf(i, side, tokens) : i)))].sort((a, b) => a - b);
}

/** Each head's factor that rescales its thumbnail to its largest value outside the `skipped` columns (1 when nothing is skipped). */
function headGains(bytes, count, side, skipped) {
  const gains = new Float32Array(count).fill(1);
  if (!skipped.length) return gains;
  const skip = new Set(skipped);
  for (let i = 0; i < count; i++) {
    let peak = 0;
    for (let r = 0, at = i * side * side; r < side; r++) for (let c = 0; c < side; c++, at++) if (!skip.has(c)) peak = Math.max(peak, bytes[at]);
    gains[i] = peak ? 255 / peak : 1;
  }
  return gains;
}

/** Every thumbnail in one offscreen canvas (layers down, heads across), each head rescaled without the `skip` tokens' columns. */
export function overviewImage(overview, skip = new Set()) {
  const skipped = skippedColumns(overview, skip);
  const cached = images.get(overview) ?? new Map();
  images.set(overview, cached);
  if (cached.has(String(skipped))) return cached.get(String(skipped));
  const { layers, heads, side } = overview;
  const bytes = overview.thumbnails.data; // [L, H, t, t]
  const gains = headGains(bytes, layers * heads, side, skipped);
  const width = heads * side;
  const pixels = new ImageData(width, layers * side);
  for (let l = 0; l < layers; l++) {
    for (let hd = 0; hd < heads; hd++) {
      const base = (l * heads + hd) * side * side;
      const gain = gains[l * heads + hd];
      for (let r = 0; r < side; r++) {
        let offset = ((l * side + r) * width + hd * side) * 4;
        for (let c = 0; c < side; c++, offset += 4) {
          const index = Math.min(255, Math.round(bytes[base + r * side + c] * gain)) * 4;
          pixels.data[offset] = SEQUENTIAL[index];
          pixels.data[offset + 1] = SEQUENTIAL[index + 1];
          pixels.data[offset + 2] = SEQUENTIAL[index + 2];
          pixels.data[offset + 3] = 255;
        }
      }
    }
  }
  const image = document.createElement("canvas");
  image.width = pixels.width;
  image.height = pixels.height;
  image.getContext("2d").putImageData(pixels, 0, 0);
  cached.set(String(skipped), image);
  return image;
}

/**
 * The grid of thumbnails (headgrid.js): layers down and heads across (as BertViz) on every
 * model and screen, so a reader finds layer 3 in the same place everywhere; a layer's heads
 * always fit the width (thumbnails shrink on a phone), and deep models scroll down.
 */
function layout(overview, width, look, named) {
  const labelEms = named ? NAMED_LABEL_EMS : LABEL_EMS;
  const fitting = Math.floor((width - Math.round(look.size * labelEms)) / overview.heads) - GAP;
  return gridLayout(overview.layers, overview.heads, width, window.innerHeight * HEIGHT_FRACTION, look, {
    minCell: Math.max(NARROW_MIN_CELL, Math.min(MIN_CELL, fitting)), maxCell: MAX_CELL, gap: GAP, labelEms,
    headerEms: HEADER_EMS, headsAcross: true });
}

/**
 * The grid of a layer mode: one map per layer, `across` layers a row, `across` the divisor of
 * the layer count that gives the largest cells within the width. Returns the headgrid geometry
 * (its rows and columns are rows of layers and places in them) with `across`.
 */
function layerLayout(layers, width, look) {
  let best = null;
  for (let across = 1; across <= layers; across++) {
    if (layers % across) continue;
    const g = gridLayout(layers / across, across, width, window.innerHeight * HEIGHT_FRACTION, look, {
      minCell: MIN_CELL, maxCell: MAX_LAYER_CELL, gap: GAP, labelEms: NAMED_LABEL_EMS, headerEms: HEADER_EMS, headsAcross: true });
    if (!best || (g.width <= width && g.cell >= best.cell)) best = { ...g, across }; // ties: fewer rows
  }
  return best;
}

/** The map under a point: {layer, head} of a head, or {layer, head: null} of a layer map; null if none. */
function mapAt(point) {
  const cell = gridCellAt(ui.geometry, point);
  if (!cell || !ui.geometry.across) return cell;
  return { layer: cell.layer * ui.geometry.across + cell.head, head: null };
}

/** A layer's place {layer: row, head: column} on a layer mode's grid. */
function layerCell(layer, across) {
  return { layer: Math.floor(layer / across), head: layer % across };
}

function mount(el) {
  const canvas = h("canvas", { className: "model-canvas", tabindex: 0, "data-testid": "model-canvas",
    "aria-label": "Attention of every head; click one to open it in the head view" });
  const status = statusLine("Each square is one head's attention (rows: query tokens, columns: key tokens), "
    + "scaled to its own strongest link. Click a head to open it; arrow keys move, Enter opens; "
    + "shift-click heads to switch them off in the Interventions tab.");
  const sinkScale = sinkScaleToggle();
  const mode = segmented("Weights", "mode", weightOptions(["attention", ...NORM_MODES]), (value) => setView({ mode: value }));
  const legend = h("canvas", { className: "model-legend", "data-testid": "model-legend" }); // above the grid: seen without scrolling
  el.append(h("div", { className: "toolbar" }, [mode.root, sinkScale.root, legend]), h("div", { className: "canvas-scroll" }, [canvas]), status.root);
  ui = { el, canvas, legend, status, sinkScale, mode, geometry: null, overview: null, picture: null };

  canvas.addEventListener("mousemove", (event) => {
    const cell = gridCellAt(ui.geometry, pointerIn(canvas, event));
    const map = mapAt(pointerIn(canvas, event));
    const hover = cell ? `${cell.layer},${cell.head}` : ""; // the grid's own row and column
    canvas.style.cursor = cell ? "pointer" : "default";
    if (!map || !ui.picture || map.layer >= ui.picture.layers) { // nothing under the pointer, or a norm mode still computing
      hideTooltip();
    } else {
      const peak = ui.picture.peaks.data[map.layer * ui.picture.heads + (map.head ?? 0)];
      const which = map.head === null ? "all heads summed" : `head ${map.head}`;
      const strongest = modelMode(ui.state.mode) === "attention" ? "strongest link" : `strongest ${WEIGHT_LABELS[modelMode(ui.state.mode)]}`;
      showTooltip(`${layerName(ui.info, map.layer, true)}, ${which}\n${strongest} ${formatNumber(peak)}\nclick to open`,
        event.clientX, event.clientY);
    }
    if (canvas.dataset.hover !== hover) {
      canvas.dataset.hover = hover;
      draw();
    }
  });
  canvas.addEventListener("mouseleave", () => {
    hideTooltip();
    canvas.dataset.hover = "";
    draw();
  });
  canvas.addEventListener("click", (event) => {
    const cell = mapAt(pointerIn(canvas, event));
    if (cell && cell.head === null) { // a layer map: the head view of that layer, in the same mode
      hideTooltip();
      setView({ view: "head", layer: cell.layer });
    } else if (cell && event.shiftKey) { // choose the head for switching off (the interventions view runs it)
      setView({ ablate: toggledHead(ui.state.ablate, cell.layer * ui.overview.heads + cell.head) });
    } else if (cell) {
      hideTooltip();
      setView({ view: "head", layer: cell.layer, head: cell.head, heads: [cell.head] });
    }
  });
  canvas.addEventListener("keydown", (event) => {
    const across = ui.geometry?.across;
    const moved = gridKeyMove(ui.geometry, event.key, across ? layerCell(ui.state.layer, across) : ui.state);
    if (moved) {
      event.preventDefault();
      setView(across ? { layer: Math.min(ui.overview.layers - 1, moved.layer * across + moved.head) } : moved, { history: "replace" });
    } else if (event.key === "Enter") {
      setView({ view: "head", heads: [ui.state.head] });
    }
  });
  return ui;
}

function draw() {
  const { canvas, overview, picture, state } = ui;
  if (!overview || !picture) return;
  const look = theme();
  const mode = modelMode(state.mode);
  const layered = isLayerMode(mode); // one map per layer
  const g = layered ? layerLayout(overview.layers, contentWidth(ui.el), look) : layout(overview, contentWidth(ui.el), look, Boolean(layerKinds(ui.info)));
  ui.geometry = g;
  publishGrid(canvas, g, layered ? { across: g.across } : {});
  const ctx = prepareCanvas(canvas, g.width, g.height);
  const skip = scaleSkip(state);
  const image = overviewImage(picture, skip);
  const side = overview.side;
  const ablate = switchedOffHeads(state);
  ctx.imageSmoothingEnabled = false;
  const hover = canvas.dataset.hover ? canvas.dataset.hover.split(",").map(Number) : null;
  const paintHead = (layer, head, x, y, cell) => {
    ctx.drawImage(image, head * side, layer * side, side, side, x, y, cell, cell);
    if (ablate.has(layer * overview.heads + head)) strikeCell(ctx, x, y, cell, look);
  };
  const paintLayer = (row, place, x, y, cell) => ctx.drawImage(image, 0, (row * g.across + place) * side, side, side, x, y, cell, cell);
  drawGrid(ctx, g, look, {
    paint: layered ? paintLayer : paintHead,
    selected: layered ? layerCell(state.layer, g.across) : { layer: state.layer, head: state.head },
    hover: hover && { layer: hover[0], head: hover[1] },
    layerName: layered ? (row) => `layers ${row * g.across}–${(row + 1) * g.across - 1}` : (layer) => layerName(ui.info, layer),
    columns: layered ? { name: "layer +", label: (place) => `+${place}` } : null,
  });
  const legendWidth = Math.min(LEGEND_WIDTH, contentWidth(ui.el) - 8);
  drawLegend(prepareCanvas(ui.legend, legendWidth, LEGEND_HEIGHT + look.size * 2.4), 0, 2, legendWidth, LEGEND_HEIGHT, SEQUENTIAL,
    ["0", skip.size ? `each ${layered ? "layer" : "head"}'s scale, first token & sinks clipped` : legendText(mode), "its max"], look, "drop");
}

export function render(state, el) {
  if (!ui) mount(el);
  const overview = state.analysis?.overview;
  ui.state = state;
  ui.overview = overview;
  ui.info = state.analysis?.tokens.info;
  ui.sinkScale.sync(state);
  const mode = modelMode(state.mode);
  ui.mode.sync(mode);
  ui.picture = mode === "attention" ? overview
    : arrived(ui.el, detailFor(state, need(state)), isLayerMode(mode) ? "Computing ‖Σαf‖ for every layer…" : "Computing ‖αf‖ for every head…");
  if (mode === "attention") notice(ui.el, ""); // clears a norm mode's "Computing" notice
  ui.status.say(isLayerMode(mode) ? LAYER_STATUS : "");
  ui.canvas.dataset.mode = ui.picture ? mode : "";
  if (overview && changed(ui, [overview, ui.picture, state.layer, state.head, state.sinks, state.analysis?.sinks, el.clientWidth, state.projector, state.ablate])) draw();
}
