"""Headless Chromium measurements: Attention Atlas from the Analyze click to each painted view,
the bytes its WebSocket carried, and BertViz's HTML from navigation to its drawn SVG.

BertViz pages load require.js, d3 and jQuery from a CDN. There is no internet here, so the
same versions are fetched once from the npm registry (``npm pack``) and Playwright answers the
CDN URLs with those local files (jQuery 2.0.0 is not on npm; 2.1.0 stands in).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tarfile
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
VIEWPORT = {"width": 1280, "height": 900}  # px, a laptop window
VIEW_READY_LIMIT = 60  # s a detail view may take after its tab is clicked before it counts as failed
# CDN file -> (npm package spec, file inside the package tarball)
CDN_FILES = {
    "require.js/2.3.6/require.min.js": ("requirejs@2.3.6", "package/require.js"),
    "d3/5.7.0/d3.min.js": ("d3@5.7.0", "package/dist/d3.min.js"),
    "jquery/2.0.0/jquery.min.js": ("jquery@2.1.0", "package/dist/jquery.min.js"),
}
CDN_PREFIX = "https://cdnjs.cloudflare.com/ajax/libs/"
DETAIL_VIEWS = ("head", "token", "neuron", "matrix", "stats")

# Page-side probes. Time is the page's performance.now(); polled on animation frames.
LONG_TASKS_JS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push([entry.startTime, entry.duration]);
}).observe({ type: "longtask", buffered: true });
"""
MARK_CLICK_JS = """(selector) => {
  window.__paintedAt = window.__readyAt = undefined;
  document.querySelector(selector).addEventListener("click", () => { window.__clickAt = performance.now(); },
    { capture: true, once: true });
}"""
# A canvas counts as painted once any pixel is non-transparent.
PAINTED_CANVAS_JS = """
function painted(canvas) {
  if (!canvas || !canvas.width || !canvas.height) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
  return false;
}
"""
# Once drawn, the time is taken two animation frames later: by then the frame holding the
# drawing has been rendered (style, layout, paint), which for BertViz's SVG is most of the work.
AFTER_NEXT_FRAME_JS = """
function stampAfterNextFrame(name) {
  requestAnimationFrame(() => requestAnimationFrame(() => {
    window[name] = performance.now();
    window.dispatchEvent(new Event(`stamped:${name}`));
  }));
}
"""
# Waits for a stamp without polling: a 20 ms poll woke the page's main thread 50 times a second
# through the forward pass, on the two cores the server's capture runs on (25-45 ms of the
# renderer's time during a 1024-token analysis, in a Chromium trace). The figures did not move
# measurably (8 alternating 1024-token analyses: median ratio 1.226x polling, 1.215x not), but
# the harness now takes nothing from what it measures while it waits.
STAMP_WAIT_JS = """([name, ms]) => new Promise((resolve, reject) => {
  if (window[name] !== undefined) return resolve(window[name]);
  const timer = setTimeout(() => reject(new Error(`not stamped: ${name}`)), ms);
  window.addEventListener(`stamped:${name}`, () => { clearTimeout(timer); resolve(window[name]); }, { once: true });
})"""
# Stamps __paintedAt once the model view of a new analysis is painted. It waits for the page to
# hold the analysis (documentElement's data-analysis names it) without polling: animation-frame
# polling through the forward pass made Chromium render 60 frames a second on the 2 cores the
# server's capture runs on (a 1024-token capture took 2.9-3.2 s with it, 2.6-2.8 s without; the
# page itself renders only when an event changes it). The pixels are then read on each frame
# until drawn, which is at once.
WATCH_MODEL_VIEW_JS = (
    "() => {"
    + PAINTED_CANVAS_JS
    + AFTER_NEXT_FRAME_JS
    + """
  const root = document.documentElement;
  const before = root.dataset.analysis;
  const arrived = () => root.dataset.analysis && root.dataset.analysis !== before;
  const drawn = () => {
    const canvas = document.querySelector('[data-testid="model-canvas"]');
    if (!canvas || canvas.closest("[hidden]") || !painted(canvas)) return requestAnimationFrame(drawn);
    stampAfterNextFrame("__paintedAt");
  };
  const observer = new MutationObserver(() => {
    if (!arrived()) return;
    observer.disconnect();
    drawn();
  });
  observer.observe(root, { attributes: true, attributeFilter: ["data-analysis"] });
}"""
)
# A detail view is ready when its panel shows, no notice (Loading…, error) is left in it, and
# a canvas in it is painted (the statistics panel: its Bokeh plot says ready).
VIEW_READY_JS = (
    "(view) => {"
    + PAINTED_CANVAS_JS
    + AFTER_NEXT_FRAME_JS
    + """
  const panel = document.getElementById(`view-${view}`);
  const banner = document.getElementById("error-banner");
  if (banner && !banner.hidden) return `error: ${banner.textContent.trim()}`;
  if (!panel || panel.hidden) return false;
  const notice = panel.querySelector(".notice");
  if (notice && notice.dataset.kind === "error") return `error: ${notice.textContent}`;
  if (notice) return false;
  const plot = panel.querySelector('[data-testid="stats-plot"]');
  if (plot) {
    if (plot.dataset.state === "error") return "error: the statistics plot failed";
    if (plot.dataset.state !== "ready") return false;
  } else if (![...panel.querySelectorAll("canvas")].some(painted)) return false;
  stampAfterNextFrame("__readyAt");
  return "ok";
}"""
)
LONGEST_TASK_JS = (
    """(since) => Math.max(0, ...window.__longTasks.filter(([start, d]) => start + d >= since).map(([, d]) => d))"""
)
BERTVIZ_DRAWN_JS = (
    "() => {"
    + AFTER_NEXT_FRAME_JS
    + """
  if (!document.querySelector("#vis svg line")) return false;
  stampAfterNextFrame("__drawnAt");
  return true;
}"""
)


