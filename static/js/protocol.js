// The wire contract, mirroring app/protocol.py and docs/protocol.md: namespace, event names,
// modes, the page's own error codes, and decoding of binary arrays ({dtype, shape, data, scale})
// into typed arrays. Nothing here talks to the network; socket.js does. Limits and the titles of
// the server's error codes are not here: the server publishes them (settings.js).
// tests/unit/test_js_protocol.py checks these tables against Python's.

export const NAMESPACE = "/atlas";

// Presenter mode (docs/protocol.md "Presenter mode").
export const PRESENTER_REQUESTS = ["present_start", "present_join", "present_leave", "present_update", "present_end"];
export const PRESENTER_EVENTS = ["present_started", "present_state", "present_followers", "present_ended"];
// Client -> server requests, as Socket.IO events; `open` streams a cached analysis by its key.
export const REQUESTS = ["analyze", "layer", "matrix", "token", "thumbnails", "neuron", "stats", "heads", "rollout", "flow", "mixing", "feedforward", "routes", "compare",
  "ablate", "patch", "lens", "generate", "cancel", "open", "atlas", "atlas_corpus", "atlas_head", ...PRESENTER_REQUESTS];
// Requests answered by a stream of events (progress, tokens, overview, ..., done) rather than one.
export const STREAMS = ["analyze", "generate", "open"];
// Server -> client events, besides presenter mode's.
export const EVENTS = ["progress", "overview_layer", "tokens", "overview", "layer", "matrix", "token", "thumbnails", "neuron", "stats", "done", "error",
  "heads", "rollout", "flow", "mixing", "feedforward", "routes", "compare", "ablate", "patch", "lens", "generated_token", "generated", "atlas", "atlas_corpus", "atlas_head", "cancel"];
export const FUSIONS = ["mean", "max", "min"]; // how rollout and flow fuse the heads of a layer

// Weight modes (app/protocol.py): Kobayashi et al. 2020 per head ‖αf‖ as row shares ("value") or raw
// ("norm"); per layer ‖Σ_h α_h f_h‖ as row shares ("layer_share") or raw ("layer"), one map per layer.
export const ATTENTION_MODES = ["attention", "scores", "value", "norm", "layer_share", "layer"];
export const LAYER_MODES = ["attention", "value", "norm", "layer_share", "layer"]; // the head view has no pre-softmax scores
export const LAYER_NORM_MODES = ["layer_share", "layer"]; // one map for the whole layer, whichever head is chosen
export const NORM_MODES = ["value", "norm", ...LAYER_NORM_MODES]; // the model view's norm-based thumbnails (`thumbnails` request)
export const RAW_MODES = ["norm", "layer"]; // in the model's norm units: a payload's scale carries its peak
export const TOKEN_MODES = ["attention", "norm", "layer"]; // the token view's columns: row shares would need every row's total

// Error codes the page raises itself, never the server (whose codes and titles are published:
// settings.js errorTitle), with their titles.
export const CLIENT_ERRORS = {
  disconnected: "Lost the connection to the server",
  bad_payload: "The page could not read the server's answer",
  not_in_file: "Not saved in this file", // an offline file (offline.js) holds one layer
};

const TYPED = {
  uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, int32: Int32Array,
  float16: Uint16Array, float32: Float32Array,
};

/** True for an object that looks like a wire array. */
export function isWireArray(value) {
  return value !== null && typeof value === "object" && typeof value.dtype === "string"
    && Array.isArray(value.shape) && "data" in value;
}

function toBuffer(data) {
  if (data instanceof ArrayBuffer) return data;
  if (ArrayBuffer.isView(data)) return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  if (typeof data === "string") { // HTTP form: base64
    const binary = atob(data);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }
  throw new Error(`array data of unexpected type ${typeof data}`);
}

/** IEEE half floats (as uint16 bit patterns) -> Float32Array; by hand, as Float16Array may be missing. */
export function float16ToFloat32(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) out[i] = sign * fraction * 2 ** -24; // subnormal
    else if (exponent === 31) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return out;
}

/**
 * A wire array -> {dtype, shape, data, scale}. `data` holds the stored values as a typed array
 * (float16 decoded to Float32Array); the true value of a quantized uint8 is `data[i] * scale`.
 * Fails on an unknown dtype or a byte length that does not match the shape.
 */
export function decodeArray(wire) {
  const Typed = TYPED[wire.dtype];
  if (!Typed) throw new Error(`unknown dtype ${wire.dtype}`);
  const buffer = toBuffer(wire.data);
  const count = wire.shape.reduce((a, b) => a * b, 1);
  if (buffer.byteLength !== count * Typed.BYTES_PER_ELEMENT) {
    throw new Error(`array of shape [${wire.shape}] ${wire.dtype} has ${buffer.byteLength} bytes`);
  }
  const raw = new Typed(buffer);
  const data = wire.dtype === "float16" ? float16ToFloat32(raw) : raw;
  return { dtype: wire.dtype, shape: wire.shape, data, scale: wire.scale ?? 1 };
}

/** A payload with every wire array decoded, at the top level or in nested objects (e.g. `heads`' metrics). */
export function decodePayload(payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) return payload;
  if (payload instanceof ArrayBuffer || ArrayBuffer.isView(payload)) return payload;
  const out = {};
  for (const [name, value] of Object.entries(payload)) out[name] = isWireArray(value) ? decodeArray(value) : decodePayload(value);
  return out;
}

/** A decoded string list ({joined, lengths} from app/protocol.encode_strings) -> Array of strings. */
export function decodeStrings({ joined, lengths }) {
  const out = new Array(lengths.data.length);
  let start = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = joined.slice(start, start + lengths.data[i]);
    start += lengths.data[i];
  }
  return out;
}

/**
 * A decoded `tokens` event -> the form every view reads: `tokens` and `pieces` arrays of strings,
 * `spans` Int32Array [N * 2] (start, end pairs), `special` an array of booleans.
 */
export function decodeTokens(payload) {
  return { ...payload, tokens: decodeStrings(payload.tokens), pieces: decodeStrings(payload.pieces),
    spans: payload.spans.data, special: Array.from(payload.special.data, Boolean) };
}

/** An event's payload as the views read it: wire arrays decoded, and a `tokens` event's lists restored. */
export function decodeEvent(event, payload) {
  const decoded = decodePayload(payload);
  return event === "tokens" ? decodeTokens(decoded) : decoded;
}
