// The chat page: conversations in localStorage, streaming through /v1/chat/completions,
// a status panel fed by /status.json. Model output is untrusted: the reasoning is shown as
// text, the answer goes through marked (with raw HTML escaped) and then DOMPurify.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) {
    try { const v = localStorage.getItem("swallow." + key); return v === null ? fallback : JSON.parse(v); }
    catch { return fallback; }
  },
  set(key, value) { localStorage.setItem("swallow." + key, JSON.stringify(value)); },
  remove(key) { localStorage.removeItem("swallow." + key); },
};

// ---- language: the browser's (navigator.languages), Japanese or English ---------------------
// Every label the page shows, in one table; index.html holds the English ones until this runs.

const STRINGS = {
  en: {
    newChatButton: "＋ New chat", newChat: "New chat", conversations: "Conversations", delete: "Delete",
    settings: "Settings", status: "Status", effort: "Reasoning effort",
    effortLow: "low", effortMedium: "medium", effortHigh: "high",
    temperature: "Temperature", serverDefault: "server default", systemPrompt: "System prompt", none: "(none)",
    forgetKey: "Forget API key", inputPlaceholder: "Message (Enter sends, Shift+Enter adds a line)",
    send: "Send", stop: "Stop", regenerate: "Regenerate",
    serverStatus: "Server status", server: "Server", model: "Model", context: "Context", memory: "Memory",
    running: "Running", queued: "Queued", promptCache: "Prompt cache", hitRate: "Cache hit rate",
    tokensOut: "Tokens out", tokensPerSecond: "Tokens/s", chartLabel: "tokens per second, last minutes",
    keyWanted: "This server wants an API key.", keyPlaceholder: "API key",
    keyKept: "Kept in this browser's localStorage.", save: "Save",
    copy: "Copy", copied: "Copied", thinkingNow: "Thinking…", thinking: "Thinking", thoughtFor: "Thought for {s} s",
    stopped: "stopped", tokens: "{n} tokens", reasoningTokens: "{n} reasoning", cachedTokens: "{n} cached prompt",
    tokensPerSecondValue: "{n} tokens/s", ttft: "TTFT {s} s", serverFailed: "The server failed.",
    loading: " (loading)", contextTokens: "{n} tokens", weights: "weights {b}", mlx: "MLX {a} (peak {p})",
    process: "process {b}", ofSlots: "of {n} slots", ofPlaces: "of {n} places",
    cacheEntries: "{n} entries · {b} of {t}", hitRates: "{a} of turns · {b} of prompt tokens",
    tokensTotal: "{c} (prompt {p})", now: "{n} now", chartRange: "max {m} · last {n} min",
    noAnswer: "The server does not answer.",
    tools: "Tools (MCP servers)", toolArguments: "Arguments", toolResult: "Result", toolError: "Error",
    toolRunning: "running…", builtinTools: "Built-in tools", browserTool: "Web search", pythonTool: "Python",
    batches: "Batches", batchesNone: "none in progress", batchesRunning: "{n} in progress · {d} of {t} lines",
  },
  ja: {
    newChatButton: "＋ 新しいチャット", newChat: "新しいチャット", conversations: "会話", delete: "削除",
    settings: "設定", status: "状態", effort: "推論の深さ",
    effortLow: "低 (low)", effortMedium: "中 (medium)", effortHigh: "高 (high)",
    temperature: "温度 (temperature)", serverDefault: "サーバーの既定値", systemPrompt: "システムプロンプト",
    none: "（なし）", forgetKey: "API キーを消去", inputPlaceholder: "メッセージを入力（Enter で送信、Shift+Enter で改行）",
    send: "送信", stop: "停止", regenerate: "再生成",
    serverStatus: "サーバーの状態", server: "サーバー", model: "モデル", context: "コンテキスト", memory: "メモリ",
    running: "実行中", queued: "待機中", promptCache: "プロンプトキャッシュ", hitRate: "キャッシュヒット率",
    tokensOut: "生成トークン", tokensPerSecond: "トークン/秒", chartLabel: "直近数分のトークン/秒",
    keyWanted: "このサーバーには API キーが必要です。", keyPlaceholder: "API キー",
    keyKept: "このブラウザの localStorage に保存されます。", save: "保存",
    copy: "コピー", copied: "コピーしました", thinkingNow: "考え中…", thinking: "思考", thoughtFor: "{s} 秒考えました",
    stopped: "停止しました", tokens: "{n} トークン", reasoningTokens: "推論 {n}", cachedTokens: "キャッシュ済みプロンプト {n}",
    tokensPerSecondValue: "{n} トークン/秒", ttft: "最初のトークンまで {s} 秒", serverFailed: "サーバーでエラーが起きました。",
    loading: "（読み込み中）", contextTokens: "{n} トークン", weights: "重み {b}", mlx: "MLX {a}（ピーク {p}）",
    process: "プロセス {b}", ofSlots: "{n} 枠中", ofPlaces: "{n} 席中",
    cacheEntries: "{n} 件 · {b} / {t}", hitRates: "ターンの {a} · プロンプトトークンの {b}",
    tokensTotal: "{c}（プロンプト {p}）", now: "現在 {n}", chartRange: "最大 {m} · 直近 {n} 分",
    noAnswer: "サーバーが応答しません。",
    tools: "ツール（MCP サーバー）", toolArguments: "引数", toolResult: "結果", toolError: "エラー",
    toolRunning: "実行中…", builtinTools: "組み込みツール", browserTool: "ウェブ検索", pythonTool: "Python",
    batches: "バッチ", batchesNone: "実行中なし", batchesRunning: "{n} 件実行中 · {t} 行中 {d} 行完了",
  },
};

