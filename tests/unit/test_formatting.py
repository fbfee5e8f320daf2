from __future__ import annotations

import pytest

from bridge.formatting import html_to_text, sanitize_html, text_to_html


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("<b>bold</b> <i>it</i> <strike>gone</strike>", "<b>bold</b> <i>it</i> <s>gone</s>"),
        ("<p>a<br/>b</p>", "<p>a<br>b</p>"),
        ('<a href="https://x.org/?a=1&b=2">l</a>', '<a href="https://x.org/?a=1&amp;b=2">l</a>'),
        ('<a href="javascript:alert(1)">l</a>', "<a>l</a>"),
        ('<a href=" jav&#x09;ascript:alert(1)">l</a>', "<a>l</a>"),
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
    ],
)
def test_sanitize_keeps_only_the_allow_list(source: str, expected: str) -> None:
    assert sanitize_html(source) == expected


def test_sanitized_output_is_stable() -> None:
    source = '<p><b>x</b> <a href="https://e.org">e</a></p><ul><li>1</li></ul>'
    once = sanitize_html(source)
    assert sanitize_html(once) == once


def test_html_to_text_keeps_structure_legible() -> None:
    source = (
        "<h1>Title</h1><p>Para with <b>bold</b> and "
        '<a href="https://status.example.org">status</a>.</p>'
        "<ul><li>one</li><li>two</li></ul><blockquote>quoted<br>twice</blockquote>"
        "<script>evil()</script>"
    )
    assert html_to_text(source) == (
        "Title\nPara with bold and status (https://status.example.org).\n"
        "- one\n- two\n> quoted\n> twice"
    )


def test_text_to_html_escapes() -> None:
    assert text_to_html("a < b\n<i>") == "a &lt; b<br>&lt;i&gt;"
