// Presenter mode (docs/protocol.md "Presenter mode"): a teacher presents, students follow.
// The presenter sends the share-link query of its view (`present_update`) on every view change;
// followers open each `present_state` like a share link (no analysis round trip when the prompt
// is unchanged). A follower who changes the view steps out; "Snap back" applies the presenter's
// latest view again. The room's secret lives only in this tab's sessionStorage, never in a URL,
// so only the tab that started a room can move or end it.
import { drawQr, encodeQr } from "./qr.js";
import { limits } from "./settings.js";
import { listen, request } from "./socket.js";
import { getState, subscribe, viewOf } from "./store.js";
import { h } from "./ui.js";
import { openQuery, shareUrl } from "./url.js";

const PRESENTING_KEY = "attention-atlas.presenting"; // sessionStorage: {code, secret} of the room this tab presents
const FOLLOWING_KEY = "attention-atlas.following"; // sessionStorage: code of the room this tab follows
const JOIN_PARAM = "join"; // /?join=CODE: a student's link into a room
const CODE_PATTERN = new RegExp(`^[${limits.presenter_code_alphabet}]{${limits.presenter_code_length}}$`); // a join code
const QR_PIXELS = 232; // CSS px of the join QR code, quiet zone included
const LOOPBACK = /^(localhost|127\.|\[::1\])/; // hosts students' laptops cannot reach

// What this tab is in the classroom: null, or one of
//   {kind: "presenter", code, secret, followers}
//   {kind: "follower", code, following (bool), latest (presenter's query or null)}
let role = null;
let message = ""; // a one-line notice: the presentation ended, a code was wrong...
const pending = new Map(); // rid -> what it asked ("start", "join", "update", "end"), to read its errors
let sent = null; // the last query sent to the room
let applying = false; // a presenter state is being applied (not the student's own change)
let ui = null;

/** Build the presenter controls into `bar` (status line) and `panel` (start, join, join code); wire the socket. */
export function mountPresenter(bar, panel) {
  ui = {
    bar, panel,
    status: h("span", { className: "classroom-status", "data-testid": "classroom-status" }),
    followers: h("span", { className: "followers", "data-testid": "followers" }),
    showCode: h("button", { type: "button", className: "quiet", text: "Show join code", onClick: () => togglePanel(true) }),
    end: h("button", { type: "button", text: "End presentation", "data-testid": "end-presentation", onClick: end }),
    follow: h("button", { type: "button", "data-testid": "follow-toggle", onClick: toggleFollow }),
    leave: h("button", { type: "button", className: "quiet", text: "Leave", onClick: leave }),
    dismiss: h("button", { type: "button", className: "quiet", text: "Dismiss", onClick: () => say("") }),
    start: h("button", { type: "button", className: "primary", text: "Start presenting", "data-testid": "start-presenting",
      onClick: start }),
    codeInput: h("input", { type: "text", name: "join-code", maxlength: limits.presenter_code_length, placeholder: "ABC234", autocapitalize: "characters",
      spellcheck: "false", "aria-label": "Join code", "data-testid": "join-code" }),
    joinCard: h("div", { className: "join-card", "data-testid": "join-card" }),
    note: h("p", { className: "classroom-note" }),
  };
  const joinForm = h("form", { className: "join-form", onSubmit: (event) => {
    event.preventDefault();
    join(ui.codeInput.value);
  } }, [ui.codeInput, h("button", { type: "submit", text: "Join", "data-testid": "join" })]);
  ui.choose = h("div", { className: "classroom-choose" }, [
    h("section", {}, [h("h3", { text: "Present" }),
      h("p", { text: "Students who join follow your view live: prompt, view, layer, head and token. They can step out to "
        + "explore and snap back. Only this browser tab can move or end the presentation." }), ui.start]),
    h("section", {}, [h("h3", { text: "Join a class" }),
      h("p", { text: "Type the six-letter code your teacher shows, or open the link or QR code they share." }), joinForm]),
  ]);
  bar.append(ui.status, ui.followers, ui.follow, ui.showCode, ui.end, ui.leave, ui.dismiss);
  panel.append(ui.choose, ui.joinCard, ui.note);

  for (const event of ["present_started", "present_state", "present_followers", "present_ended", "error"]) {
    listen(event, (payload) => HANDLERS[event](payload ?? {}));
  }
  listen("connect", resync); // also after a reconnect: the server knows this connection by a new id
  subscribe(onChange);
  restore();
  render();
}

