from __future__ import annotations

import pytest

from bridge.formatting import code_language, html_to_text, safe_url, sanitize_html, text_to_html
from bridge.html_tokens import EndTag, StartTag, Text, tokenize, unescape_attribute


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("<b>bold</b> <i>it</i> <strike>gone</strike>", "<b>bold</b> <i>it</i> <s>gone</s>"),
        ("<p>a<br/>b</p>", "<p>a<br>b</p>"),
        ('<a href="https://x.org/?a=1&b=2">l</a>', '<a href="https://x.org/?a=1&amp;b=2">l</a>'),
        ('<a href="javascript:alert(1)">l</a>', "l"),
        ('<a href=" jav&#x09;ascript:alert(1)">l</a>', "l"),
        ('<a href="/relative">l</a>', "l"),
        ("<script>alert(1)</script>after", "after"),
        ('<img src=x onerror="alert(1)" alt="pic">', "pic"),
        ('<div onclick="x()" style="color:red">t</div>', "<div>t</div>"),
        ("<b>unclosed <i>nested", "<b>unclosed <i>nested</i></b>"),
        ("stray </b> end", "stray  end"),
        ("<mx-reply><blockquote>quoted</blockquote></mx-reply>reply", "reply"),
        ('<code class="language-py">x = 1</code>', '<code class="language-py">x = 1</code>'),
        ('<code class="x" onmouseover="y">z</code>', "<code>z</code>"),
        ("a &lt;script&gt; b", "a &lt;script&gt; b"),
        ('<ol start="3"><li>x</li></ol>', '<ol start="3"><li>x</li></ol>'),
        ("<svg><script>alert(1)</script></svg>ok", "ok"),
        ("<at>Alice</at> hi", "Alice hi"),
        # Browsers' reading of malformed markup, not a lenient parser's.
        ("<script/>alert(1)</script>after", "after"),
        ("<embed src=x>after", "after"),
        ("<svg><title>x</title></svg>after", "after"),
        ("<svg><p>out</p>", "<p>out</p>"),
        ("<!-- x --!>shown", "shown"),
        ("<!-->shown", "shown"),
        ('x<a href="https://e.org', "x"),
        ("<![CDATA[<b>x</b>]]>y", "x]]&gt;y"),
        ("<?php echo 1 ?>z", "z"),
        ('<a href="https://ok.org" href="javascript:x">first</a>', '<a href="https://ok.org">first</a>'),
        ("<p>a<p>b<ul><li>c<li>d</ul>", "<p>a</p><p>b</p><ul><li>c</li><li>d</li></ul>"),
        ("<table><tr><td>a<td>b</table>", "<table><tr><td>a</td><td>b</td></tr></table>"),
        ("<td>cell outside a table</td>", "cell outside a table"),
        ("<h1>a</h2>b", "<h1>a</h1>b"),
        ('<span class="x">plain</span>', "plain"),
        ('<pre class="language-json"><code>{}</code></pre>',
         '<pre><code class="language-json">{}</code></pre>'),
        ('<pre class="language-was-manually-selected"><code>x</code></pre>',
         "<pre><code>x</code></pre>"),
        ("a\x00b<scr\x00ipt>c</scr\x00ipt>", "abc"),  # not a script: U+FFFD in its name
        ('<a href="java\x00script:x">j</a>', "j"),
        ("line\r\nbreak", "line\nbreak"),
        ("<b/>bold", "<b>bold</b>"),
        ("x</br>y", "x<br>y"),
    ],
)  # fmt: skip
def test_sanitize_keeps_only_the_allow_list(source: str, expected: str) -> None:
    assert sanitize_html(source) == expected


def test_sanitized_output_is_stable() -> None:
    source = (
        '<p><b>x</b> <a href="https://e.org">e</a></p><ul><li>1</li></ul>'
        '<pre class="language-go"><code>a<br>b</code></pre>'
    )
    once = sanitize_html(source)
    assert sanitize_html(once) == once


def test_nesting_is_capped_and_balanced() -> None:
    deep = sanitize_html("<b>" * 500 + "core" + "</b>" * 500 + "tail")
    assert deep.count("<b>") == deep.count("</b>") == 100
    assert deep.endswith("core" + "</b>" * 100 + "tail")


