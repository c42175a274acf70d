"""The classroom features in a real browser: presenter mode with followers in other browser
profiles, the QR code of the join link, the demo gallery, exports (PNG, SVG, data, an offline
HTML file that renders with the network blocked), short links, and opening an uploaded capture
by its key."""

from __future__ import annotations

import json
import re
import struct
import urllib.request
import xml.etree.ElementTree as ElementTree
import zlib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.browser.conftest import watch
from tests.browser.helpers import (
    INK_PIXELS,
    PROMPT,
    analyze,
    ink,
    model_cell_center,
    open_view,
    query_state,
    wait_ink,
    wait_ready,
)

pytestmark = pytest.mark.browser

FOLLOW_MS = 1_000  # a follower shows the presenter's change within this
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"

# Send a request from a page's own socket (socket.js) and return the code of the `error` it gets.
FORGE = """async ([event, fields]) => {
  const { listen, request } = await import("/static/js/socket.js");
  return await new Promise((resolve) => {
    let rid = null;
    listen("error", (payload) => { if (payload.rid === rid) resolve(payload.code); });
    rid = request(event, fields);
    setTimeout(() => resolve("no error"), 5000);
  });
}"""


def new_page(open_context):
    context, log = open_context()
    page = watch(context.new_page(), log)
    page.set_default_timeout(30_000)
    return page, log


def follower_sees(page, **state) -> None:
    """Wait (at most FOLLOW_MS) until the page's URL holds these view fields."""
    page.wait_for_function(
        "(state) => { const q = new URLSearchParams(location.search);"
        " return Object.entries(state).every(([k, v]) => q.get(k) === v); }",
        arg={k: str(v) for k, v in state.items()},
        timeout=FOLLOW_MS,
    )


def followers(page) -> str:
    return page.get_attribute("[data-testid=followers]", "data-count")


# ---- presenter mode ----


def test_followers_follow_the_presenter_and_only_the_presenter(page_log, live_server, open_context):
    page, log = page_log
    analyze(page, live_server)
    page.click("[data-testid=open-classroom]")
    page.click("[data-testid=start-presenting]")
    code = page.text_content("[data-testid=presenter-code]")
    assert len(code) == 6
    join_link = page.input_value("[data-testid=join-link]")
    assert join_link == f"{live_server}/?join={code}"
    assert page.get_attribute("[data-testid=join-qr]", "data-link") == join_link
    assert wait_ink(page, "[data-testid=join-qr]", minimum=2_000)
    secret = page.evaluate("() => JSON.parse(sessionStorage.getItem('attention-atlas.presenting')).secret")
    assert secret and not any(secret in url for url in [page.url, *log.requests])

    student, student_log = new_page(open_context)  # joins by link
    frames: list[str] = []  # what the student's socket sends
    student.on("websocket", lambda socket: socket.on("framesent", lambda frame: frames.append(str(frame))))
    student.goto(join_link)
    wait_ready(student)
    assert "join=" not in student.url and query_state(student)["text"] == PROMPT
    page.wait_for_selector("[data-testid=followers][data-count='1']")
    other, other_log = new_page(open_context)  # joins by typing the code
    other.goto(live_server)
    other.click("[data-testid=open-classroom]")
    other.fill("[data-testid=join-code]", code.lower())
    other.click("[data-testid=join]")
    wait_ready(other)
    page.wait_for_selector("[data-testid=followers][data-count='2']")

    # The presenter opens layer 2, head 3 in the head view, then layer 4: both students follow within a second.
    page.click("[data-testid=model-canvas]", position=model_cell_center(page, layer=2, head=3))
    for follower in (student, other):
        follower_sees(follower, view="head", layer=2, head=3)
    page.select_option("#view-head select[name=layer]", "4")
    for follower in (student, other):
        follower_sees(follower, view="head", layer=4, head=3)
    student.wait_for_selector("[data-testid=head-canvas][data-layer='4']")
    assert student.input_value("#view-head select[name=layer]") == "4"
    assert wait_ink(student, "[data-testid=head-canvas]")
    assert "from cache" in student.text_content("#run-info")  # no second forward pass for the students
    assert sum('["analyze"' in frame for frame in frames) == 1  # and no new analysis round trip per change

    # A student's own change steps out and reaches nobody; nor does a forged update.
    student.click("[role=tab][data-view=token]")
    student.wait_for_selector("[data-testid=follow-toggle][data-following=false]")
    assert "Stepped out" in student.text_content("[data-testid=classroom-status]")
    assert (
        student.evaluate(FORGE, ["present_update", {"code": code, "secret": "guessed", "state": "view=stats"}])
        == "forbidden"
    )
    assert student.evaluate(FORGE, ["present_end", {"code": code, "secret": ""}]) == "forbidden"
    page.wait_for_timeout(300)
    assert query_state(other)["view"] == "head" and query_state(page)["view"] == "head"

    # While stepped out the presenter's changes wait; snapping back applies the latest.
    page.click("[role=tab][data-view=neuron]")
    follower_sees(other, view="neuron", layer=4, head=3)
    assert query_state(student)["view"] == "token"
    student.click("[data-testid=follow-toggle]")
    follower_sees(student, view="neuron", layer=4, head=3)
    student.wait_for_selector("[data-testid=follow-toggle][data-following=true]")

    # Leaving lowers the count; ending the room tells everyone left.
    other.click("#classroom button:text('Leave')")
    page.wait_for_selector("[data-testid=followers][data-count='1']")
    page.click("[data-testid=end-presentation]")
    student.wait_for_selector("[data-testid=classroom-status]:text('The presentation has ended')")
    assert student.evaluate("() => sessionStorage.getItem('attention-atlas.following')") is None
    for follower_log in (student_log, other_log):
        assert not follower_log.errors and not follower_log.external_requests()