function pickLanguage(tags) {
  for (const tag of tags) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (base in STRINGS) return base;
  }
  return "en";
}
const LANGUAGE = pickLanguage(navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language]);

function t(key, values = {}) {
  return STRINGS[LANGUAGE][key].replace(/\{(\w+)\}/g, (_, name) => values[name]);
}

function translatePage() {
  document.documentElement.lang = LANGUAGE;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
}
translatePage();


// ---- markdown, rendered safely -------------------------------------------------------------

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

marked.use({
  gfm: true,
  breaks: true,
  // HTML the model writes is shown as text, never as markup
  renderer: { html(token) { return escapeHtml(typeof token === "string" ? token : token.text); } },
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text), { FORBID_TAGS: ["style", "form", "input"] });
  for (const pre of element.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = t("copy");
    button.addEventListener("click", () => copyText(pre.querySelector("code")?.textContent ?? pre.textContent, button));
    pre.prepend(button);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API (not a secure context): the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = t("copied");
  setTimeout(() => { button.textContent = t("copy"); }, 1200);
}

// ---- conversations -------------------------------------------------------------------------

let conversations = store.get("conversations", []);
let current = conversations.find((c) => c.id === store.get("current", null)) || null;
let generating = null;  // {controller, conversation, message, element}

function newConversation() {
  const conversation = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "", messages: [], updated: Date.now() };
  conversations.unshift(conversation);
  return conversation;
}

function save() {
  store.set("conversations", conversations);
  store.set("current", current ? current.id : null);
}

function select(conversation) {
  if (generating) stop();
  current = conversation;
  save();
  renderConversations();
  renderMessages();
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of conversations) {
    const item = document.createElement("li");
    item.className = conversation === current ? "active" : "";
    item.dataset.id = conversation.id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = conversation.title || t("newChat");
    title.addEventListener("click", () => select(conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.title = t("delete");
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      if (generating && generating.conversation === conversation) stop();
      conversations = conversations.filter((c) => c !== conversation);
      if (current === conversation) current = null;
      save();
      renderConversations();
      renderMessages();
    });
    item.append(title, remove);
    list.append(item);
  }
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  for (const message of current ? current.messages : []) box.append(messageElement(message));
  updateButtons();
  box.scrollTop = box.scrollHeight;
}

function messageElement(message) {
  const element = document.createElement("div");
  element.className = "message " + message.role;
  if (message.role === "user") {
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = message.content;
    element.append(body);
    return element;
  }
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  const summary = document.createElement("summary");
  const reasoning = document.createElement("div");
  reasoning.className = "reasoning";
  thinking.append(summary, reasoning);
  const tools = document.createElement("div");
  tools.className = "tool-calls";
  const answer = document.createElement("div");
  answer.className = "answer";
  const stats = document.createElement("div");
  stats.className = "stats";
  element.append(thinking, tools, answer, stats);
  updateAssistant(element, message);
  return element;
}

