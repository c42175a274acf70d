"""Regenerate docs/screenshots/{model,head,token,neuron,matrix,stats,heads,rollout,compare,lens,generate}.png:
one picture per view on the packaged models, taken with Debian's Chromium through Playwright; and the classroom
pictures presenter.png, follower.png (a teacher presenting, a student following) and gallery.png.

    python scripts/screenshots.py                 # starts its own server on a free port
    python scripts/screenshots.py --url http://127.0.0.1:5000   # uses a running one

Each view is opened from a share link (the same URL a user would send), so the pictures also
show that links restore views. Fails if a view logs a console error or its canvas stays blank.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: the app's own server starter

from tests.browser.helpers import READY, head_token_position, wait_ink  # noqa: E402
from tests.browser.server import CHROMIUM, CHROMIUM_ARGS, running_server  # noqa: E402

OUT_DIR = REPO_ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 960}  # CSS px
SCALE = 1  # device pixels per CSS pixel of the PNGs
SETTLE_MS = 600  # after a view reports ready, for animation frames and Bokeh layout
ANALYSIS_MS = 120_000  # smollm2's first load converts its GGUF weights

PROMPT = "The cat sat on the mat because it was tired."
DECODER_PROMPT = "When Mary and John went to the store, John gave a drink to"
BIAS_A = "The doctor asked the nurse a question. She"  # the compare view's preset (after BertViz)
BIAS_B = "The doctor asked the nurse a question. He"
# view -> (share-link state, selector of the view's element once it has painted; a canvas must not be blank)
SHOTS = {
    "model": (
        {"model": "minilm", "text": PROMPT, "view": "model", "layer": 2, "head": 9},
        "canvas[data-testid=model-canvas][data-grid]",
    ),
    "head": (
        {"model": "minilm", "text": PROMPT, "view": "head", "layer": 2, "heads": "0,5,9", "head": 9, "token": 8},
        "canvas[data-testid=head-canvas][data-ready=true]",
    ),
    "token": (
        {"model": "smollm2", "text": DECODER_PROMPT, "view": "token", "token": 12},
        "canvas[data-testid=token-incoming][data-token='12']",
    ),
    "neuron": (
        {"model": "smollm2", "text": DECODER_PROMPT, "view": "neuron", "layer": 9, "head": 4, "token": 12},
        "canvas[data-testid=neuron-canvas][data-query='12']",
    ),
    "matrix": (
        {"model": "smollm2", "text": DECODER_PROMPT, "view": "matrix", "layer": 9, "head": 4, "mode": "scores"},
        "canvas[data-testid=matrix-canvas][data-mode=scores]",
    ),
    "stats": ({"model": "minilm", "text": PROMPT, "view": "stats"}, "[data-testid=stats-plot][data-state=ready]"),
    # the analysis views
    "heads": (
        {"model": "smollm2", "text": DECODER_PROMPT, "view": "heads", "layer": 3, "head": 1},
        "canvas[data-testid=heads-canvas][data-measure=role]",
    ),
    "rollout": (
        {"model": "minilm", "text": PROMPT, "view": "rollout", "token": 8},
        "canvas[data-testid=rollout-bars][data-flow=ready]",
    ),
    "compare": (
        {"model": "minilm", "text": BIAS_A, "text2": BIAS_B, "view": "compare", "layer": 5, "head": 8},
        "canvas[data-testid=compare-difference][data-ready=true]",
    ),
    "lens": (
        {"model": "smollm2", "text": DECODER_PROMPT, "view": "lens", "token": 12},
        "[data-testid=lens-table] td[data-layer]",
    ),
    "generate": (
        {"model": "smollm2", "text": "The capital of France is", "view": "generate", "generate": 8, "step": 0},
        "canvas[data-testid=generate-attention][data-token]",
    ),
}


@contextmanager
def server(url: str | None, cache_dir: str | None):
    """A running app: the one at `url`, or a fresh `python -m app serve` stopped afterwards."""
    if url:
        yield url.rstrip("/")
        return
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_server(cache_dir or scratch, Path(scratch) / "server.log") as base,
    ):
        yield base


def take(page, base: str, name: str, state: dict, ready: str, errors: list[str]) -> Path:
    page.goto(f"{base}/?{urlencode(state)}")
    page.wait_for_function(READY, timeout=ANALYSIS_MS)
    page.wait_for_selector(ready, timeout=30_000)
    if ready.startswith("canvas"):
        wait_ink(page, ready)
    if name == "head":  # show hover isolation: the links of the chosen token only
        page.hover(ready, position=head_token_position(page, state["token"]))
    return save(page, name, errors)


# ---- classroom: two browser profiles (teacher and student) and the gallery ----
CLASSROOM_HOST = "atlas.classroom"  # a LAN-style name for the server, so the join link looks as in a class
CLASSROOM_HOST_RULE = f"--host-resolver-rules=MAP {CLASSROOM_HOST} 127.0.0.1"
CLASSROOM_VIEW = {"model": "minilm", "text": PROMPT, "view": "head", "layer": 2, "heads": "0,5,9", "head": 9}


def lan_url(base: str) -> str:
    """The server's URL under CLASSROOM_HOST (Chromium resolves it to this machine)."""
    return base.replace("127.0.0.1", CLASSROOM_HOST).replace("localhost", CLASSROOM_HOST)