/** Show or hide the classroom panel (start / join, or the join code while presenting). */
export function togglePanel(open = ui.panel.hidden) {
  ui.panel.hidden = !open;
  render();
}

// ---- the presenter ----

function start() {
  if (role) return;
  pending.set(request("present_start", {}), "start");
}

function end() {
  if (role?.kind !== "presenter") return;
  pending.set(request("present_end", { code: role.code, secret: role.secret }), "end");
  setRole(null);
  say("You ended the presentation.");
}

/** The share-link query of this tab's view, exactly as its address bar holds it. */
function currentQuery() {
  return new URL(shareUrl(viewOf(getState()))).search.slice(1);
}

function sendState() {
  if (role?.kind !== "presenter") return;
  const state = currentQuery();
  if (state === sent) return;
  sent = state;
  pending.set(request("present_update", { code: role.code, secret: role.secret, state }), "update");
}

// ---- the follower ----

function join(input) {
  const code = String(input || "").trim().toUpperCase();
  if (!CODE_PATTERN.test(code)) {
    say(`"${code}" is not a join code: six letters and digits, like ABC234.`);
    return;
  }
  if (role?.kind === "presenter") return;
  if (role?.kind === "follower" && role.code !== code) leave();
  setRole({ kind: "follower", code, following: true, latest: null });
  say("");
  ui.panel.hidden = true;
  pending.set(request("present_join", { code }), "join");
}

function leave() {
  if (role?.kind !== "follower") return;
  request("present_leave", { code: role.code });
  setRole(null);
}

function toggleFollow() {
  if (role?.kind !== "follower") return;
  role.following = !role.following;
  if (role.following && role.latest) apply(role.latest); // snap back to the presenter's view
  render();
}

/** Open the presenter's view like a share link; the URL follows without new history entries. */
function apply(state) {
  applying = true;
  try {
    openQuery(state, { entry: "replace" });
  } finally {
    applying = false;
  }
}

// ---- socket events ----

const HANDLERS = {
  present_started({ rid, code, secret }) {
    if (pending.get(rid) !== "start") return;
    pending.delete(rid);
    setRole({ kind: "presenter", code, secret, followers: 0 });
    say("");
    sent = null;
    sendState();
    togglePanel(true); // show the join code at once
  },
  present_state({ code, state }) {
    if (role?.kind !== "follower" || code !== role.code) return;
    role.latest = state || role.latest;
    if (role.following && state) apply(state);
    render();
  },
  present_followers({ code, followers }) {
    if (role?.kind !== "presenter" || code !== role.code) return;
    role.followers = followers;
    render();
  },
  present_ended({ code }) {
    if (role?.kind !== "follower" || code !== role.code) return;
    setRole(null);
    say("The presentation has ended. You can keep exploring on your own.");
  },
  error({ rid, code, message: text }) {
    const asked = pending.get(rid);
    if (!asked) return;
    pending.delete(rid);
    if (asked === "join" && role?.kind === "follower") {
      setRole(null);
      say(code === "not_found" ? "No presentation with that code is running. Check the code with your teacher." : text);
    } else if (asked === "update" && role?.kind === "presenter" && (code === "not_found" || code === "forbidden")) {
      setRole(null); // the server restarted or the room expired
      say("This presentation is no longer running on the server. Start a new one.");
    } else if (asked !== "end") {
      say(text);
    }
  },
};

// ---- state ----

/** After (re)connecting: the presenter reclaims its room, a follower joins again. */
function resync() {
  if (role?.kind === "presenter") {
    sent = null;
    sendState();
  } else if (role?.kind === "follower") {
    pending.set(request("present_join", { code: role.code }), "join");
  }
}

function onChange(state, change) {
  if (!change.view || !role) return;
  if (role.kind === "presenter") queueMicrotask(sendState); // once the address bar holds the new view
  else if (role.following && !applying && change.history !== "replace") { // the student's own click, or back/forward
    role.following = false;
    render();
  }
}

