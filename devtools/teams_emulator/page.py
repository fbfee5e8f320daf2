# ruff: noqa: E501 - the page's CSS and script keep their natural line lengths
"""The emulator's web page: post to the bot as a Teams user and watch what the bot does.

Self-contained (no external resources), served with a strict Content-Security-Policy;
the script builds the page from nodes it creates, with ``textContent`` for text. The
bot's messages are HTML, as in Teams: they are parsed inert (``DOMParser``, which runs
nothing) and rebuilt from an allow-list of formatting tags, keeping no attribute but an
http(s) link's ``href``. Users' messages are shown as text. It polls
``/_emulator/api/messages`` every second.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from aiohttp import web

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Teams emulator</title>
<link rel="stylesheet" href="/_emulator/page.css">
<script src="/_emulator/page.js" defer></script>
</head>
<body>
<header>
  <h1>Teams emulator</h1>
  <span id="bot" class="muted"></span>
</header>
<main>
  <nav>
    <label for="user">Posting as</label>
    <select id="user"></select>
    <h2>Conversations</h2>
    <ul id="conversations"></ul>
  </nav>
  <section>
    <div id="heading"><h2 id="title">Pick a conversation</h2>
      <button id="install" type="button" hidden>Add the bot here</button></div>
    <ol id="messages"></ol>
    <div id="replying" hidden><span id="replying-text"></span>
      <button id="cancel-reply" type="button" title="Post a new message instead">&#x2715;</button></div>
    <div id="composer">
      <textarea id="text" rows="3" placeholder="Type a message" disabled></textarea>
      <button id="send" type="button" disabled>Send</button>
    </div>
    <p id="status" class="muted" role="status"></p>
  </section>
</main>
</body>
</html>
"""

CSS: Final = """
:root { --accent: #5b5fc7; --bg: #f5f5f5; --card: #fff; --muted: #616161; --line: #e0e0e0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 "Segoe UI", system-ui, sans-serif; background: var(--bg); color: #242424; }
header { display: flex; gap: 1rem; align-items: baseline; padding: .6rem 1.2rem; background: var(--accent); color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; }
header .muted { color: #e8e8ff; }
main { display: grid; grid-template-columns: 260px 1fr; height: calc(100vh - 2.8rem); }
nav { padding: 1rem; border-right: 1px solid var(--line); background: var(--card); overflow-y: auto; }
nav label { display: block; font-weight: 600; margin-bottom: .3rem; }
nav select { width: 100%; padding: .3rem; }
nav h2 { font-size: .8rem; text-transform: uppercase; color: var(--muted); margin: 1.2rem 0 .4rem; }
nav ul { list-style: none; margin: 0; padding: 0; }
nav li { padding: .4rem .5rem; border-radius: 4px; cursor: pointer; }
nav li:hover { background: #ebebf7; }
nav li.active { background: #e0e0f5; font-weight: 600; }
nav li .kind { display: block; font-size: .75rem; color: var(--muted); font-weight: 400; }
section { display: flex; flex-direction: column; padding: 1rem 1.2rem; overflow: hidden; }
#heading { display: flex; gap: 1rem; align-items: center; }
#heading h2 { font-size: 1.05rem; margin: 0 0 .6rem; }
ol#messages { flex: 1; list-style: none; margin: 0; padding: 0; overflow-y: auto; }
.message { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; margin-bottom: .5rem; }
.message.reply { margin-left: 2rem; }
.message.bot { border-left: 3px solid var(--accent); }
.meta { font-size: .8rem; color: var(--muted); display: flex; gap: .6rem; align-items: baseline; }
.meta .who { font-weight: 600; color: #242424; }
.badge { background: var(--accent); color: #fff; border-radius: 3px; padding: 0 .3rem; font-size: .7rem; }
.body { white-space: pre-wrap; word-break: break-word; margin-top: .2rem; }
.deleted .body { font-style: italic; color: var(--muted); }
.reactions { font-size: .8rem; color: var(--muted); margin-top: .2rem; }
.meta button { font-size: .75rem; margin-left: auto; }
[hidden] { display: none !important; }
#replying { background: #ebebf7; padding: .3rem .6rem; border-radius: 4px; margin: .4rem 0; display: flex; justify-content: space-between; }
#composer { display: flex; gap: .5rem; margin-top: .4rem; }
#composer textarea { flex: 1; padding: .5rem; font: inherit; border: 1px solid var(--line); border-radius: 4px; resize: vertical; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 4px; padding: .4rem .9rem; cursor: pointer; font: inherit; }
button:disabled { background: #b4b4d8; cursor: default; }
#cancel-reply, .meta button { background: transparent; color: var(--accent); padding: 0 .3rem; }
.muted { color: var(--muted); }
"""