def _wait_stamp(page, name: str, timeout: float) -> float:
    """The page-clock milliseconds stamped into ``window[name]`` after the next rendered frame;
    PlaywrightTimeout after ``timeout`` s."""
    try:
        return page.evaluate(STAMP_WAIT_JS, [name, timeout * 1000])
    except PlaywrightError as error:
        if f"not stamped: {name}" in str(error):
            raise PlaywrightTimeout(f"{name} was not stamped within {timeout:.0f} s") from None
        raise


def local_cdn_files(cache: Path) -> dict[str, Path]:
    """CDN path -> local file, fetched with ``npm pack`` into ``cache`` on first use.

    Raises RuntimeError when npm cannot fetch a package (no npm, no registry).
    """
    cache.mkdir(parents=True, exist_ok=True)
    files = {}
    for cdn_path, (package, member) in CDN_FILES.items():
        target = cache / package / Path(member).name
        if not target.exists():
            try:
                name = (
                    subprocess.run(
                        ["npm", "pack", package, "--silent"], cwd=cache, check=True, capture_output=True, text=True
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
            except (OSError, subprocess.CalledProcessError, IndexError) as error:
                raise RuntimeError(f"could not fetch {package} with npm pack: {error}") from error
            with tarfile.open(cache / name) as archive:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
        files[cdn_path] = target
    return files


class FrameLog:
    """Every WebSocket frame of a page: (seconds, direction, bytes, Socket.IO event).

    Socket.IO sends an event with binary arrays as one text frame (``45N-/atlas,["name",...]``)
    followed by N binary frames; the binary frames are attributed to that event.
    """

    PACKET = re.compile(r'^4([0-9])(?:(\d+)-)?(?:/[^,]*,)?\d*\["([^"]+)"')

    def __init__(self, page):
        self.frames: list[tuple[float, str, int, str]] = []
        self.texts: dict[str, str] = {}  # last text frame of each event (for its JSON fields)
        self._event, self._attachments = "", 0
        self.connected = False  # the namespace connect answer arrived
        page.on("websocket", self._attach)

    def _attach(self, socket) -> None:
        socket.on("framereceived", lambda payload: self._add("in", payload))
        socket.on("framesent", lambda payload: self._add("out", payload))

    def _add(self, direction: str, payload) -> None:
        at = time.perf_counter()
        if isinstance(payload, str):
            size = len(payload.encode("utf-8"))
            match = self.PACKET.match(payload)
            event = match.group(3) if match else "engine.io"
            if direction == "in":
                self.connected = self.connected or payload.startswith("40")
                self._event, self._attachments = event, int(match.group(2) or 0) if match else 0
                self.texts[event] = payload
        else:
            size = len(payload)
            event = self._event if direction == "in" and self._attachments else "binary"
            if direction == "in" and self._attachments:
                self._attachments -= 1
        self.frames.append((at, direction, size, event))

    def mark(self) -> int:
        return len(self.frames)

    def complete(self, event: str, since: int) -> float | None:
        """Time the last frame (with all attachments) of ``event`` arrived after ``since``."""
        last = None
        for index in range(since, len(self.frames)):
            at, direction, _, name = self.frames[index]
            if direction == "in" and name == event:
                last = at
        return last

    def received(self, since: int, until_event: str | None = None) -> int:
        """Bytes received after frame ``since``, up to and including ``until_event`` if given."""
        total, seen = 0, False
        for _at, direction, size, name in self.frames[since:]:
            if direction != "in":
                continue
            if seen and name != until_event:
                break
            total += size
            seen = seen or (until_event is not None and name == until_event)
        return total

    def json_of(self, event: str) -> dict:
        """The JSON fields of the last text frame of ``event`` (binary placeholders left in)."""
        text = self.texts[event]
        return json.loads(text[text.index("[") :])[1]


class Chromium:
    """Playwright with Debian's Chromium; one fresh browser per ``with`` block."""

    def __enter__(self):
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        return self

    def __exit__(self, *exc):
        try:
            self.browser.close()
        finally:
            self._playwright.stop()

    def new_page(self):
        page = self.browser.new_context(viewport=VIEWPORT).new_page()
        page.add_init_script(LONG_TASKS_JS)
        return page


def open_atlas(browser: Chromium, url: str):
    """A fresh page of the app, connected to its Socket.IO namespace; returns (page, frames)."""
    page = browser.new_page()
    frames = FrameLog(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error).splitlines()[0]))
    page.goto(url + "/", wait_until="load")
    deadline = time.perf_counter() + 30
    while not frames.connected:
        if time.perf_counter() > deadline:
            raise RuntimeError(
                "the page did not open its Socket.IO connection in 30 s"
                + (f" (page errors: {'; '.join(errors)[:300]})" if errors else "")
            )
        page.wait_for_timeout(50)
    return page, frames