/** Pick up a room from this tab's sessionStorage (a reload) or the page's ?join= link. */
function restore() {
  const params = new URLSearchParams(location.search);
  const linked = params.get(JOIN_PARAM)?.trim().toUpperCase();
  if (linked !== undefined) { // keep the code out of the share links this page makes from now on
    params.delete(JOIN_PARAM);
    const query = params.toString();
    history.replaceState(history.state, "", `${location.pathname}${query ? `?${query}` : ""}`);
  }
  const saved = readStorage();
  const code = CODE_PATTERN.test(linked ?? "") ? linked : saved.following;
  if (saved.presenting) role = { kind: "presenter", ...saved.presenting, followers: 0 };
  else if (code) setRole({ kind: "follower", code, following: true, latest: null }); // joins once the socket connects
  else if (linked) say(`"${linked}" is not a join code: six letters and digits, like ABC234.`);
}

function readStorage() {
  try {
    const presenting = JSON.parse(sessionStorage.getItem(PRESENTING_KEY) || "null");
    return { presenting: presenting?.code && presenting?.secret ? presenting : null,
      following: sessionStorage.getItem(FOLLOWING_KEY) };
  } catch {
    return {};
  }
}

function setRole(next) {
  role = next;
  try {
    sessionStorage.removeItem(PRESENTING_KEY);
    sessionStorage.removeItem(FOLLOWING_KEY);
    if (role?.kind === "presenter") sessionStorage.setItem(PRESENTING_KEY, JSON.stringify({ code: role.code, secret: role.secret }));
    if (role?.kind === "follower") sessionStorage.setItem(FOLLOWING_KEY, role.code);
  } catch { /* storage disabled: the room lasts as long as this page */ }
  render();
}

function say(text) {
  message = text;
  render();
}

// ---- view ----

function joinLink(code) {
  return `${location.origin}/?${JOIN_PARAM}=${code}`;
}

function render() {
  if (!ui) return;
  const presenter = role?.kind === "presenter";
  const follower = role?.kind === "follower";
  document.documentElement.dataset.classroom = presenter ? "presenting" : follower ? (role.following ? "following" : "stepped-out") : "";
  ui.bar.hidden = !role && !message;
  ui.bar.dataset.role = role?.kind ?? "notice";
  ui.status.textContent = presenter ? `Presenting · join code ${role.code}`
    : follower ? (role.following ? `Following the presenter · ${role.code}` : `Stepped out of ${role.code}: the presenter goes on without you`)
      : message;
  ui.followers.hidden = !presenter;
  if (presenter) ui.followers.textContent = `${role.followers} following`;
  ui.followers.dataset.count = presenter ? String(role.followers) : "";
  ui.follow.hidden = !follower;
  if (follower) {
    ui.follow.textContent = role.following ? "Step out" : "Snap back";
    ui.follow.title = role.following ? "Explore on your own; the presenter's view keeps arriving" : "Jump to the presenter's current view";
    ui.follow.dataset.following = String(role.following);
  }
  ui.showCode.hidden = !presenter || !ui.panel.hidden;
  ui.end.hidden = !presenter;
  ui.leave.hidden = !follower;
  ui.dismiss.hidden = Boolean(role) || !message;
  ui.choose.hidden = Boolean(role);
  ui.start.disabled = Boolean(role);
  ui.joinCard.hidden = !presenter;
  ui.note.hidden = !follower;
  if (follower) ui.note.textContent = `You follow presentation ${role.code}. Use the bar above to step out, snap back or leave.`;
  if (presenter && ui.joinCard.dataset.code !== role.code) drawJoinCard(role.code);
}

function drawJoinCard(code) {
  const link = joinLink(code);
  const qr = drawQr(h("canvas", { className: "join-qr", "data-testid": "join-qr", "data-link": link,
    "aria-label": `QR code of ${link}` }), encodeQr(link, { level: "M" }), QR_PIXELS);
  const field = h("input", { type: "text", readonly: true, value: link, "aria-label": "Join link", "data-testid": "join-link" });
  const hide = h("button", { type: "button", className: "quiet", text: "Hide", onClick: () => togglePanel(false) });
  const hints = [h("p", { text: "Students open the link, scan the code, or type the code on the page." })];
  if (LOOPBACK.test(location.hostname)) {
    hints.push(h("p", { className: "warning", text: `Students cannot reach ${location.hostname}: start the server with `
      + "--host 0.0.0.0 and open this page at this machine's network address before presenting." }));
  }
  ui.joinCard.replaceChildren(qr, h("div", { className: "join-text" }, [
    h("span", { className: "join-label", text: "Join code" }),
    h("strong", { className: "join-code", "data-testid": "presenter-code", text: code }),
    field, ...hints, hide,
  ]));
  ui.joinCard.dataset.code = code;
}
