"""The head-roles filter follows the prompt shown: after a second prompt its counts are that
prompt's, the same counts the legend gives (they once kept the first prompt's)."""

from __future__ import annotations

import re

import pytest

from tests.browser.helpers import PROMPT, open_view, wait_ready

pytestmark = pytest.mark.browser

SECOND = "The cat sat on the mat."  # the same roles and clusters as PROMPT on minilm, in other numbers
OPTION = re.compile(r"(\w+) heads \((\d+)\)")
LEGEND = re.compile(r"(\w+) · (\d+)")


def counts(page) -> tuple[dict[str, int], dict[str, int]]:
    """Role -> heads, as the filter's options and as the legend say."""
    options = page.locator("#view-heads select[name=filter] option").all_text_contents()
    legend = page.locator("[data-testid=roles-legend] button[data-role]").all_text_contents()
    from_options = {m[1]: int(m[2]) for text in options if (m := OPTION.fullmatch(text))}
    return from_options, {m[1]: int(m[2]) for text in legend if (m := LEGEND.fullmatch(text.strip()))}


def test_filter_counts_follow_the_prompt(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="heads")
    page.wait_for_selector("[data-testid=roles-legend] button[data-role]")
    first, legend = counts(page)
    assert first and first == legend

    key = page.evaluate("() => document.documentElement.dataset.analysis")
    legend_text = page.text_content("[data-testid=roles-legend]")
    page.fill("#prompt", SECOND)
    page.click("#analyze")
    page.wait_for_function("(key) => document.documentElement.dataset.analysis !== key", arg=key)
    wait_ready(page)
    page.wait_for_function(  # the legend is redrawn for the second prompt
        "(before) => document.querySelector('[data-testid=roles-legend]').textContent !== before", arg=legend_text
    )
    second, legend = counts(page)
    assert second.keys() == first.keys() and second != first, "pick prompts with the same roles in other numbers"
    assert second == legend, f"the filter kept stale counts: {second} vs the legend's {legend}"
