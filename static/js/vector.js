// Vector copies of the views' drawings, for SVG exports fit for papers. Every canvas a view draws
// on through draw.js prepareCanvas records its drawing calls (traced()); toSvg() replays them as
// SVG elements: cells as <rect>, links and rules as <path>, labels as <text>. A picture drawn
// from pixels (a heatmap image) becomes one <rect> per run of equal cells in a row, never an
// <image>. Links built as paths use TracedPath (a Path2D that remembers its segments).

const SVG_NS = "http://www.w3.org/2000/svg";
// Calls that change the picture or the drawing state; measureText, getImageData... only read.
const RECORDED = new Set(["fillRect", "strokeRect", "fillText", "drawImage", "save", "restore", "translate", "rotate",
  "scale", "setTransform", "beginPath", "moveTo", "lineTo", "rect", "roundRect", "closePath", "stroke", "fill",
  "setLineDash"]);
const STYLE_PROPERTIES = ["fillStyle", "strokeStyle", "lineWidth", "lineCap", "font", "textAlign", "textBaseline", "globalAlpha"];
const MAX_CELLS = 400_000; // <rect> elements from pixel pictures per export; more is no file a paper can take
const ANCHORS = { left: "start", start: "start", center: "middle", right: "end", end: "end" };
const BASELINES = { top: "text-before-edge", hanging: "text-before-edge", middle: "central", alphabetic: "alphabetic",
  ideographic: "text-after-edge", bottom: "text-after-edge" };

// XML 1.0's Char production: no C0 controls but tab, LF and CR, no U+FFFE/U+FFFF, no unpaired
// surrogates. Anything else (a form feed pasted from a PDF) would make an SVG no XML parser reads.
const isXmlChar = (code) => code === 0x9 || code === 0xa || code === 0xd || (code >= 0x20 && code <= 0xd7ff)
  || (code >= 0xe000 && code <= 0xfffd) || code >= 0x10000;

export function xmlText(text) {
  let out = "";
  for (const char of text) out += isXmlChar(char.codePointAt(0)) ? char : " "; // by code point: a lone surrogate is one
  return out;
}

const drawings = new WeakMap(); // canvas -> {width, height, ops: [name, args][]} (CSS px)
const patterns = new WeakMap(); // CanvasPattern -> the canvas it repeats

/** A Path2D that remembers its moveTo/lineTo segments, so the SVG export can draw it. */
export class TracedPath extends Path2D {
  constructor() {
    super();
    this.d = [];
  }

  moveTo(x, y) {
    this.d.push(["M", x, y]);
    super.moveTo(x, y);
  }

  lineTo(x, y) {
    this.d.push(["L", x, y]);
    super.lineTo(x, y);
  }
}

/**
 * `ctx` (already cleared, in CSS px) that also records what is drawn on `canvas`, width x
 * height CSS px; a canvas drawn again forgets its previous drawing.
 */
export function traced(canvas, ctx, width, height) {
  const ops = [];
  drawings.set(canvas, { width, height, ops });
  return new Proxy(ctx, {
    get(target, name) {
      const value = target[name];
      if (typeof value !== "function") return value;
      if (name === "createPattern") {
        return (image, repeat) => {
          const pattern = value.call(target, image, repeat);
          patterns.set(pattern, image);
          return pattern;
        };
      }
      if (!RECORDED.has(name)) return value.bind(target);
      return (...args) => {
        ops.push([name, args]);
        return value.apply(target, args);
      };
    },
    set(target, name, value) {
      target[name] = value;
      if (STYLE_PROPERTIES.includes(name)) ops.push([`=${name}`, [value]]);
      return true;
    },
  });
}

/** Whether `canvas` holds a drawing toSvg can replay. */
export function isTraced(canvas) {
  return drawings.has(canvas);
}

const IDENTITY = [1, 0, 0, 1, 0, 0];

function multiply([a, b, c, d, e, f], [a2, b2, c2, d2, e2, f2]) {
  return [a * a2 + c * b2, b * a2 + d * b2, a * c2 + c * d2, b * c2 + d * d2, a * e2 + c * f2 + e, b * e2 + d * f2 + f];
}

function apply(m, x, y) {
  return [m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]];
}

const round = (value) => Math.round(value * 100) / 100;