function updateAssistant(element, message) {
  const thinking = element.querySelector(".thinking");
  const streaming = message.state === "streaming";
  thinking.hidden = !message.reasoning;
  element.querySelector(".reasoning").textContent = message.reasoning || "";
  const summary = thinking.querySelector("summary");
  if (streaming && !message.content) {
    summary.textContent = t("thinkingNow");
    if (!thinking.dataset.folded) thinking.open = true;
  } else {
    summary.textContent = message.thoughtSeconds != null ? t("thoughtFor", { s: message.thoughtSeconds.toFixed(1) }) : t("thinking");
    if (!thinking.dataset.folded) { thinking.open = false; thinking.dataset.folded = "1"; }  // once: the reader may open it again
  }
  renderToolCalls(element.querySelector(".tool-calls"), message.tools || []);
  renderMarkdown(element.querySelector(".answer"), message.content || "");
  markCitations(element.querySelector(".answer"), message.citations || []);
  element.classList.toggle("streaming", streaming);
  const stats = element.querySelector(".stats");
  stats.replaceChildren();
  if (message.error) {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = message.error;
    stats.append(error);
  }
  if (message.state === "stopped") stats.append(span(t("stopped")));
  const s = message.stats;
  if (s) {
    if (s.completion_tokens != null) stats.append(span(t("tokens", { n: s.completion_tokens }), "tokens"));
    if (s.reasoning_tokens != null) stats.append(span(t("reasoningTokens", { n: s.reasoning_tokens }), "reasoning-tokens"));
    if (s.cached_tokens != null) stats.append(span(t("cachedTokens", { n: s.cached_tokens }), "cached-tokens"));
    if (s.tokens_per_second != null) stats.append(span(t("tokensPerSecondValue", { n: s.tokens_per_second.toFixed(1) }), "tps"));
    if (s.ttft != null) stats.append(span(t("ttft", { s: s.ttft.toFixed(2) }), "ttft"));
  }
}

// The answer's citations of the pages the browser read are links in its text ([site](url)): the
// ones the server marked as citations (annotations of type url_citation) are shown as small chips.
function markCitations(answer, citations) {
  const urls = new Set(citations.map((c) => c.url));
  for (const link of answer.querySelectorAll("a[href]")) {
    if (urls.has(link.getAttribute("href"))) link.classList.add("citation");
  }
}

// What a call did, in a few words: a search's query, the page opened, the text found; else its name.
function callTitle(call) {
  const action = call.action || {};
  if (call.type === "browser" && action.type === "search") return `🔎 ${action.query}`;
  if (call.type === "browser" && action.type === "open_page" && action.url) return `📄 ${action.url}`;
  if (call.type === "browser" && action.type === "find_in_page") return `🔍 ${action.pattern}`;
  if (call.type === "python") return "🐍 python";
  return `🔧 ${call.server ? call.server + "." : ""}${call.name}`;
}

// Calls the server ran (MCP tools, the browser, python): one folded block each, its name; opened,
// its arguments and its result or error. All of it is untrusted text, shown as text.
function renderToolCalls(box, calls) {
  const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.id));
  box.replaceChildren();
  for (const call of calls) {
    const details = document.createElement("details");
    details.className = "tool-call" + (call.error ? " failed" : "");
    details.dataset.id = call.id;
    details.open = open.has(call.id);
    const summary = document.createElement("summary");
    const done = call.output != null || call.error != null;
    summary.textContent = callTitle(call) + (done ? "" : ` — ${t("toolRunning")}`);
    details.append(summary);
    for (const [label, text, name] of [[t("toolArguments"), call.arguments, "arguments"],
                                       [call.error != null ? t("toolError") : t("toolResult"), call.error ?? call.output, "result"]]) {
      if (text == null) continue;
      const heading = document.createElement("div");
      heading.className = "muted small";
      heading.textContent = label;
      const body = document.createElement("pre");
      body.className = name;
      body.textContent = text;
      details.append(heading, body);
    }
    box.append(details);
  }
}

function span(text, name) {
  const element = document.createElement("span");
  element.textContent = text;
  if (name) element.dataset.stat = name;
  return element;
}

