// Layers x heads grids, shared by the model, head-roles and compare views and the live preview
// of an analysis: one cell per head, painted by a callback, layers down and heads across (as
// BertViz) or turned when that gives larger cells (deep models with few heads); an optional order
// of the heads within each layer (sorted grids), outlines for the chosen and hovered head, hit
// testing, arrow-key moves, and a ranked list of heads.
import { hideTooltip, pointerIn, showTooltip } from "./draw.js";
import { h } from "./ui.js";

const GAP = 3; // px between cells
const LABEL_EMS = 4.6; // width of the row-label column, in label font sizes
const HEADER_EMS = 2.2; // height of the column-number row, in label font sizes
const DIM_ALPHA = 0.8; // opacity of the veil over heads a filter leaves out

/**
 * Cell size and orientation for `layers` x `heads` within `width` x `maxHeight` CSS px: the
 * orientation with the larger cells, unless `headsAcross` (true: layers down; false: layers
 * across) fixes it. `minCell`, `maxCell` and `gap` are CSS px; `labelEms` and `headerEms` size
 * the row-label column and the column-number row in label font sizes (`look` may be null when
 * both are 0). Returns the geometry every other function here takes.
 */
export function gridLayout(layers, heads, width, maxHeight, look,
  { minCell = 12, maxCell = 44, gap = GAP, labelEms = LABEL_EMS, headerEms = HEADER_EMS, headsAcross = null } = {}) {
  const label = labelEms ? Math.round(look.size * labelEms) : 0;
  const header = headerEms ? Math.round(look.size * headerEms) : 0;
  const fit = (rows, cols) => Math.min(maxCell, Math.floor((width - label) / cols) - gap, Math.floor((maxHeight - header) / rows) - gap);
  const across = headsAcross ?? fit(layers, heads) >= fit(heads, layers);
  const [rows, cols] = across ? [layers, heads] : [heads, layers];
  const cell = Math.max(minCell, fit(rows, cols));
  const pitch = cell + gap;
  return { label, header, cell, pitch, rows, cols, headsAcross: across, layers, heads, order: null, slots: null,
    width: label + cols * pitch, height: header + rows * pitch };
}

/** Sort the heads of each layer: `order[layer]` lists head indices in drawing order (null = by index). */
export function setOrder(g, order) {
  g.order = order;
  g.slots = order && order.map((heads) => {
    const slots = new Array(heads.length);
    heads.forEach((head, slot) => { slots[head] = slot; });
    return slots;
  });
}

/** Top-left corner of a head's cell. */
export function cellOrigin(g, layer, head) {
  const slot = g.slots ? g.slots[layer][head] : head;
  const [row, col] = g.headsAcross ? [layer, slot] : [slot, layer];
  return [g.label + col * g.pitch, g.header + row * g.pitch];
}

/** The head under a point (CSS px on the canvas), or null. */
export function gridCellAt(g, point) {
  if (!g) return null;
  const col = Math.floor((point.x - g.label) / g.pitch);
  const row = Math.floor((point.y - g.header) / g.pitch);
  const inside = point.x - g.label - col * g.pitch < g.cell && point.y - g.header - row * g.pitch < g.cell;
  if (col < 0 || row < 0 || col >= g.cols || row >= g.rows || !inside) return null;
  const [layer, slot] = g.headsAcross ? [row, col] : [col, row];
  return { layer, head: g.order ? g.order[layer][slot] : slot };
}

/**
 * Draw the grid at the context's origin: axis labels, `paint(layer, head, x, y, cell)` per head,
 * a veil over heads where `dim(layer, head)` is true, and outlines for `selected` and `hover`
 * ({layer, head} or null). `layerName(layer)` labels the rows when they are layers; `columns`
 * ({name, label(column)}) the columns when they are not heads.
 */
