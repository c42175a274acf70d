// Canvas helpers shared by the views: crisp (device-pixel) canvases, theme colours and sizes
// read from CSS custom properties (so projector mode restyles canvases too), heatmap images
// from lookup tables, label fitting, colour legends and the one floating tooltip.
import { LUT_SIZE, MASKED_COLOUR, DARK_INK, SINK_COLOUR, lutColour } from "./palette.js";
import { traced } from "./vector.js";

/** Colours and sizes of the current theme, from CSS variables on <html>. */
export function theme() {
  const css = getComputedStyle(document.documentElement);
  const read = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const size = parseFloat(read("--canvas-font-size", "13")); // px of canvas labels
  return {
    ink: read("--ink", "#1b1f24"),
    muted: read("--muted", "#5b6470"),
    faint: read("--faint", "#e4e7eb"),
    bg: read("--surface", "#ffffff"),
    accent: read("--accent", "#c2185b"),
    size,
    line: parseFloat(read("--canvas-line", "1")), // line width multiplier
    font: (scale = 1, weight = "400") => `${weight} ${Math.round(size * scale)}px ${read("--font-canvas", "sans-serif")}`,
  };
}

/** Size a canvas to CSS pixels at device resolution; returns its context in CSS-pixel units. */
export function prepareCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  width = Math.max(1, Math.round(width));
  height = Math.max(1, Math.round(height));
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return traced(canvas, ctx, width, height); // recorded for vector (SVG) exports
}

/** A token as one line of visible text (newlines and tabs as symbols, blank as ␣). */
export function displayToken(token) {
  const shown = String(token).replace(/\r?\n/g, "↵").replace(/\t/g, "⇥").trim();
  return shown || (token.length ? "␣" : "∅");
}

const labelCache = new WeakMap(); // tokens array -> Map(font|cap -> {labels, width})

/**
 * Display labels of a token list and the widest one's width (capped) in the context's
 * current font; cached per token list and font, so long prompts are measured once.
 */
export function tokenLabels(ctx, tokens, cap) {
  let byFont = labelCache.get(tokens);
  if (!byFont) labelCache.set(tokens, (byFont = new Map()));
  const key = `${ctx.font}|${cap}`;
  if (!byFont.has(key)) {
    const labels = tokens.map(displayToken);
    byFont.set(key, { labels, width: labelWidth(ctx, labels, cap) });
  }
  return byFont.get(key);
}

/** Text shortened with an ellipsis to fit `maxWidth` CSS pixels in the context's font. */
export function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let low = 0;
  let high = text.length;
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (ctx.measureText(`${text.slice(0, mid)}…`).width <= maxWidth) low = mid;
    else high = mid - 1;
  }
  return `${text.slice(0, low)}…`;
}

/** Widest label among `labels` in the context's font, capped at `cap`. */
export function labelWidth(ctx, labels, cap) {
  let widest = 0;
  for (const label of labels) {
    widest = Math.max(widest, ctx.measureText(label).width);
    if (widest >= cap) return cap;
  }
  return Math.ceil(widest);
}

/**
 * A rows x cols offscreen canvas, one pixel per cell, coloured by `lut[indexAt(r, c)]`;
 * `indexAt` may return -1 for "masked" (drawn grey). Draw it scaled with smoothing off.
 */
export function heatmapImage(rows, cols, lut, indexAt) {
  const image = new ImageData(Math.max(1, cols), Math.max(1, rows));
  const pixels = image.data;
  const grey = parseInt(MASKED_COLOUR.slice(1, 3), 16);
  for (let r = 0, offset = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++, offset += 4) {
      const index = indexAt(r, c);
      if (index < 0) {
        pixels[offset] = pixels[offset + 1] = pixels[offset + 2] = grey;
      } else {
        pixels[offset] = lut[index * 4];
        pixels[offset + 1] = lut[index * 4 + 1];
        pixels[offset + 2] = lut[index * 4 + 2];
      }
      pixels[offset + 3] = 255;
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

/** Diagonal hatching for masked cells. */
export function hatchPattern(ctx, colour) {
  const tile = document.createElement("canvas");
  tile.width = tile.height = 8;
  const t = tile.getContext("2d");
  t.fillStyle = MASKED_COLOUR;
  t.fillRect(0, 0, 8, 8);
  t.strokeStyle = colour;
  t.lineWidth = 1.5;
  t.beginPath();
  t.moveTo(0, 8); t.lineTo(8, 0);
  t.moveTo(-2, 2); t.lineTo(2, -2);
  t.moveTo(6, 10); t.lineTo(10, 6);
  t.stroke();
  return ctx.createPattern(tile, "repeat");
}

/**
 * A horizontal colour bar with labels under its ends and middle. A middle label that does not
 * fit under the bar goes beside it (`crowded: "beside"`) or is left out (`"drop"`).
 */
export function drawLegend(ctx, x, y, width, height, lut, labels, look, crowded = "beside") {
  for (let i = 0; i < width; i++) {
    ctx.fillStyle = lutColour(lut, Math.round((i / Math.max(1, width - 1)) * (LUT_SIZE - 1)));
    ctx.fillRect(x + i, y, 1.5, height);
  }
  ctx.strokeStyle = look.muted;
  ctx.lineWidth = 1;
  ctx.strokeRect(x + 0.5, y + 0.5, width - 1, height - 1);
  ctx.fillStyle = look.muted;
  ctx.font = look.font(0.85);
  ctx.textBaseline = "top";
  const [left, middle, right] = labels;
  ctx.textAlign = "left";
  ctx.fillText(left, x, y + height + 3);
  ctx.textAlign = "right";
  ctx.fillText(right, x + width, y + height + 3);
  if (!middle) return;
  const room = width - ctx.measureText(left).width - ctx.measureText(right).width - 16;
  if (ctx.measureText(middle).width <= room) {
    ctx.textAlign = "center";
    ctx.fillText(middle, x + width / 2, y + height + 3);
  } else if (crowded === "beside") {
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(middle, x + width + 8, y + height / 2);
  }
}

/** A number for labels: 3 significant digits, no exponent for everyday magnitudes. */
export function formatNumber(value) {
  if (value === -Infinity) return "masked";
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 0.001 || magnitude >= 1e5)) return value.toExponential(2);
  return value.toFixed(magnitude >= 100 ? 1 : magnitude >= 10 ? 2 : 3);
}