function updateButtons() {
  const busy = !!generating;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  const last = current && current.messages[current.messages.length - 1];
  $("regenerate").disabled = busy || !last || last.role !== "assistant";
}

// ---- settings ------------------------------------------------------------------------------

const settings = Object.assign({ effort: "medium", temperature: "", system: "", servers: {}, builtins: {} },
                               store.get("settings", {}));
settings.builtins ??= {};
let mcpServers = [];  // the server's MCP servers (GET /v1/mcp/servers); the ticked ones go with each message
let builtinTools = null;  // the built-ins the server runs ({browser: {default}, python: ...}, from /status.json)

// The search and python toggles, once the server said which built-ins it runs.
function showBuiltinTools(offered) {
  if (builtinTools !== null) return;
  builtinTools = offered || {};
  const box = $("builtin-tools");
  box.replaceChildren();
  for (const [name, facts] of Object.entries(builtinTools)) {
    const label = document.createElement("label");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.value = name;
    tick.checked = settings.builtins[name] ?? facts.default;
    tick.addEventListener("change", () => { settings.builtins[name] = tick.checked; store.set("settings", settings); });
    label.append(tick, document.createTextNode(" " + t(name + "Tool")));
    box.append(label);
  }
  $("builtin-setting").hidden = Object.keys(builtinTools).length === 0;
}

function chosenBuiltins() {
  return Object.entries(builtinTools || {}).filter(([name, facts]) => settings.builtins[name] ?? facts.default)
    .map(([name]) => name);
}

// A conversation's name for the server (python keeps its interpreter by it): random, so that no
// other client can name it by guessing.
function conversationId(conversation) {
  if (!conversation.serverId) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    conversation.serverId = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return conversation.serverId;
}

async function loadToolServers() {
  try {
    const response = await fetch("/v1/mcp/servers", { headers: authHeaders() });
    if (!response.ok) return;
    mcpServers = (await response.json()).data || [];
  } catch { return; }
  const box = $("tool-servers");
  box.replaceChildren();
  for (const server of mcpServers) {
    const label = document.createElement("label");
    const box_ = document.createElement("input");
    box_.type = "checkbox";
    box_.value = server.name;
    box_.checked = settings.servers[server.name] ?? server.default;
    box_.addEventListener("change", () => { settings.servers[server.name] = box_.checked; store.set("settings", settings); });
    label.append(box_, document.createTextNode(" " + server.name));
    box.append(label);
  }
  $("tools-setting").hidden = mcpServers.length === 0;
}

function chosenServers() {
  return mcpServers.filter((s) => settings.servers[s.name] ?? s.default).map((s) => s.name);
}
$("effort").value = settings.effort;
$("temperature").value = settings.temperature;
$("system").value = settings.system;
for (const id of ["effort", "temperature", "system"]) {
  $(id).addEventListener("input", () => { settings[id] = $(id).value; store.set("settings", settings); });
  $(id).addEventListener("change", () => { settings[id] = $(id).value; store.set("settings", settings); });
}

// ---- the API key ---------------------------------------------------------------------------

function authHeaders() {
  const key = store.get("apiKey", "");
  return key ? { Authorization: "Bearer " + key } : {};
}

function askForKey() {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-input").value = "";
    dialog.addEventListener("close", () => {
      const key = $("key-input").value.trim();
      if (key) store.set("apiKey", key);
      $("forget-key").hidden = !store.get("apiKey", "");
      $("input").blur();  // focus comes back to the message box, for typing
      $("input").focus();
      resolve(!!key);
    }, { once: true });
    if (!dialog.open) dialog.showModal();
  });
}

async function checkKey() {
  $("forget-key").hidden = !store.get("apiKey", "");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.status === 401) await askForKey();
  } catch { /* the status panel shows that the server is unreachable */ }
}

$("forget-key").addEventListener("click", () => { store.remove("apiKey"); $("forget-key").hidden = true; checkKey(); });

// ---- chat ----------------------------------------------------------------------------------

