"""Results -> Markdown tables, ratios and the issue's targets, printed and written into
docs/benchmarks.md (one block per model, between markers, so runs on other models stay)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
ATLAS_VIEWS = ("head", "token", "neuron", "matrix", "stats")
USABLE_SECONDS = 1  # a view drawn later than this after its tab is clicked is not "usable" (issue 12; was 10)
USABLE_TASK_SECONDS = 1  # ...nor one that blocks the page's main thread longer than this

# The checks are in targets() below. The first benchmark issue's targets, tightened where issue 12
# (capture at the speed of the fused kernel) asks for more: first view 3.0x -> 1.5x at 1024
# tokens, cached p50 / p99 20 / 100 -> 5 / 50 ms, peak RSS 4 -> 2 GiB, and analyze -> overview.
TARGET_OVERVIEW = {128: 1.3, 1024: 1.3, 4096: 1.3}  # tokens -> most analyze->overview s per bare-forward s
TARGET_FIRST_VIEW = {128: 1.5, 1024: 1.5}  # tokens -> most first-view seconds per bare-forward second
TARGET_BYTES_1024 = 256 * KIB  # bytes received before the first view at 1024 tokens
TARGET_CACHED_P50, TARGET_CACHED_P99 = 0.005, 0.050  # s, analyze -> done of a cached prompt
TARGET_RSS_4096 = 2 * GIB  # peak resident bytes of the server while it serves the 4096-token prompt


def _sizes(section: dict) -> list[int]:
    return sorted(int(n) for n in section)


def _s(value) -> str:
    """Seconds with 3 significant digits, or a dash."""
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ms(value) -> str:
    return "–" if value is None else f"{value * 1000:.1f}"


def _kb(value) -> str:
    return "–" if value is None else f"{value / KIB:,.0f}"


def _mb(value) -> str:
    return "–" if value is None else f"{value / MIB:,.0f}" if value >= 100 * MIB else f"{value / MIB:,.1f}"


def _ratio(a, b) -> str:
    if a is None or not b:
        return "–"
    return f"{a / b:.2g}" if a / b < 10 else f"{a / b:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def views_summary(views: dict) -> str:
    return ", ".join(
        f"{view} {_s(entry.get('seconds'))} s" if "seconds" in entry else f"{view} FAILED"
        for view, entry in views.items()
    )


def bertviz_summary(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    if "skipped" in result:
        return result["skipped"]
    return (
        f"{_mb(result.get('bytes'))} MB HTML in {_s(result.get('html_seconds'))} s, "
        f"drawn in {_s(result.get('render_seconds'))} s"
    )


def usable(entry: dict) -> bool:
    return (
        "seconds" in entry
        and entry["seconds"] <= USABLE_SECONDS
        and entry.get("longest_task", 0) <= USABLE_TASK_SECONDS
    )


def _bertviz_total(results: dict, n: int, view: str) -> float | None:
    """Seconds a BertViz user waits: eager forward with attentions + HTML + drawing."""
    entry = results.get("bertviz", {}).get(str(n), {})
    result = entry.get(view, {})
    if "render_seconds" not in result:
        return None
    return entry["forward_seconds"] + result["html_seconds"] + result["render_seconds"]


def _bertviz_cell(result: dict, key: str, fmt) -> str:
    if "error" in result:
        return "failed"
    if "skipped" in result:
        return "not tried"
    return fmt(result.get(key))


def atlas_table(results: dict) -> str:
    sizes = results["atlas"]["sizes"]
    rows = []
    for n in _sizes(sizes):
        entry = sizes[str(n)]
        bare = entry.get("bare")
        if "painted" not in entry:
            rows.append([str(n), "", _s(bare), "failed: " + entry.get("error", "?")] + [""] * 8)
            continue
        cached = entry.get("cached", {})
        rows.append(
            [
                str(n),
                str(len(entry.get("trials", [1]))),
                _s(bare),
                _s(entry["capture_seconds"]),
                _s(entry["overview"]),
                _s(entry["painted"]),
                _ratio(entry["painted"], bare),
                _kb(entry["bytes_first_view"]),
                _kb(entry["bytes_analysis"]),
                f"{_ms(cached.get('p50'))} / {_ms(cached.get('p99'))}"
                + (
                    f" ({cached['count']} runs)" if cached.get("count", results["repeats"]) < results["repeats"] else ""
                ),
                f"{_mb(entry.get('rss_start'))} / {_mb(entry['peak_rss'])}",
                f"{entry['background_cpu']:.0%}",
            ]
        )
    return _table(
        [
            "N tokens",
            "prompts",
            "bare forward s (after 0.6 s idle)",
            "capture s",
            "analyze→overview s",
            "first view painted s",
            "painted / bare",
            "KB before view",
            "KB analysis",
            "cached p50 / p99 ms",
            "server RSS before / peak MiB",
            "other CPU load",
        ],
        rows,
    )


def views_table(results: dict) -> str:
    sizes = results["atlas"]["sizes"]
    rows = []
    for n in _sizes(sizes):
        views = sizes[str(n)].get("views", {})
        cells = []
        for view in ATLAS_VIEWS:
            entry = views.get(view, {})
            cells.append(
                "failed"
                if "error" in entry
                else _s(entry.get("seconds")) + ("" if usable(entry) or not entry else " (slow)")
            )
        longest = max((entry.get("longest_task", 0) for entry in views.values()), default=None)
        rows.append([str(n), *cells, _ms(longest), _kb(sizes[str(n)].get("bytes_all_views"))])
    return _table(
        ["N tokens", *[f"{view} s" for view in ATLAS_VIEWS], "longest main-thread task ms", "KB all views"], rows
    )


def bertviz_table(results: dict) -> str:
    rows = []
    for n in _sizes(results.get("bertviz", {})):
        entry = results["bertviz"][str(n)]
        model, head = entry.get("model_view", {}), entry.get("head_view", {})
        rows.append(
            [
                str(n),
                _s(entry.get("forward_seconds")),
                _bertviz_cell(model, "bytes", _mb),
                _bertviz_cell(model, "html_seconds", _s),
                _bertviz_cell(model, "render_seconds", _s),
                _bertviz_cell(head, "bytes", _mb),
                _bertviz_cell(head, "html_seconds", _s),
                _bertviz_cell(head, "render_seconds", _s),
            ]
        )
    return _table(
        [
            "N tokens",
            "forward (eager + attentions) s",
            "model_view MB",
            "model_view HTML s",
            "model_view drawn s",
            "head_view MB",
            "head_view HTML s",
            "head_view drawn s",
        ],
        rows,
    )


def bertviz_failures(results: dict) -> list[str]:
    lines = []
    for n in _sizes(results.get("bertviz", {})):
        for view in ("model_view", "head_view"):
            result = results["bertviz"][str(n)].get(view, {})
            if "error" in result:
                lines.append(f"- `{view}` at {n} tokens: {result['error']}")
    return lines


def comparison_table(results: dict) -> str:
    sizes = results["atlas"]["sizes"]
    rows = []
    for n in _sizes(sizes):
        entry = sizes[str(n)]
        if "painted" not in entry:
            continue
        head = entry.get("views", {}).get("head", {}).get("seconds")
        ours_head = entry["painted"] + head if head is not None else None
        bv_model, bv_head = _bertviz_total(results, n, "model_view"), _bertviz_total(results, n, "head_view")
        bv_bytes = results.get("bertviz", {}).get(str(n), {}).get("model_view", {}).get("bytes")
        rows.append(
            [
                str(n),
                _s(entry["painted"]),
                _s(bv_model),
                _ratio(entry["painted"], bv_model),
                _s(ours_head),
                _s(bv_head),
                _ratio(ours_head, bv_head),
                _kb(entry["bytes_first_view"]),
                _kb(bv_bytes),
                _ratio(entry["bytes_first_view"], bv_bytes),
            ]
        )
    return _table(
        [
            "N tokens",
            "ours: model view s",
            "BertViz model_view s",
            "ours / BertViz",
            "ours: head view s",
            "BertViz head_view s",
            "ours / BertViz",
            "ours: KB before view",
            "BertViz KB",
            "ours / BertViz",
        ],
        rows,
    )


def _first_view_target(entry: dict, name: str, line: str, limit: float) -> tuple[bool | None, str]:
    """A first-view time against the bare pass: the best of each over the prompts decides (as
    every run so far), and each prompt's own ratio (its bare pass and its analysis measured back
    to back, so both met the same machine) is given beside it: on this noisy VM the two can
    disagree."""
    seconds, floor = entry.get(name), entry.get("bare")
    if seconds is None or not floor:
        return None, f"{line}: not measured"
    paired = sorted(t[name] / t["bare"] for t in entry.get("trials", []) if t.get(name) and t.get("bare"))
    each = f"; per prompt {', '.join(f'{r:.2f}x' for r in paired)}" if len(paired) > 1 else ""
    warm = entry.get("bare_back_to_back")
    each += f"; {seconds / warm:.2f}x a bare pass run back to back ({warm:.2f} s)" if warm else ""
    return seconds / floor <= limit, f"{line}: {seconds:.2f} s / {floor:.2f} s = {seconds / floor:.2f}x{each}"


def targets(results: dict) -> list[tuple[bool | None, str]]:
    """(passed, line) per target of the issue; passed is None where it was not measured."""
    sizes = results["atlas"]["sizes"]
    out: list[tuple[bool | None, str]] = []

    def entry(n):
        return sizes.get(str(n), {})

    for name, label, limits in (
        ("overview", "analyze -> complete overview", TARGET_OVERVIEW),
        ("painted", "first painted view", TARGET_FIRST_VIEW),
    ):
        for n, limit in limits.items():
            if str(n) in sizes:
                out.append(_first_view_target(entry(n), name, f"{label} <= {limit}x bare forward at {n} tokens", limit))
    first = entry(1024).get("bytes_first_view")
    if first is not None:
        out.append(
            (first <= TARGET_BYTES_1024, f"bytes before the first view <= 256 KB at 1024 tokens: {first / KIB:.0f} KB")
        )
    measured = [(n, entry(n)["bytes_first_view"]) for n in _sizes(sizes) if "bytes_first_view" in entry(n)]
    if len(measured) >= 2:
        steps = [(b2 / b1) / (n2 / n1) for (n1, b1), (n2, b2) in zip(measured, measured[1:])]
        slope = (measured[-1][1] - measured[-2][1]) / (measured[-1][0] - measured[-2][0])
        out.append(
            (
                max(steps) <= 1.0,
                "bytes before the first view grow at most linearly in N: largest growth "
                f"relative to N between two sizes {max(steps):.2f} (<= 1 is at most linear); "
                f"{measured[0][1] / KIB:.0f} KB at {measured[0][0]} -> {measured[-1][1] / KIB:.0f} KB at "
                f"{measured[-1][0]} tokens, {slope:.0f} bytes per extra token",
            )
        )
    cached = [(n, entry(n)["cached"]) for n in _sizes(sizes) if "cached" in entry(n)]
    if cached:
        worst50 = max(cached, key=lambda item: item[1]["p50"])
        worst99 = max(cached, key=lambda item: item[1]["p99"])
        out.append(
            (
                worst50[1]["p50"] <= TARGET_CACHED_P50,
                f"cached repeat p50 <= {TARGET_CACHED_P50 * 1000:.0f} ms: worst {worst50[1]['p50'] * 1000:.1f} ms "
                f"(at {worst50[0]} tokens)",
            )
        )
        out.append(
            (
                worst99[1]["p99"] <= TARGET_CACHED_P99,
                f"cached repeat p99 <= {TARGET_CACHED_P99 * 1000:.0f} ms: worst {worst99[1]['p99'] * 1000:.1f} ms "
                f"(at {worst99[0]} tokens)",
            )
        )
    big = entry(4096)
    if "views" in big:
        slow = [view for view, result in big["views"].items() if not usable(result)]
        out.append(
            (
                not slow,
                "4096 tokens, every view usable (drawn without error within "
                f"{USABLE_SECONDS} s, no main-thread task over {USABLE_TASK_SECONDS} s): "
                + (views_summary(big["views"]) + (f"; not usable: {', '.join(slow)}" if slow else "")),
            )
        )
    if "peak_rss" in big:
        start = f" (RSS {big['rss_start'] / GIB:.2f} GiB before it)" if "rss_start" in big else ""
        out.append(
            (
                big["peak_rss"] < TARGET_RSS_4096,
                f"4096 tokens, server peak RSS < {TARGET_RSS_4096 / GIB:.0f} GiB: "
                f"{big['peak_rss'] / GIB:.2f} GiB{start}",
            )
        )
    return out


def machine_lines(results: dict) -> list[str]:
    machine = results["machine"]
    chromium = machine["chromium"][0] if isinstance(machine["chromium"], list) else machine["chromium"]
    return [
        f"- Date: {machine['date']}; commit {machine['commit']}; whole run {results.get('seconds', 0) / 60:.1f} min",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores (torch uses {machine['torch_threads']} threads); "
        f"{machine['memory_gib']} GiB RAM; no GPU",
        f"- {machine['os']}; Python {machine['python']}; torch {machine['torch']}; transformers "
        f"{machine['transformers']}; {chromium} (headless); BertViz {machine['bertviz']}",
        f"- Model: `{results['model']}`; cached repeats: {results['repeats']} per size",
    ]


def render(results: dict) -> str:
    """The whole result block: machine, tables, targets."""
    parts = [
        "### Machine",
        *machine_lines(results),
        "",
        "### Attention Atlas (first view, cached repeats, memory)",
        atlas_table(results),
        "",
        "### Every view, opened one after another after the first view",
        views_table(results),
        "",
    ]
    if results.get("bertviz"):
        parts += [
            "### BertViz",
            bertviz_table(results),
            "",
            *bertviz_failures(results),
            "",
            "### Attention Atlas / BertViz",
            comparison_table(results),
            "",
        ]
    parts += ["### Targets"]
    parts += [f"- {'PASS' if ok else 'MISS' if ok is False else 'n/a'}: {line}" for ok, line in targets(results)]
    parts += [
        "",
        f"Page assets (HTML, CSS, JS, Bokeh; once per visit, cacheable): "
        f"{results['atlas'].get('page_bytes', 0) / KIB:,.0f} KB.",
    ]
    return "\n".join(parts)


def write_markdown(path: Path, results: dict) -> None:
    """Replace this run's block (named by its label, the model by default) in ``path``, or append it."""
    label = results.get("label") or results["model"]
    start, end = f"<!-- results: {label} -->", f"<!-- /results: {label} -->"
    block = f"{start}\n## Results: {label}\n\n{render(results)}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