export function drawGrid(ctx, g, look, { paint, dim = () => false, selected = null, hover = null, layerName = null, columns = null }) {
  const along = g.order ? "rank" : "head";
  const [rowName, colName] = g.headsAcross ? ["layer", columns?.name ?? along] : [along, "layer"];
  const rowLabel = layerName && g.headsAcross ? layerName : (r) => `${rowName} ${r}`;
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.85);
  ctx.textBaseline = "middle";
  ctx.textAlign = "center";
  const every = Math.ceil((look.size * 2) / g.pitch); // column numbers that fit
  for (let c = 0; c < g.cols; c += every) ctx.fillText(columns ? columns.label(c) : String(c), g.label + c * g.pitch + g.cell / 2, g.header * 0.6);
  ctx.textAlign = "left";
  ctx.fillText(`${colName} →`, 0, g.header * 0.6);
  ctx.textAlign = "right";
  const rowEvery = Math.ceil((look.size * 1.1) / g.pitch);
  for (let r = 0; r < g.rows; r += rowEvery) ctx.fillText(rowLabel(r), g.label - 6, g.header + r * g.pitch + g.cell / 2);

  for (let layer = 0; layer < g.layers; layer++) {
    for (let head = 0; head < g.heads; head++) {
      const [x, y] = cellOrigin(g, layer, head);
      paint(layer, head, x, y, g.cell);
      if (dim(layer, head)) {
        ctx.globalAlpha = DIM_ALPHA;
        ctx.fillStyle = look.bg;
        ctx.fillRect(x, y, g.cell, g.cell);
        ctx.globalAlpha = 1;
      }
      ctx.strokeStyle = look.faint;
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, y + 0.5, g.cell - 1, g.cell - 1);
    }
  }
  for (const [which, colour, width] of [[selected, look.accent, 3], [hover, look.ink, 2]]) {
    if (!which) continue;
    const [x, y] = cellOrigin(g, which.layer, which.head);
    ctx.strokeStyle = colour;
    ctx.lineWidth = width * look.line;
    ctx.strokeRect(x - 1.5, y - 1.5, g.cell + 3, g.cell + 3);
  }
}

/** Publish where a grid's cells are on its canvas (data-grid), for tests and scripts that click a head. */
export function publishGrid(canvas, g, extra = {}) {
  canvas.dataset.grid = JSON.stringify({ left: g.label, top: g.header, pitch: g.pitch, cell: g.cell, headsAcross: g.headsAcross, ...extra });
}

/**
 * Pointer on a grid's canvas: a tooltip `describe(cell)` on hover, `onPick(cell)` on click.
 * `geometry()` is the grid as last drawn (layouts change with the window).
 */
export function gridPointer(canvas, geometry, describe, onPick) {
  canvas.addEventListener("mousemove", (event) => {
    const cell = gridCellAt(geometry(), pointerIn(canvas, event));
    canvas.style.cursor = cell ? "pointer" : "default";
    if (cell) showTooltip(describe(cell), event.clientX, event.clientY);
    else hideTooltip();
  });
  canvas.addEventListener("mouseleave", hideTooltip);
  canvas.addEventListener("click", (event) => {
    const cell = gridCellAt(geometry(), pointerIn(canvas, event));
    if (cell) onPick(cell, event);
  });
}

/** A diagonal stroke across a cell: the head is switched off (interventions). */
export function strikeCell(ctx, x, y, cell, look) {
  ctx.strokeStyle = look.ink;
  ctx.lineWidth = 2 * look.line;
  ctx.beginPath();
  ctx.moveTo(x + 3, y + 3);
  ctx.lineTo(x + cell - 3, y + cell - 3);
  ctx.stroke();
}

/** The ablation set with one head (flat index) added or taken out. */
export function toggledHead(chosen, index) {
  const heads = new Set(chosen ?? []);
  if (heads.has(index)) heads.delete(index);
  else heads.add(index);
  return [...heads].sort((a, b) => a - b);
}

/**
 * A titled, ordered list of heads as buttons; clicking one calls onPick({layer, head}).
 * sync(title, items) with items [{layer, head, value, note, colour}], best first.
 */
export function rankedList(name, onPick) {
  const heading = h("h3", {});
  const list = h("ol", { className: "ranked-heads", "data-testid": name });
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-layer]");
    if (button) onPick({ layer: Number(button.dataset.layer), head: Number(button.dataset.head) });
  });
  return {
    root: h("section", { className: "ranked" }, [heading, list]),
    sync(title, items) {
      heading.textContent = title;
      list.replaceChildren(...items.map(({ layer, head, value, note, colour }) => {
        const chip = h("span", { className: "chip" });
        chip.style.background = colour ?? "transparent";
        return h("li", {}, [h("button", { type: "button", className: "quiet", "data-layer": layer, "data-head": head,
          title: `open layer ${layer}, head ${head}` }, [
          chip, h("span", { className: "which", text: `L${layer} H${head}` }),
          h("span", { className: "value", text: value }), h("span", { className: "note", text: note ?? "" }),
        ])]);
      }));
    },
  };
}

const MOVES = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }; // [rows, cols]

/**
 * The head an arrow key moves to from `at` ({layer, head}) on the grid as drawn (sorted grids
 * move between slots), or null for any other key. The result is not clamped; setView clamps.
 */
export function gridKeyMove(g, key, at) {
  if (!g || !MOVES[key]) return null;
  const [down, across] = MOVES[key];
  const [dLayer, dSlot] = g.headsAcross ? [down, across] : [across, down];
  const layer = Math.max(0, Math.min(g.layers - 1, at.layer + dLayer));
  const slot = Math.max(0, Math.min(g.heads - 1, (g.slots ? g.slots[at.layer][at.head] : at.head) + dSlot));
  return { layer, head: g.order ? g.order[layer][slot] : slot };
}