function requestMessages(conversation) {
  const messages = [];
  if (settings.system.trim()) messages.push({ role: "system", content: settings.system });
  for (const m of conversation.messages) {
    if (m.role === "assistant" && !m.content) continue;  // stopped before the answer began
    messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

async function generate() {
  const conversation = current;
  const message = { role: "assistant", content: "", reasoning: "", state: "streaming" };
  conversation.messages.push(message);
  conversation.updated = Date.now();
  const element = messageElement(message);
  $("messages").append(element);
  $("messages").scrollTop = $("messages").scrollHeight;
  const controller = new AbortController();
  generating = { controller, conversation, message, element };
  updateButtons();

  const body = {
    model: $("model-name").textContent || "swallow",
    messages: requestMessages({ messages: conversation.messages.slice(0, -1) }),  // all but the new reply
    stream: true, stream_options: { include_usage: true }, reasoning_effort: settings.effort,
  };
  const temperature = parseFloat(settings.temperature);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const servers = chosenServers();
  if (servers.length) body.tools = servers.map((name) => ({ type: "mcp", server_label: name }));
  if (builtinTools && Object.keys(builtinTools).length) {
    body.builtin_tools = chosenBuiltins();  // a request that names its server-run tools gets no defaults
    body.metadata = { conversation_id: conversationId(conversation) };
  } else if (mcpServers.length && !servers.length) {
    body.tool_choice = "none";  // none ticked: not even the servers on by default
  }

  const started = performance.now();
  let first = null, answerStart = null, usage = null, scheduled = false;
  const redraw = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      updateAssistant(element, message);
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
    });
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      let text = `HTTP ${response.status}`;
      try { text = (await response.json()).error.message || text; } catch { /* not JSON */ }
      if (response.status === 401) askForKey();
      throw new Error(text);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || t("serverFailed"));
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (!delta) continue;
          for (const part of delta.server_tool_calls || []) {  // calls the server runs (MCP tools, built-ins)
            message.tools ??= [];
            if (part.id) message.tools[part.index] = { id: part.id, type: part.type, server: part.server, name: part.name, arguments: "" };
            const call = message.tools[part.index];
            if (!call) continue;
            if (part.arguments && !part.id) call.arguments += part.arguments;
            if ("output" in part || "error" in part) { call.output = part.output; call.error = part.error; call.action = part.action; }
          }
          for (const annotation of delta.annotations || []) {  // citations of the pages the browser read
            if (annotation.type === "url_citation") (message.citations ??= []).push(annotation.url_citation);
          }
          const reasoning = delta.reasoning_content ?? delta.reasoning;
          if (reasoning || delta.content) first ??= performance.now();
          if (reasoning) message.reasoning += reasoning;
          if (delta.content) {
            if (answerStart === null) {
              answerStart = performance.now();
              if (message.reasoning) message.thoughtSeconds = (answerStart - first) / 1000;
            }
            message.content += delta.content;
          }
          redraw();
        }
      }
    }
    message.state = "done";
  } catch (error) {
    if (error.name === "AbortError") message.state = "stopped";
    else { message.state = "error"; message.error = error.message; }
  }
  const ended = performance.now();
  if (message.thoughtSeconds == null && message.reasoning && first !== null) message.thoughtSeconds = (ended - first) / 1000;
  message.stats = {
    completion_tokens: usage ? usage.completion_tokens : null,
    reasoning_tokens: usage ? usage.completion_tokens_details?.reasoning_tokens ?? 0 : null,
    cached_tokens: usage ? usage.prompt_tokens_details?.cached_tokens ?? 0 : null,
    tokens_per_second: usage && first !== null && ended > first ? usage.completion_tokens / ((ended - first) / 1000) : null,
    ttft: first !== null ? (first - started) / 1000 : null,
  };
  if (generating && generating.message === message) generating = null;
  save();
  if (element.isConnected) updateAssistant(element, message);
  updateButtons();
}

function send() {
  const text = $("input").value;
  if (!text.trim() || generating) return;
  if (!current) { current = newConversation(); }
  current.messages.push({ role: "user", content: text });
  if (!current.title || current.title === "New chat") current.title = text.trim().slice(0, 40);  // "New chat": kept by older pages
  $("input").value = "";
  save();
  renderConversations();
  $("messages").append(messageElement(current.messages[current.messages.length - 1]));  // the others stay as they are
  generate();
}

function stop() {
  if (generating) generating.controller.abort();
}

