// Model view: every head of every layer as a thumbnail of its attention matrix (rows = query,
// columns = key), from the `overview` event (uint8 [L, H, t, t], each head scaled to its own
// maximum). One canvas: the thumbnails are written into one ImageData at their native size
// and drawn scaled, so even 30 x 9 heads paint in a few milliseconds. Click a head to open it.
import { contentWidth, drawLegend, formatNumber, hideTooltip, pointerIn, prepareCanvas, showTooltip, theme } from "../draw.js";
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
 * Thumbnail size and orientation: layers down and heads across (as BertViz), or turned the
 * other way when that gives larger thumbnails (deep models with few heads fit one screen).
 */
function layout(overview, width, look, named) {
  const label = Math.round(look.size * (named ? NAMED_LABEL_EMS : LABEL_EMS));
  const header = Math.round(look.size * HEADER_EMS);
  const budget = window.innerHeight * HEIGHT_FRACTION - header;
  const fit = (rows, cols) => Math.min(MAX_CELL, Math.floor((width - label) / cols) - GAP, Math.floor(budget / rows) - GAP);
  // named layers ("decoder 3 cross") read as row labels, so they keep layers down the side
  const headsAcross = named || fit(overview.layers, overview.heads) >= fit(overview.heads, overview.layers);
  const [rows, cols] = headsAcross ? [overview.layers, overview.heads] : [overview.heads, overview.layers];
  const cell = Math.max(MIN_CELL, fit(rows, cols));
  const pitch = cell + GAP;
  const legendTop = header + rows * pitch + 8;
  return { label, header, cell, pitch, legendTop, rows, cols, headsAcross,
    width: label + cols * pitch, height: legendTop + LEGEND_HEIGHT + look.size * 2 };
}

/** Grid position [row, col] of a head. */
function place(g, layer, head) {
  return g.headsAcross ? [layer, head] : [head, layer];
}

function cellAt(point) {
  const g = ui.geometry;
  if (!g) return null;
  const col = Math.floor((point.x - g.label) / g.pitch);
  const row = Math.floor((point.y - g.header) / g.pitch);
  const inside = point.x - g.label - col * g.pitch < g.cell && point.y - g.header - row * g.pitch < g.cell;
  if (col < 0 || row < 0 || col >= g.cols || row >= g.rows || !inside) return null;
  return g.headsAcross ? { layer: row, head: col } : { layer: col, head: row };
}

function mount(el) {
  const canvas = h("canvas", { className: "model-canvas", tabindex: 0, "data-testid": "model-canvas",
    "aria-label": "Attention of every head; click one to open it in the head view" });
  const status = statusLine("Each square is one head's attention (rows: query tokens, columns: key tokens), "
    + "scaled to its own strongest link. Click a head to open it; arrow keys move, Enter opens.");
  el.append(h("div", { className: "canvas-scroll" }, [canvas]), status.root);
  ui = { el, canvas, status, geometry: null, overview: null };

  canvas.addEventListener("mousemove", (event) => {
    const cell = cellAt(pointerIn(canvas, event));
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
    const cell = cellAt(pointerIn(canvas, event));
    if (cell) {
      hideTooltip();
      setView({ view: "head", layer: cell.layer, head: cell.head, heads: [cell.head] });
    }
  });
  canvas.addEventListener("keydown", (event) => {
    const { layer, head } = ui.state;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[event.key]) {
      event.preventDefault();
      const [down, across] = moves[event.key];
      const [dLayer, dHead] = ui.geometry?.headsAcross === false ? [across, down] : [down, across];
      setView({ layer: layer + dLayer, head: head + dHead }, { history: "replace" });
    } else if (event.key === "Enter") {
      setView({ view: "head", heads: [head] });
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
  const ctx = prepareCanvas(canvas, g.width, g.height);
  const { label, header, cell, pitch } = g;
  const [rowName, colName] = g.headsAcross ? ["layer", "head"] : ["head", "layer"];

  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.9);
  ctx.textBaseline = "middle";
  ctx.textAlign = "center";
  const every = Math.ceil((look.size * 2) / pitch); // column numbers that fit
  for (let c = 0; c < g.cols; c += every) ctx.fillText(String(c), label + c * pitch + cell / 2, header * 0.65);
  ctx.textAlign = "left";
  ctx.fillText(`${colName} →`, 0, header * 0.65);
  ctx.textAlign = "right";
  const rowLabel = (r) => (rowName === "layer" ? layerName(ui.info, r) : `${rowName} ${r}`);
  for (let r = 0; r < g.rows; r++) ctx.fillText(rowLabel(r), label - 8, header + r * pitch + cell / 2);

  const image = overviewImage(overview);
  const side = overview.side;
  ctx.imageSmoothingEnabled = false;
  ctx.strokeStyle = look.faint;
  ctx.lineWidth = 1;
  for (let l = 0; l < overview.layers; l++) {
    for (let hd = 0; hd < overview.heads; hd++) {
      const [r, c] = place(g, l, hd);
      const x = label + c * pitch;
      const y = header + r * pitch;
      ctx.drawImage(image, hd * side, l * side, side, side, x, y, cell, cell);
      ctx.strokeRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
    }
  }
  const outline = (layer, head, colour, width) => {
    const [r, c] = place(g, layer, head);
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(label + c * pitch - 1.5, header + r * pitch - 1.5, cell + 3, cell + 3);
  };
  outline(state.layer, state.head, look.accent, 3 * look.line);
  if (canvas.dataset.hover) {
    const [hoverLayer, hoverHead] = canvas.dataset.hover.split(",").map(Number);
    outline(hoverLayer, hoverHead, look.ink, 2 * look.line);
  }
  drawLegend(ctx, label, g.legendTop, Math.min(LEGEND_WIDTH, g.cols * pitch - GAP), LEGEND_HEIGHT, SEQUENTIAL,
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