def test_a_caller_can_drop_more_elements() -> None:
    def marker(tag: str, attributes: object) -> bool:
        return tag == "p" and "marker" in str(attributes)

    assert sanitize_html('<p class="marker">x</p><p>y</p>', drop=marker) == "<p>y</p>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://e.org/a b", "https://e.org/a b"),
        ("  https://e.org\t/x\n", "https://e.org/x"),
        ("MAILTO:a@b.org", "MAILTO:a@b.org"),
        ("matrix:u/alice:example.org", "matrix:u/alice:example.org"),
        ("java\x01script:x", None),
        ("vbscript:x", None),
        ("data:text/html,x", None),
        ("//evil.org", None),
        ("https://e.org/" + "a" * 5000, None),
    ],
)
def test_safe_url(value: str, expected: str | None) -> None:
    assert safe_url(value) == expected


def test_code_language() -> None:
    assert code_language("skipProofing language-python") == "python"
    assert code_language("language-was-manually-selected language-c++") == "c++"
    assert code_language("language-a b c") == "a"
    assert code_language("x") is None
    assert code_language(None) is None


def test_tokens_of_tags_text_and_attributes() -> None:
    tokens = list(tokenize('a<P Class="x" ID=y data-z>b</p\t>&amp;<br/>'))
    assert tokens == [
        Text("a"),
        StartTag("p", {"class": "x", "id": "y", "data-z": ""}),
        Text("b"),
        EndTag("p"),
        Text("&"),
        StartTag("br", {}, self_closing=True),
    ]


def test_raw_text_runs_to_its_own_end_tag() -> None:
    tokens = list(tokenize("<style>b</p><i></style >x<textarea>&lt;t</textarea>"))
    assert tokens == [
        StartTag("style", {}),
        Text("b</p><i>"),
        EndTag("style"),
        Text("x"),
        StartTag("textarea", {}),
        Text("<t"),
        EndTag("textarea"),
    ]


def test_attribute_references_as_browsers_decode_them() -> None:
    assert unescape_attribute("?a=1&copy=2&amp;b=3&lt;") == "?a=1&copy=2&b=3<"
    assert unescape_attribute("&#106;avascript&colon;") == "javascript:"
    assert unescape_attribute("&notit;&not") == "\u00acit;\u00ac"


def test_hostile_input_costs_linear_time() -> None:
    # Python's html.parser needs minutes of CPU for some of these (quadratic scans).
    for hostile in ("<a " * 20_000, '<a b="' * 10_000, "<!--" * 15_000, "<a/" * 20_000):
        assert sanitize_html(hostile) == ""
        assert html_to_text(hostile) == ""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "<h1>Title</h1><p>Para with <b>bold</b> and "
            '<a href="https://status.example.org">status</a>.</p>'
            "<ul><li>one</li><li>two</li></ul><blockquote>quoted<br>twice</blockquote>"
            "<script>evil()</script>",
            "Title\nPara with bold and status (https://status.example.org).\n"
            "- one\n- two\n> quoted\n> twice",
        ),
        ('<ol start="3"><li>a<ul><li>b<br>c</li></ul></li><li>d</li></ol>',
         "3. a\n  - b\n    c\n4. d"),
        ("<ul>\n  <li>x\n  </li>\n</ul>", "- x"),
        ("a<br>b<br><br>c", "a\nb\n\nc"),
        ("<p>Hello&nbsp;there,   world</p>\n\n<p>again</p>", "Hello there, world\nagain"),
        (
            '<pre><code class="language-python">def f():\n    return 1\n</code></pre>',
            "```python\ndef f():\n    return 1\n```",
        ),
        ("<pre>a<br>&nbsp;&nbsp;b</pre>", "```\na\n  b\n```"),
        ("<blockquote><p>q</p><blockquote>inner</blockquote></blockquote>after",
         "> q\n> > inner\nafter"),
        ('<a href="https://e.org">https://e.org</a> <a href="https://e.org/">e.org</a>',
         "https://e.org e.org"),
        ('<a href="https://matrix.to/#/@alice:example.org">Alice</a>: hi', "Alice: hi"),
        ('<a href="mailto:a@example.org">mail me</a>', "mail me"),
        ("<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>",
         "k | v\na | 1"),
        ("x<hr>y", "x\n---\ny"),
        ('I <img alt="\u2764" src="https://e.org/h.png"> it', "I \u2764 it"),
    ],
)  # fmt: skip
def test_html_to_text_keeps_structure_legible(source: str, expected: str) -> None:
    assert html_to_text(source) == expected


def test_text_to_html_escapes() -> None:
    assert text_to_html("a < b\n<i>") == "a &lt; b<br>&lt;i&gt;"