function regenerate() {
  if (generating || !current) return;
  const last = current.messages[current.messages.length - 1];
  if (!last || last.role !== "assistant") return;
  current.messages.pop();
  renderMessages();
  generate();
}

$("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("input").addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey) return;  // Shift+Enter: a newline
  // Enter that confirms an IME conversion (Japanese input) must never send
  if (event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  send();
});
$("stop").addEventListener("click", stop);
$("regenerate").addEventListener("click", regenerate);
$("new-chat").addEventListener("click", () => { select(newConversation()); $("input").focus(); });

// ---- panels --------------------------------------------------------------------------------

function toggle(buttonId, panelId, className) {
  const button = $(buttonId);
  button.addEventListener("click", () => {
    const open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", String(open));
    if (className) document.body.classList.toggle(className, !open);
    else $(panelId).hidden = !open;
  });
}
toggle("toggle-settings", "settings");
toggle("toggle-status", "status-panel", "status-hidden");

// ---- the status panel ----------------------------------------------------------------------

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function percent(x) { return x == null ? "–" : `${(100 * x).toFixed(0)}%`; }

async function pollStatus() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    const s = await response.json();
    $("status-error").hidden = true;
    $("model-name").textContent = s.model;
    $("status-model").textContent = s.model + (s.loaded ? "" : t("loading"));
    $("status-context").textContent = t("contextTokens", { n: s.context_length.toLocaleString() });
    const m = s.memory;
    const memory = [];
    if (m.weights_bytes != null) memory.push(t("weights", { b: bytes(m.weights_bytes) }));
    if (m.mlx_active_bytes) memory.push(t("mlx", { a: bytes(m.mlx_active_bytes), p: bytes(m.mlx_peak_bytes) }));
    if (m.process_rss_bytes != null) memory.push(t("process", { b: bytes(m.process_rss_bytes) }));
    $("status-memory").textContent = memory.join(" · ") || "–";
    $("status-running").textContent = `${s.requests.running}`;
    $("status-running").title = t("ofSlots", { n: s.requests.max_concurrency });
    $("status-queued").textContent = `${s.requests.queued}`;
    $("status-queued").title = t("ofPlaces", { n: s.requests.max_queue });
    const c = s.prompt_cache;
    $("status-cache").textContent = t("cacheEntries", { n: c.entries, b: bytes(c.bytes), t: bytes(c.budget_bytes) });
    $("status-hit-rate").textContent = t("hitRates", { a: percent(c.hit_rate), b: percent(c.token_hit_rate) });
    $("status-tokens").textContent = t("tokensTotal", { c: s.tokens.completion.toLocaleString(), p: s.tokens.prompt.toLocaleString() });
    const b = s.batches;
    $("status-batches").textContent = b.running
      ? t("batchesRunning", { n: b.running, d: b.lines_done.toLocaleString(), t: b.lines_total.toLocaleString() })
      : t("batchesNone");
    $("status-batches").title = b.in_progress.map((x) => `${x.id} ${x.status} ${x.completed + x.failed}/${x.total}`).join("\n");
    showBuiltinTools(s.builtin_tools);
    drawChart(s.tokens_per_second);
  } catch (error) {
    $("status-error").textContent = t("noAnswer");
    $("status-error").hidden = false;
  }
}

function drawChart(points) {
  const now = Date.now() / 1000;
  const span = Math.min(300, Math.max(60, points.length ? now - points[0].t : 0));  // seconds across
  const max = Math.max(1, ...points.map((p) => p.tokens_per_second));
  const xy = points.map((p) => [240 * (1 - (now - p.t) / span), 78 - 74 * p.tokens_per_second / max]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  $("tps-line").setAttribute("points", line);
  $("tps-area").setAttribute("points", xy.length ? `${xy[0][0].toFixed(1)},80 ${line} ${xy[xy.length - 1][0].toFixed(1)},80` : "");
  const last = points.length ? points[points.length - 1].tokens_per_second : 0;
  $("status-tps").textContent = t("now", { n: last.toFixed(1) });
  $("tps-max").textContent = t("chartRange", { m: max.toFixed(1), n: Math.round(span / 60) });
}

// ---- start ---------------------------------------------------------------------------------

renderConversations();
renderMessages();
checkKey().then(loadToolServers);
pollStatus();
setInterval(pollStatus, 1000);
$("input").focus();
