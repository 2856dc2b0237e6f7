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
    button.textContent = "Copy";
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
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1200);
}

// ---- conversations -------------------------------------------------------------------------

let conversations = store.get("conversations", []);
let current = conversations.find((c) => c.id === store.get("current", null)) || null;
let generating = null;  // {controller, conversation, message, element}

function newConversation() {
  const conversation = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [], updated: Date.now() };
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
    title.textContent = conversation.title;
    title.addEventListener("click", () => select(conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.title = "Delete";
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
  const answer = document.createElement("div");
  answer.className = "answer";
  const stats = document.createElement("div");
  stats.className = "stats";
  element.append(thinking, answer, stats);
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
    summary.textContent = "Thinking…";
    if (!thinking.dataset.folded) thinking.open = true;
  } else {
    summary.textContent = message.thoughtSeconds != null ? `Thought for ${message.thoughtSeconds.toFixed(1)} s` : "Thinking";
    if (!thinking.dataset.folded) { thinking.open = false; thinking.dataset.folded = "1"; }  // once: the reader may open it again
  }
  renderMarkdown(element.querySelector(".answer"), message.content || "");
  element.classList.toggle("streaming", streaming);
  const stats = element.querySelector(".stats");
  stats.replaceChildren();
  if (message.error) {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = message.error;
    stats.append(error);
  }
  if (message.state === "stopped") stats.append(span("stopped"));
  const s = message.stats;
  if (s) {
    if (s.completion_tokens != null) stats.append(span(`${s.completion_tokens} tokens`, "tokens"));
    if (s.reasoning_tokens != null) stats.append(span(`${s.reasoning_tokens} reasoning`, "reasoning-tokens"));
    if (s.cached_tokens != null) stats.append(span(`${s.cached_tokens} cached prompt`, "cached-tokens"));
    if (s.tokens_per_second != null) stats.append(span(`${s.tokens_per_second.toFixed(1)} tokens/s`, "tps"));
    if (s.ttft != null) stats.append(span(`TTFT ${s.ttft.toFixed(2)} s`, "ttft"));
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

const settings = Object.assign({ effort: "medium", temperature: "", system: "" }, store.get("settings", {}));
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
          if (chunk.error) throw new Error(chunk.error.message || "The server failed.");
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (!delta) continue;
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
  if (current.title === "New chat") current.title = text.trim().slice(0, 40);
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
    $("status-model").textContent = s.model + (s.loaded ? "" : " (loading)");
    $("status-context").textContent = `${s.context_length.toLocaleString()} tokens`;
    const m = s.memory;
    const memory = [];
    if (m.weights_bytes != null) memory.push(`weights ${bytes(m.weights_bytes)}`);
    if (m.mlx_active_bytes) memory.push(`MLX ${bytes(m.mlx_active_bytes)} (peak ${bytes(m.mlx_peak_bytes)})`);
    if (m.process_rss_bytes != null) memory.push(`process ${bytes(m.process_rss_bytes)}`);
    $("status-memory").textContent = memory.join(" · ") || "–";
    $("status-running").textContent = `${s.requests.running}`;
    $("status-running").title = `of ${s.requests.max_concurrency} slots`;
    $("status-queued").textContent = `${s.requests.queued}`;
    $("status-queued").title = `of ${s.requests.max_queue} places`;
    const c = s.prompt_cache;
    $("status-cache").textContent = `${c.entries} entries · ${bytes(c.bytes)} of ${bytes(c.budget_bytes)}`;
    $("status-hit-rate").textContent = `${percent(c.hit_rate)} of turns · ${percent(c.token_hit_rate)} of prompt tokens`;
    $("status-tokens").textContent = `${s.tokens.completion.toLocaleString()} (prompt ${s.tokens.prompt.toLocaleString()})`;
    drawChart(s.tokens_per_second);
  } catch (error) {
    $("status-error").textContent = "The server does not answer.";
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
  $("status-tps").textContent = `${last.toFixed(1)} now`;
  $("tps-max").textContent = `max ${max.toFixed(1)} · last ${Math.round(span / 60)} min`;
}

// ---- start ---------------------------------------------------------------------------------

renderConversations();
renderMessages();
checkKey();
pollStatus();
setInterval(pollStatus, 1000);
$("input").focus();
