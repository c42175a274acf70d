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
