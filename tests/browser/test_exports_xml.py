"""The SVG export's text is XML whatever the prompt holds (issue 15, point 12): a form feed
pasted from a PDF once made an SVG no XML parser reads."""

from __future__ import annotations


def test_svg_text_drops_characters_xml_forbids(page, live_server):
    page.goto(live_server)
    result = page.evaluate(
        """async () => {
            const { xmlText } = await import("/static/js/exports.js");
            const text = xmlText("form\\ffeed \\u0000nul \\ud800lone tab\\tok \\u{1F600}");
            const doc = document.implementation.createDocument("http://www.w3.org/2000/svg", "svg", null);
            doc.documentElement.textContent = text;
            const source = new XMLSerializer().serializeToString(doc);
            const parsed = new DOMParser().parseFromString(source, "image/svg+xml");
            return { text, broken: parsed.getElementsByTagName("parsererror").length };
        }"""
    )
    assert result == {"text": "form feed  nul  lone tab\tok \U0001f600", "broken": 0}
