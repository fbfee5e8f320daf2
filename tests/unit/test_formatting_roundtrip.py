"""Rich text across the bridge, through the real conversions on each side.

Teams -> Matrix: a Teams activity (HTML as Teams attaches it) -> the Teams
adapter's conversion -> ``Body`` -> the Matrix content builder. Matrix -> Teams:
a Matrix event (``formatted_body`` as clients send it) -> the Matrix adapter's
conversion -> ``Body`` -> the Teams renderer and the activity it posts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from adapters.matrix.content import Mention, message_parts
from adapters.matrix.convert import convert_event
from adapters.matrix.ids import GhostNamespace
from adapters.teams.activity import parse_activity
from adapters.teams.convert import ActivityConverter
from adapters.teams.render import activity, render
from bridge.model import Body, InboundEvent, Platform
from devtools.teams_emulator.activities import text_to_html as emulator_html
from tests.support.fakes import EventBuilder, FakeClock
from tests.unit.teams import support as s

NS = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="bridge")
BOB_ID = "29:1BobAccountIdLooksLikeThis0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"
BOB_AAD = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
BOB_GHOST = NS.ghost_for(BOB_AAD)
HEADER = "<b>Alice</b> <i>(Matrix)</i>: "
CODE_MARKER = (
    '<p itemtype="http://schema.skype.com/CodeBlockEditor" id="x_codeBlockEditor-5c2a">'
    "\r\n&nbsp;</p>\r\n"
)
EMOJI = (
    '<span class="animated-emoticon-20-cool" title="Cool" type="(cool)">'
    '<img itemscope="" itemtype="http://schema.skype.com/Emoji" itemid="cool" '
    'src="https://statics.teams.cdn.office.net/evergreen-assets/personal-expressions/v2/'
    'assets/emoticons/cool/default/20_f.png?v=v4" title="Cool" alt="\U0001f60e" '
    'style="width:20px;height:20px;"></span>'
)
BOB_SPAN = (
    '<span itemtype="http://schema.skype.com/Mention" itemscope="" itemid="0">Bob</span>'
    '&nbsp;<span itemtype="http://schema.skype.com/Mention" itemscope="" itemid="1">'
    "Oncall</span>"
)


# -- Teams -> Matrix ---------------------------------------------------------------------


def teams_activity(html: str, *, mentions: bool = False) -> dict[str, Any]:
    """A channel message as Teams posts it: plain ``text`` plus the ``text/html`` twin."""
    document = s.base_activity("message", activity_id="1730462400999")
    document["text"] = "(plain twin)"
    document["textFormat"] = "plain"
    document["attachments"] = [{"contentType": "text/html", "content": html}]
    if mentions:  # Teams names each part of a mentioned name, for the same user
        for part in ("Bob", "Oncall"):
            document["entities"].append(
                {
                    "type": "mention",
                    "text": f"<at>{part}</at>",
                    "mentioned": {"id": BOB_ID, "name": "Bob Oncall", "aadObjectId": BOB_AAD},
                }
            )
    return document


def teams_to_matrix(document: dict[str, Any]) -> list[dict[str, Any]]:
    converter = ActivityConverter(app_id=s.APP_ID, clock=FakeClock())
    (event,) = converter.convert(parse_activity(document))
    mentions = [
        Mention(name=m.display_name, user_id=NS.ghost_for(m.user_id)) for m in event.body.mentions
    ]
    return message_parts(event.body, mentions)


@dataclass(frozen=True)
class TeamsCase:
    teams_html: str
    formatted_body: str
    body: str


TEAMS_CASES = {
    "inline styles": TeamsCase(
        "<p><strong>bold</strong> <em>it</em> <s>gone</s> <del>del</del> <strike>old</strike> "
        "<u>under</u> <b>b</b> <i>i</i> <code>x = 1</code></p>",
        "<p><strong>bold</strong> <em>it</em> <s>gone</s> <del>del</del> <s>old</s> "
        "<u>under</u> <b>b</b> <i>i</i> <code>x = 1</code></p>",
        "bold it gone del old under b i x = 1",
    ),
    "paragraphs, breaks and blank lines": TeamsCase(
        "<p>first&nbsp;line<br>second</p>\r\n<p>&nbsp;</p>\r\n<p>third</p>",
        "<p>first\xa0line<br>second</p>\n<p>\xa0</p>\n<p>third</p>",
        "first line\nsecond\n\nthird",
    ),
    "code block from the Teams editor": TeamsCase(
        f'{CODE_MARKER}<pre class="language-python" itemid="codeBlockEditor-5c2a">'
        '<code><span class="hljs-keyword">def</span> <span class="hljs-title">f</span>():<br>'
        '&nbsp;&nbsp;&nbsp;&nbsp;<span class="hljs-keyword">return</span> a &lt; b</code></pre>',
        '<pre><code class="language-python">def f():\n    return a &lt; b</code></pre>',
        "```python\ndef f():\n    return a < b\n```",
    ),
    "nested lists": TeamsCase(
        "<ol>\r\n<li>one\r\n<ul>\r\n<li>nested</li>\r\n</ul>\r\n</li>\r\n<li>two</li>\r\n</ol>"
        '\r\n<ol start="7"><li>seven</li></ol>',
        "<ol>\n<li>one\n<ul>\n<li>nested</li>\n</ul>\n</li>\n<li>two</li>\n</ol>\n"
        '<ol start="7"><li>seven</li></ol>',
        "1. one\n  - nested\n2. two\n7. seven",
    ),
    "heading, quote and link": TeamsCase(
        "<h2>Status</h2><blockquote><p>db-1 is down<br>since 09:00</p></blockquote>"
        '<p>see <a href="https://status.example.org/db?x=1&amp;y=2" rel="noreferrer noopener" '
        'target="_blank" title="https://status.example.org/db?x=1&amp;y=2">dashboard</a> or '
        '<a href="https://status.example.org/">https://status.example.org/</a></p>',
        "<h2>Status</h2><blockquote><p>db-1 is down<br>since 09:00</p></blockquote>"
        '<p>see <a href="https://status.example.org/db?x=1&amp;y=2">dashboard</a> or '
        '<a href="https://status.example.org/">https://status.example.org/</a></p>',
        "Status\n> db-1 is down\n> since 09:00\n"
        "see dashboard (https://status.example.org/db?x=1&y=2) or https://status.example.org/",
    ),
    "emoji stay text": TeamsCase(
        f"<p>done {EMOJI}</p>", "<p>done \U0001f60e</p>", "done \U0001f60e"
    ),
    "escaped characters": TeamsCase(
        "<p>if a &lt; b &amp;&amp; c &gt; d then &quot;x&quot;</p>",
        '<p>if a &lt; b &amp;&amp; c &gt; d then "x"</p>',
        'if a < b && c > d then "x"',
    ),
    "a table": TeamsCase(
        "<table><tbody><tr><td>host</td><td>state</td></tr>"
        "<tr><td>db-1</td><td>down</td></tr></tbody></table>",
        "<table><tbody><tr><td>host</td><td>state</td></tr>"
        "<tr><td>db-1</td><td>down</td></tr></tbody></table>",
        "host | state\ndb-1 | down",
    ),
    "the emulator's rich twin": TeamsCase(
        emulator_html("disk full\non <db-1>", []),
        "<p>disk full<br>on &lt;db-1&gt;</p>",
        "disk full\non <db-1>",
    ),
    "wrapped in divs": TeamsCase(
        "<div><div><div>first</div><div>second</div></div></div>",
        "<div><div><div>first</div><div>second</div></div></div>",
        "first\nsecond",
    ),
}


@pytest.mark.parametrize("case", TEAMS_CASES.values(), ids=TEAMS_CASES.keys())
def test_teams_formatting_reaches_matrix(case: TeamsCase) -> None:
    (content,) = teams_to_matrix(teams_activity(case.teams_html))
    assert content["format"] == "org.matrix.custom.html"
    assert content["formatted_body"] == case.formatted_body
    assert content["body"] == case.body
    assert content["msgtype"] == "m.text"


def test_a_teams_mention_becomes_a_pill() -> None:
    html = f"<p>{BOB_SPAN}: can you look at <b>db-1</b>?</p>"
    (content,) = teams_to_matrix(teams_activity(html, mentions=True))
    pill = f'<a href="https://matrix.to/#/{BOB_GHOST}">Bob Oncall</a>'
    assert content["formatted_body"] == f"<p>{pill}: can you look at <b>db-1</b>?</p>"
    assert content["body"] == "Bob Oncall: can you look at db-1?"
    assert content["m.mentions"] == {"user_ids": [BOB_GHOST]}


def test_a_teams_inline_image_is_media_not_text() -> None:
    image = (
        '<p>graph <img alt="image" src="https://smba.trafficmanager.net/emea/v3/attachments/'
        '0-abc/views/original" width="250" height="250" itemscope="" '
        'itemtype="http://schema.skype.com/AMSImage"></p>'
    )
    (content,) = teams_to_matrix(teams_activity(image))
    assert content["body"] == "graph\n(attachment not bridged: image)"
    assert content["formatted_body"] == "<p>graph </p><br>(attachment not bridged: image)"


def test_an_image_inside_dropped_markup_is_no_attachment() -> None:
    hidden = (
        '<template><img src="https://smba.trafficmanager.net/emea/v3/attachments/0-x/views/'
        'original" alt="hidden"></template><p>visible</p>'
    )
    (content,) = teams_to_matrix(teams_activity(hidden))
    assert (content["body"], content["formatted_body"]) == ("visible", "<p>visible</p>")


# -- Matrix -> Teams ---------------------------------------------------------------------


def matrix_event(content: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": "!ops:example.org",
        "event_id": "$formatted",
        "sender": "@alice:example.org",
        "origin_server_ts": 1_793_351_742_123,
        "content": content,
    }


def matrix_to_teams(content: dict[str, Any]) -> dict[str, Any]:
    inbound = convert_event(matrix_event(content), namespace=NS, display_name="Alice")
    assert isinstance(inbound, InboundEvent)
    event = replace(EventBuilder(FakeClock()).message(), body=inbound.body, sender=inbound.sender)
    return activity(render(event).content())


def html_content(formatted: str, body: str = "plain fallback") -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": formatted,
    }


MATRIX_CASES = {
    "inline styles": (
        "<strong>bold</strong> <em>it</em> <del>gone</del> <s>old</s> <u>u</u> <code>x</code>",
        "<strong>bold</strong> <em>it</em> <strike>gone</strike> <strike>old</strike> <u>u</u> "
        "<code>x</code>",
    ),
    "code block": (
        '<pre><code class="language-python">def f():\n    return  1\n</code></pre>\n',
        '<pre><code class="language-python">def f():<br>&nbsp;&nbsp;&nbsp;&nbsp;'
        "return &nbsp;1</code></pre>\n",
    ),
    "lists": (
        '<ol start="2">\n<li>two</li>\n<li>three<ul>\n<li>sub</li>\n</ul>\n</li>\n</ol>\n',
        '<ol start="2">\n<li>two</li>\n<li>three<ul>\n<li>sub</li>\n</ul>\n</li>\n</ol>\n',
    ),
    "headings and quote": (
        "<h1>One</h1><h3>Three</h3><h5>Five</h5><blockquote>\n<p>quoted</p>\n</blockquote>\n",
        "<h1>One</h1><h3>Three</h3><h3>Five</h3><blockquote>\n<p>quoted</p>\n</blockquote>\n",
    ),
    "links and line breaks": (
        '<p>see <a href="https://e.org/?a=1&amp;b=2">dash</a><br>next</p><p>para</p>',
        '<p>see <a href="https://e.org/?a=1&amp;b=2">dash</a><br>next</p><p>para</p>',
    ),
    "reply fallback dropped": (
        "<mx-reply><blockquote><a>In reply to</a> original</blockquote></mx-reply>answer",
        "answer",
    ),
    "custom emoji and colours": (
        '<img data-mx-emoticon src="mxc://e.org/party" alt=":party:" height="32"> '
        '<font data-mx-color="#ff0000" color="#ff0000">red</font> <span>plain</span>',
        ":party: red plain",
    ),
    "hostile markup": (
        '<b onclick="x()">ok</b><script>alert(1)</script><a href="javascript:alert(1)">link</a>',
        "<b>ok</b>link",
    ),
}


@pytest.mark.parametrize(("formatted", "teams"), MATRIX_CASES.values(), ids=MATRIX_CASES.keys())
def test_matrix_formatting_reaches_teams(formatted: str, teams: str) -> None:
    payload = matrix_to_teams(html_content(formatted))
    assert payload["textFormat"] == "xml"
    assert payload["text"] == HEADER + teams


def test_a_pill_of_a_teams_ghost_becomes_a_teams_mention() -> None:
    formatted = f'<a href="https://matrix.to/#/{BOB_GHOST}">Bob Oncall</a>: <b>look</b>'
    payload = matrix_to_teams({**html_content(formatted), "m.mentions": {"user_ids": [BOB_GHOST]}})
    assert payload["text"] == HEADER + "<at>Bob Oncall</at>: <b>look</b>"
    assert payload["entities"] == [
        {
            "type": "mention",
            "text": "<at>Bob Oncall</at>",
            "mentioned": {"id": BOB_AAD, "name": "Bob Oncall"},
        }
    ]


def test_plain_text_is_escaped_with_its_line_breaks() -> None:
    payload = matrix_to_teams({"msgtype": "m.text", "body": "a <b>\nb & c"})
    assert payload["text"] == HEADER + "a &lt;b&gt;<br>b &amp; c"


def test_formatted_body_without_visible_text_leaves_the_plain_body() -> None:
    payload = matrix_to_teams(html_content('<img src="mxc://e.org/x">', body="(image)"))
    assert payload["text"] == HEADER + "(image)"


def test_an_emote_keeps_its_formatting() -> None:
    payload = matrix_to_teams({**html_content("waves <b>hard</b>"), "msgtype": "m.emote"})
    assert payload["text"] == "* <b>Alice</b> <i>(Matrix)</i> waves <b>hard</b>"


# -- both ways -----------------------------------------------------------------------


def test_a_matrix_code_block_survives_a_trip_to_teams_and_back() -> None:
    """What the Teams renderer writes, read back by the Teams conversion, is the same code."""
    code = '<pre><code class="language-yaml">a:\n  b: [1, 2]\n    c: "d"\n</code></pre>'
    teams_text = matrix_to_teams(html_content(code))["text"].removeprefix(HEADER)
    (content,) = teams_to_matrix(teams_activity(teams_text))
    assert content["formatted_body"] == (
        '<pre><code class="language-yaml">a:\n  b: [1, 2]\n    c: "d"</code></pre>'
    )
    assert content["body"] == '```yaml\na:\n  b: [1, 2]\n    c: "d"\n```'


def test_sender_platform_is_unchanged_by_formatting() -> None:
    inbound = convert_event(
        matrix_event(html_content("<b>x</b>")), namespace=NS, display_name="Alice"
    )
    assert inbound is not None
    assert inbound.sender.platform is Platform.MATRIX
    assert inbound.body == Body(text="plain fallback", html="<b>x</b>")
