"""Security: headers and a script policy BokehJS renders under, debug off, secret key from the
environment, hostile share links rendered inert, no user path reaching the filesystem."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import Config

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"


def test_every_answer_carries_the_security_headers(client):
    for url in ("/", "/api/models", "/api/analysis/xyz/layer", "/no-such-page", "/vendor/bokeh/bokeh.min.js"):
        with client.get(url) as response:
            headers = response.headers
            assert headers["Content-Security-Policy"] == Config.CONTENT_SECURITY_POLICY, url
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert (
                headers["X-Frame-Options"] == "SAMEORIGIN"
                and "frame-ancestors 'self'" in headers["Content-Security-Policy"]
            )
            assert headers["Referrer-Policy"] == "no-referrer"


def test_the_policy_allows_no_inline_script_nor_eval():
    directives = dict(part.strip().split(" ", 1) for part in Config.CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in directives["script-src"] + directives["connect-src"]


def test_the_page_has_no_inline_script(client):
    """Only `src` scripts and one JSON data block (never executed, escaped by |tojson)."""
    page = client.get("/").get_data(as_text=True)
    for tag in page.split("<script")[1:]:
        opening, _, rest = tag.partition(">")
        body = rest.partition("</script>")[0].strip()
        assert " src=" in opening or 'type="application/json"' in opening, opening
        assert "src=" in opening or "<" not in body
    assert " on" not in page.replace("\n", " ").split("<body", 1)[-1].split("=")[0]  # no onclick= etc.


@pytest.mark.parametrize(
    "query",
    [
        {"text": HOSTILE},
        {"model": HOSTILE},
        {"view": HOSTILE, "layer": "1e9", "head": "-1"},
        {"text": "x", "token": "<b>", "heads": "1,<i>,2", "threshold": "NaN", "mode": "javascript:alert(1)"},
    ],
)
def test_hostile_share_links_render_an_inert_page(client, query):
    response = client.get("/", query_string=query)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<script>alert" not in page and "onerror=alert" not in page and "javascript:" not in page


@pytest.mark.parametrize(
    "url",
    [
        "/static/../app/config.py",
        "/static/%2e%2e/app/config.py",
        "/static/..%2fapp%2fconfig.py",
        "/vendor/bokeh/..%2f..%2f..%2fapp%2fconfig.py",
        "/vendor/bokeh/../../app/config.py",
        "/api/analysis/..%2f..%2fapp%2fconfig.py/layer?layer=0",
        "/api/analysis/" + "a" * 64 + "/..%2fconfig",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_no_user_path_reaches_the_filesystem(client, url):
    response = client.get(url, follow_redirects=True)
    body = response.get_data(as_text=True)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert "class Config" not in body and "root:" not in body


def test_debug_is_off_and_the_secret_key_comes_from_the_environment(app, monkeypatch, tmp_path):
    assert not app.debug and not app.config["DEBUG"]
    assert len(app.config["SECRET_KEY"]) >= 32
    monkeypatch.setenv("ATLAS_SECRET_KEY", "from-the-environment")
    monkeypatch.setenv("ATLAS_MAX_CHARS", "1234")
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(tmp_path))
    config = _config_of_a_new_app(monkeypatch)
    assert config["SECRET_KEY"] == "from-the-environment" and config["MAX_CHARS"] == 1234
    assert not config["DEBUG"]


def _config_of_a_new_app(monkeypatch) -> dict:
    """The configuration create_app would build, without binding the shared Socket.IO server."""
    from app import extensions

    captured = {}

    class Stop(Exception):
        pass

    def stop(app, **options):
        captured.update(app.config)
        raise Stop

    monkeypatch.setattr(extensions.socketio, "init_app", stop)
    with pytest.raises(Stop):
        create_app({"TESTING": True})
    return captured


@pytest.mark.parametrize(
    "setting, value",
    [
        ("MAX_CHARS", 0),
        ("MAX_QUEUED_JOBS", -1),
        ("RATE_ANALYZE_PER_MINUTE", "lots"),
        ("MAX_TOKENS", True),
        ("MODEL_MAX_TOKENS", {"minilm": 0}),
        ("MODEL_MAX_TOKENS", [1]),
    ],
)
def test_a_setting_that_would_disable_a_limit_stops_the_start(monkeypatch, setting, value):
    with pytest.raises(ValueError, match=setting):
        create_app({"TESTING": True, setting: value})


# --- the policy in a real browser ------------------------------------------------------------


def test_opener_policy_only_where_browsers_honour_it(client):
    assert client.get("/").headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "Cross-Origin-Opener-Policy" not in client.get("/", headers={"Host": "atlas.classroom:5000"}).headers
