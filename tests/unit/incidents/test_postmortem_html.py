"""The postmortem formatted for chat: its Markdown as HTML, and the notice posted."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from bridge.formatting import html_to_text, sanitize_html
from bridge.incidents.markdown import code, escape
from bridge.incidents.markdown_html import markdown_to_html
from bridge.incidents.postmortem import postmortem_notice, render_postmortem
from tests.unit.incidents.test_postmortem import NOW, drill, own


def render_html() -> tuple[str, str]:
    """The drill's postmortem as HTML, and the incident's severity as the document shows it."""
    incident, events = drill()
    markdown = render_postmortem(incident, events, now=NOW, is_own=own)
    return markdown_to_html(markdown), incident.severity.value.upper()


def parsed(source: str) -> ET.Element:
    return ET.fromstring(f"<div>{source.replace('&nbsp;', ' ')}</div>")


def test_the_postmortem_reads_as_formatted_text_without_markdown_escapes() -> None:
    source, severity_shown = render_html()
    root = parsed(source)  # well-formed
    assert source == sanitize_html(source)  # inside the allow-list
    title = root.find("h1")
    assert title is not None
    assert "".join(title.itertext()) == "Postmortem: INC-7 Checkout ## down [x](http://e)"
    assert [h.text for h in root.findall("h2")][:2] == ["Summary", "Impact"]
    facts = root.find("ul")
    assert facts is not None
    severity = facts.find("li/strong")
    assert severity is not None
    assert severity.text == severity_shown
    assert "\\" not in "".join(root.itertext())
    # Chat text stays text: no element comes from it.
    assert {e.tag for e in root.iter()} <= {
        "div",
        "h1",
        "h2",
        "p",
        "ul",
        "li",
        "strong",
        "em",
        "code",
    }
    assert "<img" not in source
    assert "&lt;img src=x onerror=alert(1)&gt;" in source


def test_lists_nest_and_tasks_show_a_box() -> None:
    source = markdown_to_html(
        "- Matrix: 1\n"
        f"  - {escape('Al_ice *x*')} {code('@a_b:example.org')}: 2 message(s)\n"
        "- Teams: 0\n"
        "\n"
        "Assignments:\n"
        "\n"
        f"- [ ] {escape('Alert on [checkout](http://evil)')} (_by Bob_)\n"
    )
    assert source == (
        "<ul><li>Matrix: 1<ul><li>Al_ice *x* <code>@a_b:example.org</code>: 2 message(s)"
        "</li></ul></li><li>Teams: 0</li></ul><p>Assignments:</p>"
        "<ul><li>☐ Alert on [checkout](http://evil) (<em>by Bob</em>)</li></ul>"
    )


def test_inline_markup_follows_commonmark_for_what_the_postmortem_writes() -> None:
    assert markdown_to_html("**SEV2** and _none_ and snake_case_name") == (
        "<p><strong>SEV2</strong> and <em>none</em> and snake_case_name</p>"
    )
    assert markdown_to_html("``a`b`` and `` `x `` and `open") == (
        "<p><code>a`b</code> and <code>`x</code> and `open</p>"
    )
    assert markdown_to_html("**open _cross** close_ \\*lit\\*") == (
        "<p><strong>open _cross</strong> close_ *lit*</p>"
    )
    assert markdown_to_html("# Title ##\n#hashtag\n###### six") == (
        "<h1>Title</h1><p>#hashtag</p><h6>six</h6>"
    )
    assert markdown_to_html("") == ""


def test_hostile_markup_costs_linear_time() -> None:
    started = time.perf_counter()
    for source in ("**_`" * 20_000, "_a " * 30_000 + "b** " * 30_000, "#" + " " * 50_000 + "#"):
        parsed(markdown_to_html(source))
    assert time.perf_counter() - started < 10.0


def test_the_notice_keeps_the_markdown_as_text_and_links_the_page() -> None:
    markdown = "# Postmortem: INC\\-7 Down\n\n- Severity: **SEV2**\n"
    link = "https://bridge.example.org/incidents/INC-7?key=a_b&c=1"
    notice = postmortem_notice(markdown, incident_id="INC-7", link=link, max_chars=20_000)
    assert notice.text == f"{markdown}\n\nTimeline and chart: {link}"
    assert notice.html == (
        "<h1>Postmortem: INC-7 Down</h1><ul><li>Severity: <strong>SEV2</strong></li></ul>"
        '<p>Timeline and chart: <a href="https://bridge.example.org/incidents/INC-7?key=a_b&amp;c=1">'
        "https://bridge.example.org/incidents/INC-7?key=a_b&amp;c=1</a></p>"
    )
    alone = postmortem_notice(markdown, incident_id="INC-7", link=None, max_chars=20_000)
    assert alone.text == markdown
    assert "Timeline" not in alone.html


def test_a_long_postmortem_is_cut_at_a_line_in_both_forms() -> None:
    markdown = "# Postmortem: INC\\-7\n\n" + "".join(f"- line **{n}**\n" for n in range(100))
    notice = postmortem_notice(markdown, incident_id="INC-7", link=None, max_chars=200)
    shown, _, tail = notice.text.partition("\n\n… ")
    assert len(shown) <= 200
    assert markdown.startswith(shown)
    assert tail == "(cut here; the whole postmortem: incident-bridge postmortem INC-7)"
    text = html_to_text(notice.html)
    assert text.endswith("… (cut here; the whole postmortem: incident-bridge postmortem INC-7)")
    assert "**" not in text
    assert "\\" not in text
    parsed(notice.html)