def atlas_first_view(page, frames: FrameLog, model: str, text: str, limit: float) -> dict:
    """Type the prompt, click Analyze, wait until the model view's canvas has pixels.

    Returns seconds (page clock) from the click to the painted view, Playwright-clock seconds
    from the ``analyze`` frame to the complete ``overview``, bytes received before the view
    (everything up to the complete ``overview``) and until ``done``, and the run's timings
    the server put in the ``tokens`` event. Raises RuntimeError on an error or after ``limit`` s.
    """
    page.select_option("#model", model)
    page.fill("#prompt", text)
    page.evaluate(MARK_CLICK_JS, "#analyze")
    page.evaluate(WATCH_MODEL_VIEW_JS)
    since = frames.mark()
    page.click("#analyze")
    try:
        painted_at = _wait_stamp(page, "__paintedAt", limit)
        click_at = page.evaluate("window.__clickAt")
        painted = (painted_at - click_at) / 1000
    except PlaywrightTimeout:
        raise RuntimeError(f"the model view was not painted within {limit:.0f} s") from None
    deadline = time.perf_counter() + limit
    while frames.complete("done", since) is None:  # 'done' follows the overview closely
        if time.perf_counter() > deadline:
            raise RuntimeError("no 'done' event after the overview")
        page.wait_for_timeout(20)
    sent = next(at for at, direction, _, name in frames.frames[since:] if direction == "out" and name == "analyze")
    info = frames.json_of("tokens")["info"]
    return {
        "painted": painted,
        "overview": frames.complete("overview", since) - sent,
        "bytes_first_view": frames.received(since, "overview"),
        "bytes_analysis": frames.received(since, "done"),
        "capture_seconds": info.get("capture_seconds"),
        "forward_seconds": info.get("forward_seconds"),
        "longest_task": page.evaluate(LONGEST_TASK_JS, click_at) / 1000,
    }