// ---- the floating tooltip (one for the page; text only) ----
let tooltip = null;

export function showTooltip(text, clientX, clientY) {
  if (!tooltip) {
    tooltip = document.createElement("div");
    tooltip.className = "tooltip";
    tooltip.setAttribute("role", "status");
    document.body.append(tooltip);
  }
  tooltip.textContent = text;
  tooltip.hidden = false;
  const { innerWidth, innerHeight } = window;
  const box = tooltip.getBoundingClientRect();
  const left = clientX + 14 + box.width > innerWidth ? clientX - box.width - 10 : clientX + 14;
  const top = clientY + 18 + box.height > innerHeight ? clientY - box.height - 10 : clientY + 18;
  tooltip.style.transform = `translate(${Math.max(4, left)}px, ${Math.max(4, top)}px)`;
}

export function hideTooltip() {
  if (tooltip) tooltip.hidden = true;
}

/** Mouse position in CSS pixels relative to an element. */
export function pointerIn(element, event) {
  const box = element.getBoundingClientRect();
  return { x: event.clientX - box.left, y: event.clientY - box.top };
}

/** Width of an element's content box in CSS pixels (its client width less its padding). */
export function contentWidth(element) {
  const css = getComputedStyle(element);
  return element.clientWidth - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight);
}

/**
 * First item of bin `i` when [start, end) is split into `count` bins, the split the server's
 * max-pooling uses (np.linspace(0, size, count + 1).astype(int)).
 */
export function binStart(i, count, start, end) {
  return start + Math.floor((i * (end - start)) / count);
}

/** The bin (of `count` over [0, size)) that holds item `index`: the inverse of binStart. */
export function binOf(index, count, size) {
  let bin = Math.min(count - 1, Math.floor((index * count) / size));
  while (bin + 1 < count && binStart(bin + 1, count, 0, size) <= index) bin++;
  while (bin > 0 && binStart(bin, count, 0, size) > index) bin--;
  return bin;
}

// ---- the attention-sink badge on token labels ----
const SINK_TEXT = "sink";
const SINK_FONT = 0.68; // of the label font size

/** Width in CSS px of the sink badge, plus its gap to the label (for label margins). */
export function sinkBadgeWidth(ctx, look) {
  ctx.save();
  ctx.font = look.font(SINK_FONT, "700");
  const width = Math.ceil(ctx.measureText(SINK_TEXT).width) + 10;
  ctx.restore();
  return width;
}

/**
 * A small "sink" pill centred on `y`, its left edge at `x` (or its right edge, `align` =
 * "right"), so sink tokens read the same in every view. Leaves the context's state as it was.
 */
export function drawSinkBadge(ctx, x, y, look, align = "left") {
  ctx.save();
  ctx.font = look.font(SINK_FONT, "700");
  const width = ctx.measureText(SINK_TEXT).width + 6;
  const height = Math.round(look.size * SINK_FONT) + 4;
  const left = align === "right" ? x - width : x;
  ctx.fillStyle = SINK_COLOUR;
  ctx.beginPath();
  ctx.roundRect(left, y - height / 2, width, height, 3);
  ctx.fill();
  ctx.fillStyle = DARK_INK;
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(SINK_TEXT, left + 3, y + 0.5);
  ctx.restore();
}

/** [rows, n] bytes max-pooled along the token axis to [rows, bins] (the same split as the server). */
export function poolColumns(data, rows, n, bins) {
  if (bins === n) return data;
  const out = new Uint8Array(rows * bins);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < bins; b++) {
      let top = 0;
      for (let j = binStart(b, bins, 0, n); j < binStart(b + 1, bins, 0, n); j++) top = Math.max(top, data[r * n + j]);
      out[r * bins + b] = top;
    }
  }
  return out;
}
