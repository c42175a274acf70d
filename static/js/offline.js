// A single self-contained HTML file of one analysis, made in the browser: it opens from a disk,
// an e-mail or a USB stick with no server and no internet. It embeds the tokens, the overview
// thumbnails and one layer's attention (base64 in a JSON script block) and a small inline viewer
// (offlineViewer below, copied in as source text) that draws the model-view grid and the head
// view of that layer. Its Content-Security-Policy forbids every network request.
import { HEAD_COLOURS, SEQUENTIAL } from "./palette.js";

const FORMAT_VERSION = 1; // of the embedded data

/** Bytes -> base64, in chunks (String.fromCharCode takes a bounded number of arguments). */
export function toBase64(bytes) {
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * The embedded data of an analysis: `analysis` is the store's analysis (tokens, overview with
 * decoded arrays) and `layer` the HTTP API's `layer` payload (arrays with base64 data).
 */
export function offlineData(analysis, layer, view) {
  const { overview, tokens } = analysis;
  const wire = (array) => array && { dtype: array.dtype, shape: array.shape, data: array.data };
  return {
    format: FORMAT_VERSION,
    created: new Date().toISOString(),
    model: analysis.model,
    title: tokens.info?.title || analysis.model,
    text: analysis.text,
    tokens: tokens.tokens,
    special: tokens.special,
    layers: overview.layers,
    heads: overview.heads,
    side: overview.side,
    thumbnails: toBase64(overview.thumbnails.data), // uint8 [L, H, t, t], each head scaled to its maximum
    peaks: Array.from(overview.peaks.data, (value) => Number(value.toPrecision(4))),
    layer: { index: layer.layer, format: layer.format, k: layer.k ?? null,
      attention: wire(layer.attention), indices: wire(layer.indices), values: wire(layer.values) },
    selected: { head: view.head, heads: view.heads },
    palette: { heads: HEAD_COLOURS, ramp: toBase64(SEQUENTIAL) }, // RGBA lookup table, 256 entries
  };
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** The whole offline document as a string. */
export function offlineHtml(data) {
  const json = JSON.stringify(data).replace(/</g, "\\u003c"); // no "</script>" can end the block early
  const title = `${data.text.slice(0, 60)}${data.text.length > 60 ? "…" : ""} · Attention Atlas`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header><h1>Attention Atlas</h1><p id="meta"></p><p id="prompt"></p></header>
<main>
<section><h2>Model view</h2><p class="hint">Every head of every layer: rows are query tokens, columns key tokens, each head on its own scale. Click a head of the embedded layer to show it below.</p><canvas id="model"></canvas></section>
<section><h2 id="head-title">Head view</h2><div id="heads" class="heads"></div><p class="hint">Left: queries (attending); right: keys (attended to). Hover a token to isolate its links.</p><canvas id="head"></canvas></section>
</main>
<footer>Saved from Attention Atlas. This file needs no server and makes no network requests.</footer>
<script type="application/json" id="atlas-data">${json}</script>
<script>(${offlineViewer.toString()})();</script>
</body>
</html>
`;
}

const STYLE = `
body { margin: 0; font: 15px/1.45 system-ui, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #1b1f24; background: #f4f5f7; }
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 0.8rem 1.5rem; }
header { background: #fff; border-bottom: 1px solid #e3e6ea; }
h1 { margin: 0; font-size: 1.35rem; } h2 { margin: 0 0 0.3rem; font-size: 1.1rem; }
#meta { margin: 0.2rem 0; color: #55606d; } #prompt { margin: 0; white-space: pre-wrap; }
section { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: 1rem; margin-bottom: 1rem; overflow-x: auto; }
.hint, footer { color: #55606d; font-size: 0.88rem; margin: 0.2rem 0 0.6rem; }
.heads { display: flex; flex-wrap: wrap; gap: 0.3rem; margin-bottom: 0.4rem; }
.heads button { font: inherit; border: 1px solid #cfd5dc; background: #fff; border-radius: 6px; padding: 0.1rem 0.5rem; cursor: pointer; }
.heads button[aria-pressed="false"] { opacity: 0.45; }
.heads .chip { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 3px; margin-right: 0.3rem; vertical-align: -1px; }
canvas { display: block; }
`;

/**
 * The viewer inside the offline file. It runs there, not here: it may use nothing from outside
 * its own body (it is inserted as source text), only the page's DOM and the embedded JSON.
 */
function offlineViewer() {
  const data = JSON.parse(document.getElementById("atlas-data").textContent);
  const bytes = (base64) => Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const ARRAYS = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array };
  const typed = (wire) => wire && new ARRAYS[wire.dtype](bytes(wire.data).buffer);
  const thumbs = bytes(data.thumbnails);
  const lut = bytes(data.palette.ramp);
  const layer = data.layer;
  const attention = typed(layer.attention);
  const indices = typed(layer.indices);
  const values = typed(layer.values);
  const n = data.tokens.length;
  const ratio = window.devicePixelRatio || 1;
  const font = (size, weight) => `${weight || 400} ${size}px system-ui, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif`;
  const shown = (token) => String(token).replace(/\r?\n/g, "↵").replace(/\t/g, "⇥").trim() || "␣";
  let heads = data.selected.heads || Array.from({ length: data.heads }, (_, h) => h);
  let hover = null; // {side: "q" | "k", index}

  document.getElementById("meta").textContent = `${data.title} · ${n} tokens · ${data.layers} layers × ${data.heads} heads`
    + ` · embedded layer ${layer.index} · saved ${data.created.slice(0, 10)}`;
  document.getElementById("prompt").textContent = data.text;

  function prepare(canvas, width, height) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    return ctx;
  }

  function drawModel() {
    const canvas = document.getElementById("model");
    const { layers, heads: count, side } = data;
    const cell = Math.max(24, Math.min(64, Math.floor((Math.min(1350, window.innerWidth - 80) - 70) / count) - 4));
    const pitch = cell + 4;
    const left = 70;
    const top = 24;
    const ctx = prepare(canvas, left + count * pitch, top + layers * pitch);
    const image = new ImageData(count * side, layers * side);
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < count; h++) {
        for (let r = 0; r < side; r++) {
          for (let c = 0; c < side; c++) {
            const v = thumbs[((l * count + h) * side + r) * side + c] * 4;
            const o = ((l * side + r) * count * side + h * side + c) * 4;
            image.data.set([lut[v], lut[v + 1], lut[v + 2], 255], o);
          }
        }
      }
    }
    const sheet = document.createElement("canvas");
    sheet.width = image.width;
    sheet.height = image.height;
    sheet.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.font = font(12);
    ctx.fillStyle = "#55606d";
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    for (let h = 0; h < count; h++) ctx.fillText(String(h), left + h * pitch + cell / 2, top / 2);
    ctx.textAlign = "right";
    for (let l = 0; l < layers; l++) {
      ctx.fillStyle = l === layer.index ? "#c2185b" : "#55606d";
      ctx.fillText(`layer ${l}`, left - 8, top + l * pitch + cell / 2);
      for (let h = 0; h < count; h++) {
        ctx.drawImage(sheet, h * side, l * side, side, side, left + h * pitch, top + l * pitch, cell, cell);
        ctx.strokeStyle = "#e3e6ea";
        ctx.strokeRect(left + h * pitch + 0.5, top + l * pitch + 0.5, cell - 1, cell - 1);
      }
    }
    ctx.strokeStyle = "#c2185b";
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 2, top + layer.index * pitch - 2, count * pitch, cell + 4);
    canvas.onclick = (event) => {
      const box = canvas.getBoundingClientRect();
      const h = Math.floor((event.clientX - box.left - left) / pitch);
      const l = Math.floor((event.clientY - box.top - top) / pitch);
      if (l === layer.index && h >= 0 && h < count) {
        heads = [h];
        drawHeads();
        document.getElementById("head").scrollIntoView({ behavior: "smooth", block: "nearest" });
      }
    };
  }

  function links(head, query, visit) {
    if (layer.format === "dense") {
      const base = (head * n + query) * n;
      for (let key = 0; key < n; key++) if (attention[base + key]) visit(key, attention[base + key] / 255);
    } else {
      const base = (head * n + query) * layer.k;
      for (let i = 0; i < layer.k; i++) visit(indices[base + i], values[base + i] / 255);
    }
  }

  function drawHeads() {
    const bar = document.getElementById("heads");
    bar.replaceChildren(...Array.from({ length: data.heads }, (_, h) => {
      const button = document.createElement("button");
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = data.palette.heads[h % data.palette.heads.length];
      button.append(chip, `head ${h}`);
      button.setAttribute("aria-pressed", String(heads.includes(h)));
      button.onclick = () => {
        heads = heads.includes(h) ? heads.filter((x) => x !== h) : [...heads, h].sort((a, b) => a - b);
        drawHeads();
      };
      return button;
    }));
    document.getElementById("head-title").textContent = `Head view · layer ${layer.index}`;
    drawHead();
  }

  function drawHead() {
    const canvas = document.getElementById("head");
    const row = Math.max(2, Math.min(22, Math.floor(30000 / n))); // px per token: a canvas stays under 32k px tall
    const measure = prepare(canvas, 1, 1);
    measure.font = font(Math.min(13, row - 6));
    const labels = data.tokens.map(shown);
    const width = Math.min(220, Math.ceil(Math.max(...labels.map((t) => measure.measureText(t).width)))) + 12;
    const gap = 300;
    const qx = width;
    const kx = width + gap;
    const ctx = prepare(canvas, 2 * width + gap, n * row + 20);
    const y = (i) => 10 + i * row + row / 2;
    for (const h of heads) {
      ctx.strokeStyle = data.palette.heads[h % data.palette.heads.length];
      for (let q = 0; q < n; q++) {
        if (hover && hover.side === "q" && hover.index !== q) continue;
        links(h, q, (key, weight) => {
          if (weight < 0.01 || (hover && hover.side === "k" && hover.index !== key)) return;
          ctx.globalAlpha = Math.min(1, weight);
          ctx.lineWidth = 1 + 2 * weight;
          ctx.beginPath();
          ctx.moveTo(qx + 4, y(q));
          ctx.lineTo(kx - 4, y(key));
          ctx.stroke();
        });
      }
    }
    ctx.globalAlpha = 1;
    ctx.font = font(Math.min(13, row - 6));
    ctx.textBaseline = "middle";
    if (row >= 10) labels.forEach((label, i) => { // labels only where rows are tall enough to read
      const special = data.special[i];
      ctx.fillStyle = hover && hover.index === i ? "#c2185b" : special ? "#55606d" : "#1b1f24";
      ctx.textAlign = "right";
      ctx.fillText(label, qx - 6, y(i), width - 8);
      ctx.textAlign = "left";
      ctx.fillText(label, kx + 6, y(i), width - 8);
    });
    canvas.onmousemove = (event) => {
      const box = canvas.getBoundingClientRect();
      const x = event.clientX - box.left;
      const index = Math.floor((event.clientY - box.top - 10) / row);
      const next = index >= 0 && index < n && (x < qx || x > kx) ? { side: x < qx ? "q" : "k", index } : null;
      if (JSON.stringify(next) !== JSON.stringify(hover)) {
        hover = next;
        drawHead();
      }
    };
    canvas.onmouseleave = () => {
      hover = null;
      drawHead();
    };
  }

  drawModel();
  drawHeads();
  document.documentElement.dataset.ready = "true";
}
