"""The command line, run as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.real_model
@pytest.mark.parametrize("model, layers, heads", [("minilm", 6, 12), ("smollm2", 30, 9)])
def test_capture_writes_attention_and_repeats_from_the_cache(tmp_path, cache_root, model, layers, heads):
    out = tmp_path / f"{model}.npz"
    args = (
        "--cache-dir",
        str(cache_root),
        "capture",
        "--model",
        model,
        "--text",
        "Paris is lovely.",
        "--out",
        str(out),
    )
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    with np.load(out) as data:
        attention, tokens = data["attention"], data["tokens"]
    assert attention.shape == (layers, heads, len(tokens), len(tokens))
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-2)
    second = run_cli(*args)
    assert second.returncode == 0 and "from the cache" in second.stdout


def test_capture_reports_bad_input(tmp_path, cache_root):
    result = run_cli(
        "--cache-dir", str(cache_root), "capture", "--model", "nope", "--text", "x", "--out", str(tmp_path / "x.npz")
    )
    assert result.returncode == 2 and "unknown model" in result.stderr


def test_a_process_with_no_model_imports_torch_at_start_not_at_its_first_detail(tmp_path):
    """A web process beside model workers loads no model; its first detail (top keys, in torch)
    waited 1.5-3 s for torch's import. The app starts without torch and imports it in the
    background, before any request."""
    code = f"""
import sys, threading
from app import create_app
assert "torch" not in sys.modules
create_app({{"TESTING": True, "CACHE_DIR": {str(tmp_path)!r}, "PRELOAD_MODELS": [], "PRECOMPUTE_GALLERY": False}})
importer = next(thread for thread in threading.enumerate() if thread.name == "import-torch")
importer.join(120)
print(callable(sys.modules["torch"].topk))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