/** Replays one canvas's drawing into SVG elements appended to `group`. */
class Replay {
  constructor(doc, group, defs, ratio) {
    Object.assign(this, { doc, group, defs, ratio, cells: 0 });
    this.state = { m: IDENTITY, fillStyle: "#000", strokeStyle: "#000", lineWidth: 1, lineCap: "butt", font: "10px sans-serif",
      textAlign: "start", textBaseline: "alphabetic", globalAlpha: 1, dash: [] };
    this.stack = [];
    this.path = [];
  }

  add(tag, attributes, text) {
    const node = this.doc.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = xmlText(text);
    this.group.append(node);
    return node;
  }

  paint(style) {
    if (typeof style === "string") return style;
    const image = patterns.get(style);
    return image ? `url(#${this.pattern(image)})` : "#888888";
  }

  /** A <pattern> of a repeated tile (the hatching of masked cells), drawn as rects. */
  pattern(image) {
    this.tiles ??= new Map();
    if (!this.tiles.has(image)) {
      const id = `tile${this.defs.childElementCount}`;
      const node = this.doc.createElementNS(SVG_NS, "pattern");
      node.setAttribute("id", id);
      node.setAttribute("patternUnits", "userSpaceOnUse");
      node.setAttribute("width", image.width);
      node.setAttribute("height", image.height);
      const group = this.group;
      this.group = node;
      this.pixels(image, 0, 0, image.width, image.height, IDENTITY, 0, 0, 1, 1);
      this.group = group;
      this.defs.append(node);
      this.tiles.set(image, id);
    }
    return this.tiles.get(image);
  }

  /** Runs of equal pixels of `image`'s region as rects, each source pixel `cw` x `ch` user units. */
  pixels(image, sx, sy, sw, sh, m, dx, dy, cw, ch) {
    const data = image.getContext("2d").getImageData(sx, sy, sw, sh).data;
    const transform = m === IDENTITY ? null : `matrix(${m.map(round).join(" ")})`;
    const group = transform ? this.add("g", { transform }) : this.group;
    const outer = this.group;
    this.group = group;
    for (let y = 0; y < sh; y++) {
      for (let x = 0; x < sw;) {
        const at = (y * sw + x) * 4;
        let end = x + 1;
        while (end < sw && [0, 1, 2, 3].every((k) => data[(y * sw + end) * 4 + k] === data[at + k])) end++;
        if (data[at + 3] > 0) {
          this.cells++;
          this.add("rect", { x: round(dx + x * cw), y: round(dy + y * ch), width: round((end - x) * cw), height: round(ch),
            fill: `rgb(${data[at]},${data[at + 1]},${data[at + 2]})`, "fill-opacity": data[at + 3] < 255 ? round(data[at + 3] / 255) : null });
        }
        x = end;
      }
    }
    this.group = outer;
    if (this.cells > MAX_CELLS) throw new Error(`the picture has over ${MAX_CELLS.toLocaleString()} cells: export PNG instead`);
  }

  opacity() {
    return this.state.globalAlpha < 1 ? round(this.state.globalAlpha) : null;
  }