def test_a_wrong_join_code_says_so(page, live_server):
    page.goto(f"{live_server}/?join=ZZZZZZ")
    page.wait_for_selector("[data-testid=classroom-status]:text('No presentation with that code')")
    assert "join=" not in page.url


def test_qr_code_matches_the_qrcode_package(page, live_server):
    """Every module of static/js/qr.js's output against the `qrcode` package (byte mode, same
    level and version; once with a forced mask and once with the mask each one chooses)."""
    qrcode = pytest.importorskip("qrcode")
    from qrcode.util import MODE_8BIT_BYTE, QRData

    page.goto(live_server)
    texts = [
        "A",
        f"{live_server}/?join=ABC234",
        "https://atlas.example.org/?join=XY7Q2M&x=" + "é" * 40,
        "http://192.168.100.200:5000/?" + "model=minilm&text=" + "a" * 150,
    ]
    cases = [(text, level, mask) for text in texts for level in "LM" for mask in (None, len(text) % 8)]
    encoded = page.evaluate(
        """async (cases) => {
      const { encodeQr } = await import("/static/js/qr.js");
      return cases.map(([text, level, mask]) => encodeQr(text, { level, mask }));
    }""",
        cases,
    )
    levels = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M}
    for (text, level, mask), ours in zip(cases, encoded):
        reference = qrcode.QRCode(error_correction=levels[level], mask_pattern=mask, border=0)
        reference.add_data(QRData(text.encode(), mode=MODE_8BIT_BYTE))
        reference.make(fit=True)
        assert ours["version"] == reference.version, (text, level)
        assert ours["modules"] == [[bool(m) for m in row] for row in reference.modules], (text, level, mask)
    assert max(code["version"] for code in encoded) == 10
    too_long = page.evaluate("""async () => {
      const { encodeQr } = await import("/static/js/qr.js");
      try { encodeQr("x".repeat(300), { level: "M" }); return ""; } catch (e) { return e.name; }
    }""")
    assert too_long == "RangeError"


# ---- gallery, short links, open by key ----


def test_gallery_lists_items_and_opens_their_views(page, live_server):
    page.goto(live_server)
    page.click("[data-testid=open-gallery]")
    page.wait_for_selector("[data-testid=gallery-list] .gallery-item")
    items = json.loads(urllib.request.urlopen(f"{live_server}/api/gallery").read())["items"]
    assert page.locator(".gallery-item").count() == len(items) >= 2
    assert page.text_content(".gallery-item[data-item=agreement] .gallery-text").startswith("The verb")

    page.click(".gallery-item[data-item=agreement] [data-testid=gallery-open]")
    wait_ready(page)
    page.wait_for_selector("[data-testid=token-outgoing][data-token='8']")
    state = query_state(page)
    assert (state["view"], state["token"], state["model"]) == ("token", "8", "minilm")
    assert page.get_attribute("#view-token .token-strip [aria-pressed=true]", "data-index") == "8"
    assert page.get_attribute("[data-testid=gallery-panel]", "hidden") is not None

    page.click("[data-testid=open-gallery]")  # a link with a field of another view, kept as it is
    page.click(".gallery-item[data-item=delimiters] [data-testid=gallery-open]")
    wait_ready(page)
    assert (query_state(page)["view"], query_state(page)["filter"]) == ("heads", "DELIMITER")
    page.go_back()
    page.wait_for_selector("[data-testid=token-outgoing][data-token='8']")


def test_short_link_round_trips(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="matrix", layer=3, head=5)
    page.click("[data-testid=open-short-link]")
    page.wait_for_function("() => document.querySelector('[data-testid=short-link]').value.includes('/s/')")
    link = page.input_value("[data-testid=short-link]")
    assert link.startswith(f"{live_server}/s/") and len(urlparse(link).path) == len("/s/") + 10
    assert PROMPT.split()[1] not in link

    fresh, log = new_page(open_context)
    fresh.goto(link)
    wait_ready(fresh)
    state = query_state(fresh)
    assert (state["view"], state["layer"], state["head"], state["text"]) == ("matrix", "3", "5", PROMPT)
    fresh.wait_for_selector("[data-testid=matrix-canvas][data-block]")
    page.click("[role=tab][data-view=token]")  # the link named the old view
    page.wait_for_function("() => document.querySelector('[data-testid=short-link]').value === ''")
    assert not log.errors


