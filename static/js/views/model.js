// Model view: every head of every layer as a thumbnail of its attention matrix (rows = query,
// columns = key), from the `overview` event (uint8 [L, H, t, t], each head scaled to its own
// maximum). One canvas: the thumbnails are written into one ImageData at their native size
// and drawn scaled, so even 30 x 9 heads paint in a few milliseconds. Click a head to open it.
import { contentWidth, drawLegend, formatNumber, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme } from "../draw.js";
import { drawGrid, gridCellAt, gridKeyMove, gridLayout } from "../headgrid.js";
import { SEQUENTIAL } from "../palette.js";
import { layerKinds, layerName } from "../layers.js";
import { setView } from "../store.js";
import { changed, h, statusLine } from "../ui.js";

const GAP = 5; // px between thumbnails
const MAX_CELL = 88; // px, largest thumbnail side
const MIN_CELL = 30; // px, smallest thumbnail side (the page scrolls beyond that)
const HEIGHT_FRACTION = 0.8; // of the window height the grid tries to fit in
const LABEL_EMS = 4.5; // width of the layer-label column, in label font sizes
const NAMED_LABEL_EMS = 8.5; // ... when layers are named ("decoder 11 cross") in an encoder-decoder model
const HEADER_EMS = 2.4; // height of the head-number row, in label font sizes
const LEGEND_GAP = 8; // px between the grid and its legend
const LEGEND_HEIGHT = 10; // px
const LEGEND_WIDTH = 340; // px

const images = new WeakMap(); // overview payload -> offscreen canvas of all thumbnails
let ui = null;

export function need() {
  return null; // everything comes with the analysis
}

export function overviewImage(overview) {
  let image = images.get(overview);
  if (image) return image;
  const { layers, heads, side } = overview;
  const bytes = overview.thumbnails.data; // [L, H, t, t]
  const width = heads * side;
  const pixels = new ImageData(width, layers * side);
  for (let l = 0; l < layers; l++) {
    for (let hd = 0; hd < heads; hd++) {
      const base = (l * heads + hd) * side * side;
      for (let r = 0; r < side; r++) {
        let offset = ((l * side + r) * width + hd * side) * 4;
        for (let c = 0; c < side; c++, offset += 4) {
          const index = bytes[base + r * side + c] * 4;
          pixels.data[offset] = SEQUENTIAL[index];
          pixels.data[offset + 1] = SEQUENTIAL[index + 1];
          pixels.data[offset + 2] = SEQUENTIAL[index + 2];
          pixels.data[offset + 3] = 255;
        }
      }
    }
  }
  image = document.createElement("canvas");
  image.width = pixels.width;
  image.height = pixels.height;
  image.getContext("2d").putImageData(pixels, 0, 0);
  images.set(overview, image);
  return image;
}

/**
 * The grid of thumbnails (headgrid.js): layers down and heads across (as BertViz), or turned
 * when that gives larger thumbnails (deep models with few heads fit one screen). Named layers
 * ("decoder 3 cross") read as row labels, so they keep layers down the side.
 */
function layout(overview, width, look, named) {
  return gridLayout(overview.layers, overview.heads, width, window.innerHeight * HEIGHT_FRACTION, look, {
    minCell: MIN_CELL, maxCell: MAX_CELL, gap: GAP, labelEms: named ? NAMED_LABEL_EMS : LABEL_EMS, headerEms: HEADER_EMS,
    headsAcross: named || null });
}

function mount(el) {
  const canvas = h("canvas", { className: "model-canvas", tabindex: 0, "data-testid": "model-canvas",
    "aria-label": "Attention of every head; click one to open it in the head view" });
  const status = statusLine("Each square is one head's attention (rows: query tokens, columns: key tokens), "
    + "scaled to its own strongest link. Click a head to open it; arrow keys move, Enter opens.");
  el.append(h("div", { className: "canvas-scroll" }, [canvas]), status.root);
  ui = { el, canvas, status, geometry: null, overview: null };

  canvas.addEventListener("mousemove", (event) => {
    const cell = gridCellAt(ui.geometry, pointerIn(canvas, event));
    const hover = cell ? `${cell.layer},${cell.head}` : "";
    canvas.style.cursor = cell ? "pointer" : "default";
    if (!cell) {
      hideTooltip();
    } else {
      const peak = ui.overview.peaks.data[cell.layer * ui.overview.heads + cell.head];
      showTooltip(`${layerName(ui.info, cell.layer, true)}, head ${cell.head}\nstrongest link ${formatNumber(peak)}\nclick to open`,
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
    const cell = gridCellAt(ui.geometry, pointerIn(canvas, event));
    if (cell) {
      hideTooltip();
      setView({ view: "head", layer: cell.layer, head: cell.head, heads: [cell.head] });
    }
  });
  canvas.addEventListener("keydown", (event) => {
    const moved = gridKeyMove(ui.geometry, event.key, ui.state);
    if (moved) {
      event.preventDefault();
      setView(moved, { history: "replace" });
    } else if (event.key === "Enter") {
      setView({ view: "head", heads: [ui.state.head] });
    }
  });
  return ui;
}

function draw() {
  const { canvas, overview, state } = ui;
  if (!overview) return;
  const look = theme();
  const g = layout(overview, contentWidth(ui.el), look, Boolean(layerKinds(ui.info)));
  ui.geometry = g;
  canvas.dataset.grid = JSON.stringify({ left: g.label, top: g.header, pitch: g.pitch, cell: g.cell, headsAcross: g.headsAcross });
  const legendTop = g.height + LEGEND_GAP;
  const ctx = prepareCanvas(canvas, g.width, legendTop + LEGEND_HEIGHT + look.size * 2);
  const image = overviewImage(overview);
  const side = overview.side;
  ctx.imageSmoothingEnabled = false;
  const hover = canvas.dataset.hover ? canvas.dataset.hover.split(",").map(Number) : null;
  drawGrid(ctx, g, look, {
    paint: (layer, head, x, y, cell) => ctx.drawImage(image, head * side, layer * side, side, side, x, y, cell, cell),
    selected: { layer: state.layer, head: state.head },
    hover: hover && { layer: hover[0], head: hover[1] },
    layerName: (layer) => layerName(ui.info, layer),
  });
  drawLegend(ctx, g.label, legendTop, Math.min(LEGEND_WIDTH, g.cols * g.pitch - GAP), LEGEND_HEIGHT, SEQUENTIAL,
    ["0", "attention, each head on its own scale", "its max"], look);
}

export function render(state, el) {
  if (!ui) mount(el);
  const overview = state.analysis?.overview;
  ui.state = state;
  ui.overview = overview;
  ui.info = state.analysis?.tokens.info;
  if (overview && changed(ui, [overview, state.layer, state.head, el.clientWidth, state.projector])) draw();
}