def atlas_views(page, frames: FrameLog) -> dict:
    """Open every other view in turn; per view: seconds from the tab click until it is drawn,
    bytes it fetched, the longest main-thread task meanwhile, or the error it showed."""
    results = {}
    for view in DETAIL_VIEWS:
        selector = f'[role=tab][data-view="{view}"]'
        page.evaluate(MARK_CLICK_JS, selector)
        since = frames.mark()
        page.click(selector)
        entry: dict = {}
        try:
            outcome = page.wait_for_function(
                VIEW_READY_JS, arg=view, polling="raf", timeout=VIEW_READY_LIMIT * 1000
            ).json_value()
            if outcome == "ok":
                ready = _wait_stamp(page, "__readyAt", VIEW_READY_LIMIT)
                entry["seconds"] = (ready - page.evaluate("window.__clickAt")) / 1000
            else:
                entry["error"] = outcome[:200]
        except PlaywrightTimeout:
            entry["error"] = f"not drawn within {VIEW_READY_LIMIT} s"
        page.wait_for_timeout(100)  # let trailing frames of this view arrive before counting
        entry["bytes"] = frames.received(since)
        entry["longest_task"] = page.evaluate(LONGEST_TASK_JS, page.evaluate("window.__clickAt")) / 1000
        results[view] = entry
    return results


def page_asset_bytes(browser: Chromium, url: str) -> int:
    """Bytes of the page and everything it loads over HTTP (HTML, CSS, JS modules, Bokeh)."""
    page = browser.new_page()
    sizes = []

    def count(response):
        with contextlib.suppress(PlaywrightError):  # redirects and aborted requests have no body
            sizes.append(len(response.body()))

    page.on("response", count)
    page.goto(url + "/", wait_until="networkidle")
    page.context.close()
    return sum(sizes)


def bertviz_render(html: Path, cdn_files: dict[str, Path], limit: float) -> dict:
    """Seconds from navigating to BertViz's HTML until its SVG with attention lines is rendered, in a fresh
    browser (so a page that never finishes cannot slow what follows), or the failure."""
    with Chromium() as chromium:
        page = chromium.new_page()

        def serve_cdn(route):
            path = cdn_files.get(route.request.url.removeprefix(CDN_PREFIX))
            if path:
                route.fulfill(path=str(path), content_type="application/javascript")
            else:
                route.abort()

        page.route(CDN_PREFIX + "**", serve_cdn)
        crashed = []
        page.on("crash", lambda _: crashed.append(True))
        started = time.perf_counter()
        try:
            page.goto(html.as_uri(), wait_until="commit", timeout=limit * 1000)
            remaining = max(1.0, limit - (time.perf_counter() - started))
            page.wait_for_function(BERTVIZ_DRAWN_JS, polling="raf", timeout=remaining * 1000)
            remaining = max(1.0, limit - (time.perf_counter() - started))
            return {
                "render_seconds": _wait_stamp(page, "__drawnAt", remaining) / 1000,
                "longest_task": page.evaluate(LONGEST_TASK_JS, 0) / 1000,
            }
        except PlaywrightTimeout:
            return {"error": f"not drawn within {limit:.0f} s"}
        except PlaywrightError as error:
            reason = "the renderer crashed" if crashed else str(error).splitlines()[0][:160]
            return {"error": reason, "after": time.perf_counter() - started}