def upload_capture(base: str) -> dict:
    """Analyse a prompt, download its NPZ export and upload it as a capture (the notebook bridge's path)."""
    body = json.dumps({"model": "minilm", "text": "Uploaded captures open by key."}).encode()
    request = urllib.request.Request(f"{base}/api/analyze", body, {"Content-Type": "application/json"})
    key = json.loads(urllib.request.urlopen(request).read())["key"]
    npz = urllib.request.urlopen(f"{base}/api/analysis/{key}/export.npz").read()
    request = urllib.request.Request(f"{base}/api/captures", npz, {"Content-Type": "application/octet-stream"})
    return json.loads(urllib.request.urlopen(request).read())


def test_key_link_opens_an_uploaded_capture(page, live_server):
    upload = upload_capture(live_server)
    page.goto(f"{live_server}{upload['link']}&view=head&layer=1")
    wait_ready(page)
    assert page.get_attribute("html", "data-analysis") == upload["key"]
    state = query_state(page)
    assert (state["key"], state["view"], state["layer"]) == (upload["key"], "head", "1")
    assert state["text"] == "Uploaded captures open by key."
    page.wait_for_selector("[data-testid=head-canvas][data-layer='1']")
    assert wait_ink(page, "[data-testid=head-canvas]")
    assert page.input_value("#prompt") == "Uploaded captures open by key."
    page.click("[role=tab][data-view=model]")
    assert wait_ink(page, "[data-testid=model-canvas]", minimum=10_000)
    assert query_state(page)["key"] == upload["key"]


# ---- exports ----


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and that its pixels inflate."""
    assert data[:8] == PNG_SIGNATURE
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    channels = {2: 3, 6: 4}[colour]
    assert depth == 8 and len(zlib.decompress(b"".join(chunks))) == height * (1 + width * channels)
    return width, height


def download(page, testid: str) -> bytes:
    with page.expect_download() as info:
        page.click(f"[data-testid={testid}]")
    return Path(info.value.path()).read_bytes()


def test_exports_png_svg_data_and_an_offline_file(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="head", layer=2, heads="3,7", head=3)
    page.wait_for_selector("[data-testid=head-canvas][data-ready=true]")
    page.click("[data-testid=open-export]")

    width, height = png_size(download(page, "export-png"))
    canvas = page.locator("[data-testid=head-canvas]").bounding_box()
    assert width >= canvas["width"] and height > canvas["height"]

    svg = ElementTree.fromstring(download(page, "export-svg"))
    assert svg.tag == f"{SVG_NS}svg" and float(svg.get("width")) > 0
    texts = [node.text for node in svg.iter(f"{SVG_NS}text")]
    assert any("Head view" in text and "layer 2" in text for text in texts)
    assert any("The cat sat" in text for text in texts)
    assert svg.find(f".//{SVG_NS}image") is None and len(list(svg.iter(f"{SVG_NS}path"))) > 2  # vector links

    key = page.get_attribute("html", "data-analysis")
    for kind in ("json", "npz"):
        assert page.get_attribute(f"[data-testid=export-{kind}]", "href") == f"/api/analysis/{key}/export.{kind}"
    document = json.loads(urllib.request.urlopen(f"{live_server}/api/analysis/{key}/export.json").read())
    assert len(document["attention"]) == 6 and len(document["tokens"]) == 13

    html = download(page, "export-html").decode()
    modules = json.loads(re.search(r'id="atlas-modules">(.*?)</script>', html, re.S).group(1))["sources"]
    for painter in ("views/model.js", "views/head.js", "headgrid.js", "draw.js"):  # the page's own, not copies
        assert modules[painter] == urllib.request.urlopen(f"{live_server}/static/js/{painter}").read().decode()
    offline, log, requests = new_offline_page(open_context)
    offline.set_content(html)
    offline.wait_for_selector("html[data-ready=true]")
    model, head = "[data-testid=model-canvas]", "[data-testid=head-canvas]"  # the live views' own canvases
    assert wait_ink(offline, model, minimum=20_000) and wait_ink(offline, head, minimum=2_000)
    assert "The cat sat on the mat" in offline.text_content("#prompt")
    before = ink(offline, head)
    offline.click("#view-head .swatch[data-head='3']")  # turn head 3 off: fewer lines
    offline.wait_for_function(f"([selector, before]) => ({INK_PIXELS})(selector) < before", arg=[head, before])
    offline.click(model, position=model_cell_center(offline, layer=4, head=0))  # the file holds every layer
    offline.wait_for_selector("[data-testid=head-canvas][data-layer='4']")
    assert offline.locator("#view-head .notice").count() == 0 and wait_ink(offline, head, minimum=2_000)
    assert requests == [] and not log.errors


def new_offline_page(open_context):
    """A fresh profile where every network request fails and is recorded."""
    context, log = open_context()
    requests: list[str] = []
    context.route("**/*", lambda route: (requests.append(route.request.url), route.abort()))
    page = watch(context.new_page(), log)
    return page, log, requests