# Chromium's notice for any plain-http origin other than localhost (as a class LAN is): not the app's error.
COOP_NOTICE = "The Cross-Origin-Opener-Policy header has been ignored"


def fresh_page(browser, errors: list[str]):
    """A page in a new profile (its own sessionStorage), logging console errors into `errors`."""
    page = browser.new_context(viewport=VIEWPORT, device_scale_factor=SCALE).new_page()
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and not message.text.startswith(COOP_NOTICE)
            else None
        ),
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def save(page, name: str, errors: list[str]) -> Path:
    """Screenshot the whole page into docs/screenshots/NAME.png once it settled; fails on logged errors."""
    page.wait_for_timeout(SETTLE_MS)
    if errors:
        raise SystemExit(f"{name}: the page logged errors: {errors}")
    path = OUT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def classroom(browser, base: str, errors: list[str]) -> list[Path]:
    """presenter.png: a teacher presenting, join code and QR code shown, one student following;
    follower.png: that student's page after the teacher moved to another layer."""
    teacher = fresh_page(browser, errors)
    teacher.goto(f"{base}/?{urlencode(CLASSROOM_VIEW)}")
    teacher.wait_for_function(READY, timeout=ANALYSIS_MS)
    teacher.click("[data-testid=open-classroom]")
    teacher.click("[data-testid=start-presenting]")
    code = teacher.text_content("[data-testid=presenter-code]")
    student = fresh_page(browser, errors)
    student.goto(f"{base}/?join={code}")
    student.wait_for_function(READY, timeout=ANALYSIS_MS)
    teacher.wait_for_selector("[data-testid=followers][data-count='1']")
    wait_ink(teacher, "canvas[data-testid=head-canvas]")
    shots = [save(teacher, "presenter", errors)]
    teacher.select_option("#view-head select[name=layer]", "4")
    student.wait_for_selector("canvas[data-testid=head-canvas][data-layer='4'][data-ready=true]")
    wait_ink(student, "canvas[data-testid=head-canvas]")
    shots.append(save(student, "follower", errors))
    teacher.context.close()
    student.context.close()
    return shots


def gallery(browser, base: str, errors: list[str]) -> list[Path]:
    """gallery.png: the demo gallery opened over the model view."""
    page = fresh_page(browser, errors)
    page.goto(f"{base}/?{urlencode({**CLASSROOM_VIEW, 'view': 'model'})}")
    page.wait_for_function(READY, timeout=ANALYSIS_MS)
    page.click("[data-testid=open-gallery]")
    page.wait_for_selector("[data-testid=gallery-list] .gallery-item")
    shots = [save(page, "gallery", errors)]
    page.context.close()
    return shots


CLASSROOM_SHOTS = {"classroom": classroom, "gallery": gallery}  # name -> function(browser, base, errors) -> paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running Attention Atlas (default: start one)")
    parser.add_argument("--cache-dir", help="cache folder for the started server (keeps converted weights)")
    parser.add_argument("--only", nargs="*", choices=sorted([*SHOTS, *CLASSROOM_SHOTS]), help="just these views")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with server(args.url, args.cache_dir) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, CLASSROOM_HOST_RULE])
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=SCALE)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        for name in args.only or [*SHOTS, *CLASSROOM_SHOTS]:
            if name in CLASSROOM_SHOTS:
                print(*CLASSROOM_SHOTS[name](browser, lan_url(base), errors), sep="\n")
                continue
            state, ready = SHOTS[name]
            print(take(page, base, name, state, ready, errors))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
