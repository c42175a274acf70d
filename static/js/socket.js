// The socket: one Socket.IO connection to the /atlas namespace, which carries every analysis and
// view request. Every request gets a fresh `rid`; answers come back decoded (typed arrays) to
// one handler, which matches them to requests by that rid. (The HTTP API is fetched directly by
// the features that answer with a file or a link: exports.js, offline.js, gallery.js, and the
// head-roles view's induction probe.)
import { io } from "../vendor/socket.io-4.8.1.esm.min.js";
import { EVENTS, NAMESPACE, REQUESTS, decodeEvent } from "./protocol.js";

let socket = null;
let nextRid = 1;
let attachments = () => []; // binary frames of the packet being decoded
const extraListeners = []; // [event, handler] added with listen(), bound when the socket opens

/**
 * Work around socket.io-client 4.8.x's ESM build (socketio/socket.io#5215): its minifier renamed
 * the `_placeholder` property, so binary attachments from a Python server stay as
 * {_placeholder, num} markers. Keep the binary frames of the packet being decoded, so the
 * markers can be replaced here. Does nothing harmful on a fixed build (no markers remain).
 */
function keepAttachments(manager) {
  const decoder = manager.decoder;
  const add = decoder.add.bind(decoder);
  let frames = [];
  decoder.add = (data) => {
    if (typeof data === "string") frames = []; // a new packet starts
    else frames.push(data);
    add(data);
  };
  return () => frames;
}

/** A payload with every {_placeholder: true, num} marker replaced by its binary frame. */
function restoreAttachments(value, frames) {
  if (value === null || typeof value !== "object" || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return value;
  if (value._placeholder === true && Number.isInteger(value.num)) {
    if (!(value.num in frames)) throw new Error(`binary attachment ${value.num} is missing`);
    return frames[value.num];
  }
  if (Array.isArray(value)) return value.map((item) => restoreAttachments(item, frames));
  return Object.fromEntries(Object.entries(value).map(([name, item]) => [name, restoreAttachments(item, frames)]));
}

/**
 * Open the connection. `onEvent(event, payload)` receives every server event, decoded;
 * `onStatus(status, detail)` hears "connected", "disconnected" and "failed" (cannot connect).
 * Requests sent before the connection opens are buffered by the client and sent on connect.
 */
export function connect(onEvent, onStatus) {
  socket = io(NAMESPACE, { transports: ["websocket", "polling"], reconnectionDelayMax: 4000 });
  attachments = keepAttachments(socket.io);
  for (const event of EVENTS) {
    socket.on(event, (payload) => {
      let decoded;
      try {
        decoded = decodeEvent(event, restoreAttachments(payload, attachments()));
      } catch (error) { // a malformed array: report it like a server error for that request
        onEvent("error", { rid: payload?.rid ?? null, code: "bad_payload", message: String(error.message || error) });
        return;
      }
      onEvent(event, decoded);
    });
  }
  for (const [event, handler] of extraListeners) socket.on(event, handler);
  socket.on("connect", () => onStatus("connected"));
  socket.on("disconnect", (reason) => onStatus("disconnected", reason));
  socket.on("connect_error", (error) => onStatus("failed", error?.message));
}

/** Send one request; returns its rid so the answer can be matched (and stale ones dropped). */
export function request(event, fields) {
  if (!REQUESTS.includes(event)) throw new Error(`unknown request ${event}`);
  const rid = nextRid++;
  socket.emit(event, { ...fields, rid });
  return rid;
}

/**
 * Hear a server event beside the main handler: presenter mode's events (plain JSON, no arrays),
 * `error` (to match a module's own request ids) or "connect" (also on every reconnect).
 * May be called before connect().
 */
export function listen(event, handler) {
  extraListeners.push([event, handler]);
  socket?.on(event, handler);
}
