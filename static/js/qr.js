// A small QR code encoder (ISO/IEC 18004), so presenter mode can show its join link as a code
// students scan, with no external service: byte mode (UTF-8), error correction level L or M,
// versions 1-10 (up to 213 bytes at M, 271 at L: a join URL is ~40). The encoding follows the
// standard step by step: data bits -> Reed-Solomon blocks -> interleaving -> function patterns
// -> zigzag placement -> the mask with the lowest penalty -> format and version information.
// tests/browser/test_qr.py checks every module against the `qrcode` Python package.

export const MAX_VERSION = 10;
const QUIET_ZONE = 4; // modules of light margin the standard asks for around the symbol

// Per level and version (index 0 unused): error-correction codewords per block, and block count.
const LEVELS = {
  L: { bits: 0b01, ecc: [0, 7, 10, 15, 20, 26, 18, 20, 24, 30, 18], blocks: [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4] },
  M: { bits: 0b00, ecc: [0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26], blocks: [0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5] },
};
const MASKS = [
  (r, c) => (r + c) % 2 === 0,
  (r) => r % 2 === 0,
  (r, c) => c % 3 === 0,
  (r, c) => (r + c) % 3 === 0,
  (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0,
  (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
  (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0,
  (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
];

/**
 * Encode `text` (UTF-8 bytes) as a QR code. Returns {version, level, mask, size, modules} with
 * `modules[row][col]` true for dark. `level` is "L" or "M"; `mask` (0-7) forces a mask pattern
 * (default: the one with the lowest penalty). Throws a RangeError when the text does not fit
 * version 10 at that level.
 */
export function encodeQr(text, { level = "M", mask = null } = {}) {
  const spec = LEVELS[level];
  if (!spec) throw new RangeError(`error correction level ${level} is not supported (L or M)`);
  const bytes = new TextEncoder().encode(text);
  let version = 1;
  while (version <= MAX_VERSION && dataCapacityBits(version, spec) < 4 + countBits(version) + 8 * bytes.length) version++;
  if (version > MAX_VERSION) {
    throw new RangeError(`${bytes.length} bytes do not fit a version ${MAX_VERSION} QR code at level ${level}`);
  }
  const codewords = interleave(dataCodewords(bytes, version, spec), version, spec);
  const base = new Matrix(version);
  base.drawFunctionPatterns();
  base.drawCodewords(codewords);
  let chosen = mask;
  if (chosen === null) { // score each mask with format and version areas light, as the qrcode package does
    let best = Infinity;
    for (let m = 0; m < MASKS.length; m++) {
      const score = penalty(base.masked(m).modules);
      if (score < best) [best, chosen] = [score, m];
    }
  }
  if (!Number.isInteger(chosen) || chosen < 0 || chosen > 7) throw new RangeError(`mask ${mask} is not 0-7`);
  const symbol = base.masked(chosen);
  symbol.drawFormatBits(spec.bits, chosen);
  symbol.drawVersionBits();
  return { version, level, mask: chosen, size: symbol.size, modules: symbol.modules };
}

/**
 * Draw a code on a canvas `pixels` CSS px square (quiet zone included), dark on white.
 * Returns the canvas. Module edges land on whole device pixels where the size allows.
 */
export function drawQr(canvas, code, pixels) {
  const ratio = window.devicePixelRatio || 1;
  const total = code.size + 2 * QUIET_ZONE;
  const module = Math.max(1, Math.floor((pixels * ratio) / total));
  canvas.width = canvas.height = module * total;
  canvas.style.width = canvas.style.height = `${(module * total) / ratio}px`;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000000";
  code.modules.forEach((row, r) => row.forEach((dark, c) => {
    if (dark) ctx.fillRect((c + QUIET_ZONE) * module, (r + QUIET_ZONE) * module, module, module);
  }));
  return canvas;
}

// ---- data codewords ----

function countBits(version) {
  return version < 10 ? 8 : 16; // bits of the byte-mode character count
}

/** Modules left for data and error correction once the function patterns are drawn. */
function rawDataModules(version) {
  let modules = (16 * version + 128) * version + 64;
  if (version >= 2) {
    const align = Math.floor(version / 7) + 2;
    modules -= (25 * align - 10) * align - 55;
    if (version >= 7) modules -= 36; // two version-information blocks
  }
  return modules;
}

function dataCodewordCount(version, spec) {
  return Math.floor(rawDataModules(version) / 8) - spec.ecc[version] * spec.blocks[version];
}

function dataCapacityBits(version, spec) {
  return dataCodewordCount(version, spec) * 8;
}

/** Mode, count, bytes, terminator and padding as the version's data codewords. */
function dataCodewords(bytes, version, spec) {
  const bits = [];
  const put = (value, length) => {
    for (let i = length - 1; i >= 0; i--) bits.push((value >>> i) & 1);
  };
  put(0b0100, 4); // byte mode
  put(bytes.length, countBits(version));
  for (const byte of bytes) put(byte, 8);
  const capacity = dataCapacityBits(version, spec);
  put(0, Math.min(4, capacity - bits.length)); // terminator
  put(0, (8 - (bits.length % 8)) % 8);
  for (let pad = 0xec; bits.length < capacity; pad ^= 0xec ^ 0x11) put(pad, 8);
  const out = new Uint8Array(bits.length / 8);
  bits.forEach((bit, i) => { out[i >> 3] |= bit << (7 - (i & 7)); });
  return out;
}

/** Split into blocks, add each block's Reed-Solomon codewords, and interleave (data, then ECC). */
function interleave(data, version, spec) {
  const count = spec.blocks[version];
  const eccLength = spec.ecc[version];
  const total = Math.floor(rawDataModules(version) / 8);
  const shortBlocks = count - (total % count);
  const shortLength = Math.floor(total / count) - eccLength; // data codewords of a short block
  const divisor = rsDivisor(eccLength);
  const blocks = [];
  for (let b = 0, start = 0; b < count; b++) {
    const length = shortLength + (b < shortBlocks ? 0 : 1);
    const block = data.slice(start, start + length);
    blocks.push({ data: block, ecc: rsRemainder(block, divisor) });
    start += length;
  }
  const out = [];
  for (let i = 0; i <= shortLength; i++) for (const block of blocks) if (i < block.data.length) out.push(block.data[i]);
  for (let i = 0; i < eccLength; i++) for (const block of blocks) out.push(block.ecc[i]);
  return out;
}

// ---- Reed-Solomon over GF(256), polynomial x^8 + x^4 + x^3 + x^2 + 1 ----

function gfMultiply(x, y) {
  let z = 0;
  for (let i = 7; i >= 0; i--) {
    z = (z << 1) ^ ((z >>> 7) * 0x11d);
    z ^= ((y >>> i) & 1) * x;
  }
  return z;
}

/** Coefficients (highest first, leading 1 dropped) of the product of (x - 2^i), i < degree. */
function rsDivisor(degree) {
  const result = new Uint8Array(degree);
  result[degree - 1] = 1;
  let root = 1;
  for (let i = 0; i < degree; i++) {
    for (let j = 0; j < degree; j++) {
      result[j] = gfMultiply(result[j], root);
      if (j + 1 < degree) result[j] ^= result[j + 1];
    }
    root = gfMultiply(root, 0x02);
  }
  return result;
}

function rsRemainder(data, divisor) {
  const result = new Uint8Array(divisor.length);
  for (const byte of data) {
    const factor = byte ^ result[0];
    result.copyWithin(0, 1);
    result[result.length - 1] = 0;
    divisor.forEach((coefficient, i) => { result[i] ^= gfMultiply(coefficient, factor); });
  }
  return result;
}

// ---- the module grid ----

class Matrix {
  constructor(version) {
    this.version = version;
    this.size = version * 4 + 17;
    this.modules = Array.from({ length: this.size }, () => new Array(this.size).fill(false));
    this.reserved = Array.from({ length: this.size }, () => new Array(this.size).fill(false));
  }

  set(row, col, dark) {
    this.modules[row][col] = dark;
    this.reserved[row][col] = true;
  }

  drawFunctionPatterns() {
    const n = this.size;
    for (let i = 0; i < n; i++) { // timing patterns
      this.set(6, i, i % 2 === 0);
      this.set(i, 6, i % 2 === 0);
    }
    this.drawFinder(3, 3);
    this.drawFinder(3, n - 4);
    this.drawFinder(n - 4, 3);
    const positions = alignmentPositions(this.version, n);
    const last = positions.length - 1;
    positions.forEach((row, i) => positions.forEach((col, j) => {
      const corner = (i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0);
      if (!corner) this.drawAlignment(row, col);
    }));
    this.drawFormatBits(0, 0, true); // reserve the areas; real bits come after masking
    this.drawVersionBits(true);
  }

  drawFinder(row, col) {
    for (let dr = -4; dr <= 4; dr++) {
      for (let dc = -4; dc <= 4; dc++) {
        const r = row + dr;
        const c = col + dc;
        if (r < 0 || c < 0 || r >= this.size || c >= this.size) continue;
        const ring = Math.max(Math.abs(dr), Math.abs(dc)); // 4 = separator, 2 = light ring
        this.set(r, c, ring !== 2 && ring !== 4);
      }
    }
  }

  drawAlignment(row, col) {
    for (let dr = -2; dr <= 2; dr++) {
      for (let dc = -2; dc <= 2; dc++) this.set(row + dr, col + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
    }
  }

  /** Format information (level and mask, BCH-protected) twice; `blank` draws it light. */
  drawFormatBits(levelBits, mask, blank = false) {
    const data = (levelBits << 3) | mask;
    let remainder = data;
    for (let i = 0; i < 10; i++) remainder = (remainder << 1) ^ ((remainder >>> 9) * 0x537);
    const bits = ((data << 10) | remainder) ^ 0x5412;
    const bit = (i) => !blank && ((bits >>> i) & 1) === 1;
    const n = this.size;
    for (let i = 0; i < 6; i++) this.set(i, 8, bit(i));
    this.set(7, 8, bit(6));
    this.set(8, 8, bit(7));
    this.set(8, 7, bit(8));
    for (let i = 9; i < 15; i++) this.set(8, 14 - i, bit(i));
    for (let i = 0; i < 8; i++) this.set(8, n - 1 - i, bit(i));
    for (let i = 8; i < 15; i++) this.set(n - 15 + i, 8, bit(i));
    this.set(n - 8, 8, !blank); // the dark module
  }

  /** Version information (versions 7 and up), two 6 x 3 blocks; `blank` draws it light. */
  drawVersionBits(blank = false) {
    if (this.version < 7) return;
    let remainder = this.version;
    for (let i = 0; i < 12; i++) remainder = (remainder << 1) ^ ((remainder >>> 11) * 0x1f25);
    const bits = (this.version << 12) | remainder;
    for (let i = 0; i < 18; i++) {
      const dark = !blank && ((bits >>> i) & 1) === 1;
      const a = this.size - 11 + (i % 3);
      const b = Math.floor(i / 3);
      this.set(b, a, dark);
      this.set(a, b, dark);
    }
  }

  /** Place the codewords in the two-column zigzag from the bottom right, skipping reserved modules. */
  drawCodewords(codewords) {
    const n = this.size;
    let index = 0;
    for (let right = n - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5; // the vertical timing pattern
      for (let step = 0; step < n; step++) {
        for (let j = 0; j < 2; j++) {
          const col = right - j;
          const upward = ((right + 1) & 2) === 0;
          const row = upward ? n - 1 - step : step;
          if (this.reserved[row][col]) continue;
          if (index < codewords.length * 8) this.modules[row][col] = ((codewords[index >>> 3] >>> (7 - (index & 7))) & 1) === 1;
          index++; // remainder bits stay light
        }
      }
    }
  }

  /** A copy with mask pattern `mask` applied to the data modules. */
  masked(mask) {
    const copy = new Matrix(this.version);
    const flip = MASKS[mask];
    copy.reserved = this.reserved;
    copy.modules = this.modules.map((row, r) => row.map((dark, c) => (this.reserved[r][c] ? dark : dark !== flip(r, c))));
    return copy;
  }
}

/** Row/column centres of the alignment patterns. */
function alignmentPositions(version, size) {
  if (version === 1) return [];
  const count = Math.floor(version / 7) + 2;
  const step = Math.ceil((version * 4 + 4) / (count * 2 - 2)) * 2;
  const positions = [6];
  for (let pos = size - 7; positions.length < count; pos -= step) positions.splice(1, 0, pos);
  return positions;
}

// ---- mask penalty (the standard's four rules) ----

function penalty(modules) {
  const n = modules.length;
  const columns = modules.map((_, c) => modules.map((row) => row[c]));
  let score = 0;
  for (const line of [...modules, ...columns]) score += runPenalty(line) + finderPenalty(line);
  for (let r = 0; r < n - 1; r++) { // 2 x 2 blocks of one colour
    for (let c = 0; c < n - 1; c++) {
      const dark = modules[r][c];
      if (dark === modules[r][c + 1] && dark === modules[r + 1][c] && dark === modules[r + 1][c + 1]) score += 3;
    }
  }
  const dark = modules.reduce((sum, row) => sum + row.filter(Boolean).length, 0);
  return score + 10 * Math.floor(Math.abs((dark / (n * n)) * 100 - 50) / 5); // balance of dark and light
}

/** Runs of 5 or more same-coloured modules: 3 points, plus 1 per module beyond 5. */
function runPenalty(line) {
  let score = 0;
  let length = 1;
  for (let i = 1; i <= line.length; i++) {
    if (i < line.length && line[i] === line[i - 1]) {
      length++;
    } else {
      if (length >= 5) score += length - 2;
      length = 1;
    }
  }
  return score;
}

const FINDER_LIKE = [[1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1]];

/** 40 points for each 1:1:3:1:1 finder-like pattern with 4 light modules on one side. */
function finderPenalty(line) {
  let score = 0;
  for (let i = 0; i + 11 <= line.length; i++) {
    for (const pattern of FINDER_LIKE) {
      if (pattern.every((bit, j) => line[i + j] === (bit === 1))) score += 40;
    }
  }
  return score;
}