JS: Final = """
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { conversation: null, threadRoot: null, directory: null, signature: "", directorySignature: "" };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const FORMATTING = new Set(["B", "STRONG", "I", "EM", "U", "S", "DEL", "CODE", "PRE", "P", "BR",
    "UL", "OL", "LI", "BLOCKQUOTE", "H1", "H2", "H3", "H4", "SPAN", "DIV", "A", "HR"]);

  function rebuilt(source, target) {
    for (const node of source.childNodes) {
      if (node.nodeType === Node.TEXT_NODE) {
        target.appendChild(document.createTextNode(node.textContent));
      } else if (node.nodeType === Node.ELEMENT_NODE) {
        if (!FORMATTING.has(node.tagName)) { rebuilt(node, target); continue; }
        const copy = document.createElement(node.tagName.toLowerCase());
        const href = node.tagName === "A" ? node.getAttribute("href") || "" : "";
        if (/^https?:[/][/]/i.test(href)) { copy.href = href; copy.rel = "noopener noreferrer"; copy.target = "_blank"; }
        rebuilt(node, copy);
        target.appendChild(copy);
      }
    }
    return target;
  }

  function formatted(className, html) {
    const parsed = new DOMParser().parseFromString(String(html), "text/html");
    return rebuilt(parsed.body, el("div", className));
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { "Accept": "application/json" } });
    if (!response.ok) throw new Error(url + " answered " + response.status);
    return response.json();
  }

  async function postJSON(url, payload) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || ("answered " + response.status));
    return body;
  }

  function setStatus(text) { $("status").textContent = text; }

  function renderHeader() {
    const conversation = current();
    $("title").textContent = conversation ? conversation.label : "Pick a conversation";
    $("text").disabled = !conversation;
    $("send").disabled = !conversation;
    $("install").hidden = !conversation || conversation.botInstalled;
  }

  function renderDirectory(directory) {
    const signature = JSON.stringify(directory) + "|" + state.conversation;
    state.directory = directory;
    if (signature === state.directorySignature) return;
    state.directorySignature = signature;
    $("bot").textContent = "bot: " + directory.bot.name + " -> " + (directory.botEndpoint || "(no endpoint)");
    const select = $("user");
    const chosen = select.value;
    select.replaceChildren(...directory.users.map((u) => {
      const option = el("option", null, u.name);
      option.value = u.id;
      return option;
    }));
    if (chosen) select.value = chosen;
    const list = $("conversations");
    list.replaceChildren(...directory.conversations.map((c) => {
      const item = el("li", c.id === state.conversation ? "active" : null, c.label);
      item.appendChild(el("span", "kind", c.kind + (c.botInstalled ? "" : " (bot not added)")));
      item.addEventListener("click", () => choose(c.id));
      return item;
    }));
    renderHeader();
  }

  function current() {
    if (!state.directory) return null;
    return state.directory.conversations.find((c) => c.id === state.conversation) || null;
  }

  function choose(id) {
    state.conversation = id;
    state.threadRoot = null;
    state.signature = "";
    if (state.directory) renderDirectory(state.directory);
    renderReplying();
    refresh();
  }

  function renderReplying() {
    $("replying").hidden = !state.threadRoot;
    $("replying-text").textContent = state.threadRoot ? "Replying in thread " + state.threadRoot : "";
  }

  function renderMessage(message, isReply) {
    const classes = ["message"];
    if (isReply) classes.push("reply");
    if (message.from.isBot) classes.push("bot");
    if (message.deleted) classes.push("deleted");
    const item = el("li", classes.join(" "));
    const meta = el("div", "meta");
    meta.appendChild(el("span", "who", message.from.name));
    if (message.from.isBot) meta.appendChild(el("span", "badge", "bot"));
    meta.appendChild(el("time", null, new Date(message.created).toLocaleTimeString()));
    if (message.edited && !message.deleted) {
      meta.appendChild(el("span", null, message.editCount > 1 ? "edited \u00d7" + message.editCount : "edited"));
    }
    const conversation = current();
    if (!isReply && conversation && conversation.kind === "channel") {
      const reply = el("button", null, "Reply");
      reply.type = "button";
      reply.addEventListener("click", () => { state.threadRoot = message.threadRoot; renderReplying(); $("text").focus(); });
      meta.appendChild(reply);
    }
    item.appendChild(meta);
    if (message.deleted) item.appendChild(el("div", "body", "This message has been deleted."));
    else if (message.from.isBot) item.appendChild(formatted("body", message.text));
    else item.appendChild(el("div", "body", message.text));
    for (const attachment of message.attachments) {
      item.appendChild(el("div", "reactions", "[" + (attachment.name || attachment.contentType) + "]"));
    }
    if (message.reactions.length) {
      const counts = {};
      for (const r of message.reactions) counts[r.type] = (counts[r.type] || 0) + 1;
      item.appendChild(el("div", "reactions", Object.entries(counts).map(([k, v]) => k + " " + v).join("  ")));
    }
    return item;
  }

  function renderMessages(messages) {
    const signature = JSON.stringify(messages);
    if (signature === state.signature) return;
    state.signature = signature;
    const list = $("messages");
    const conversation = current();
    const items = [];
    if (conversation && conversation.kind === "channel") {
      const roots = messages.filter((m) => m.threadRoot === m.id);
      for (const root of roots) {
        items.push(renderMessage(root, false));
        for (const reply of messages.filter((m) => m.threadRoot === root.id && m.id !== root.id)) {
          items.push(renderMessage(reply, true));
        }
      }
    } else {
      for (const message of messages) items.push(renderMessage(message, false));
    }
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.replaceChildren(...items);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  async function refresh() {
    try {
      renderDirectory(await getJSON("/_emulator/api/directory"));
      if (state.conversation) {
        const url = "/_emulator/api/messages?conversation=" + encodeURIComponent(state.conversation);
        renderMessages((await getJSON(url)).messages);
      }
    } catch (problem) {
      setStatus("Refresh failed: " + problem.message);
    }
  }

  async function send() {
    const text = $("text").value;
    if (!text.trim() || !state.conversation) return;
    $("send").disabled = true;
    try {
      const result = await postJSON("/_emulator/api/messages", {
        conversation: state.conversation, threadRoot: state.threadRoot, user: $("user").value, text: text,
      });
      $("text").value = "";
      setStatus(result.status === null ? "The bot did not answer (" + result.outcome + ")" : "Delivered; the bot answered " + result.status);
    } catch (problem) {
      setStatus("Sending failed: " + problem.message);
    } finally {
      $("send").disabled = false;
    }
    refresh();
  }

  async function install() {
    try {
      const result = await postJSON("/_emulator/api/install", { conversation: state.conversation, user: $("user").value });
      setStatus("Bot added; it answered " + result.statuses.join(", "));
    } catch (problem) {
      setStatus("Adding the bot failed: " + problem.message);
    }
    await refresh();
  }

  function poll() { refresh().finally(() => setTimeout(poll, 1000)); }

  document.addEventListener("DOMContentLoaded", () => {
    $("send").addEventListener("click", send);
    $("install").addEventListener("click", install);
    $("cancel-reply").addEventListener("click", () => { state.threadRoot = null; renderReplying(); });
    $("text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
    });
    poll();
  });
})();
"""

_SECURITY_HEADERS: Final = MappingProxyType(
    {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
)


def _asset(text: str, content_type: str) -> web.Response:
    response = web.Response(text=text, content_type=content_type, headers=dict(_SECURITY_HEADERS))
    response.charset = "utf-8"
    return response


async def page(_request: web.Request) -> web.Response:
    return _asset(HTML, "text/html")


async def page_css(_request: web.Request) -> web.Response:
    return _asset(CSS, "text/css")


async def page_js(_request: web.Request) -> web.Response:
    return _asset(JS, "text/javascript")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", page),
        web.get("/_emulator/page.css", page_css),
        web.get("/_emulator/page.js", page_js),
    ]