  /** A rectangle's corners through the transform, as a path (a rotated one stays exact). */
  box(x, y, w, h) {
    const m = this.state.m;
    if (m[1] === 0 && m[2] === 0) {
      const [x0, y0] = apply(m, x, y);
      return { tag: "rect", x: round(Math.min(x0, x0 + w * m[0])), y: round(Math.min(y0, y0 + h * m[3])),
        width: round(Math.abs(w * m[0])), height: round(Math.abs(h * m[3])) };
    }
    const corners = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]].map(([px, py]) => apply(m, px, py).map(round));
    return { tag: "path", d: `M${corners.map((p) => p.join(" ")).join("L")}Z` };
  }

  shape(box, attributes) {
    const { tag, ...geometry } = box;
    this.add(tag, { ...geometry, ...attributes });
  }

  strokeAttributes() {
    const { strokeStyle, lineWidth, lineCap, dash, m } = this.state;
    const scale = Math.sqrt(Math.abs(m[0] * m[3] - m[1] * m[2]));
    return { fill: "none", stroke: this.paint(strokeStyle), "stroke-width": round(lineWidth * scale), "stroke-linecap": lineCap !== "butt" ? lineCap : null,
      "stroke-dasharray": dash.length ? dash.map((v) => round(v * scale)).join(" ") : null, opacity: this.opacity() };
  }

  run(name, args) {
    const s = this.state;
    if (name.startsWith("=")) {
      s[name.slice(1)] = args[0];
      return;
    }
    switch (name) {
      case "save": this.stack.push({ ...s, dash: [...s.dash] }); break;
      case "restore": if (this.stack.length) this.state = this.stack.pop(); break;
      case "translate": s.m = multiply(s.m, [1, 0, 0, 1, args[0], args[1]]); break;
      case "scale": s.m = multiply(s.m, [args[0], 0, 0, args[1], 0, 0]); break;
      case "rotate": {
        const [cos, sin] = [Math.cos(args[0]), Math.sin(args[0])];
        s.m = multiply(s.m, [cos, sin, -sin, cos, 0, 0]);
        break;
      }
      case "setTransform": s.m = args.slice(0, 6).map((v) => v / this.ratio); break; // device px -> CSS px
      case "setLineDash": s.dash = [...args[0]]; break;
      case "fillRect": this.shape(this.box(...args), { fill: this.paint(s.fillStyle), opacity: this.opacity() }); break;
      case "strokeRect": this.shape(this.box(...args), this.strokeAttributes()); break;
      case "beginPath": this.path = []; break;
      case "moveTo": case "lineTo": this.path.push([name === "moveTo" ? "M" : "L", ...apply(s.m, args[0], args[1])]); break;
      case "closePath": this.path.push(["Z"]); break;
      case "rect": case "roundRect": { // corners of a rounded badge are left square
        const [x, y, w, h] = args;
        this.path.push(["M", ...apply(s.m, x, y)], ["L", ...apply(s.m, x + w, y)], ["L", ...apply(s.m, x + w, y + h)],
          ["L", ...apply(s.m, x, y + h)], ["Z"]);
        break;
      }
      case "stroke": case "fill": {
        const segments = args[0] instanceof TracedPath ? args[0].d.map(([c, x, y]) => [c, ...apply(s.m, x, y)]) : this.path;
        if (!segments.length) break;
        const d = segments.map(([c, x, y]) => (c === "Z" ? "Z" : `${c}${round(x)} ${round(y)}`)).join("");
        this.add("path", name === "stroke" ? { d, ...this.strokeAttributes() } : { d, fill: this.paint(s.fillStyle), opacity: this.opacity() });
        break;
      }
      case "fillText": this.text(...args); break;
      case "drawImage": this.image(args); break;
      default: break;
    }
  }

  text(text, x, y) {
    const s = this.state;
    const plain = s.m[1] === 0 && s.m[2] === 0 && s.m[0] === 1 && s.m[3] === 1;
    const [px, py] = plain ? apply(s.m, x, y) : [x, y];
    this.add("text", { x: round(px), y: round(py), style: `font: ${s.font}; white-space: pre`, fill: this.paint(s.fillStyle),
      "text-anchor": ANCHORS[s.textAlign] ?? "start", "dominant-baseline": BASELINES[s.textBaseline] ?? "alphabetic",
      opacity: this.opacity(), transform: plain ? null : `matrix(${s.m.map(round).join(" ")})` }, String(text));
  }

  image(args) {
    const [image] = args;
    if (!(image instanceof HTMLCanvasElement)) return;
    const full = [0, 0, image.width, image.height];
    const [sx, sy, sw, sh, dx, dy, dw, dh] = args.length === 9 ? args.slice(1)
      : args.length === 5 ? [...full, ...args.slice(1)] : [...full, args[1], args[2], image.width, image.height];
    if (sw <= 0 || sh <= 0) return;
    const opacity = this.opacity();
    const outer = this.group;
    if (opacity) this.group = this.add("g", { opacity });
    this.pixels(image, Math.round(sx), Math.round(sy), Math.round(sw), Math.round(sh), this.state.m, dx, dy, dw / sw, dh / sh);
    this.group = outer;
  }
}

/**
 * The recorded drawing of `canvas` as SVG elements in a new <g> of `doc` (an SVG document),
 * placed at x, y and scaled to width CSS px; `defs` receives the patterns it uses. Returns the
 * group and how many cells it drew. Throws when a picture would take over MAX_CELLS rects.
 */
export function canvasToSvg(canvas, doc, defs, x, y, width) {
  const drawing = drawings.get(canvas);
  const group = doc.createElementNS(SVG_NS, "g");
  const scale = width / drawing.width;
  group.setAttribute("transform", `translate(${round(x)} ${round(y)})${scale !== 1 ? ` scale(${round(scale)})` : ""}`);
  const replay = new Replay(doc, group, defs, window.devicePixelRatio || 1);
  for (const [name, args] of drawing.ops) replay.run(name, args);
  return group;
}
