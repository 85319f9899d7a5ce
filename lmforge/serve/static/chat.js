// The chat page: conversations in localStorage, answers streamed from /v1/chat/completions. When the server runs
// tools (`lmforge serve --tools`), an answer streams its calls (`delta.tool_calls`) and their outputs
// (`delta.tool_result`) between its text; they are shown in place as they arrive, kept as the message's `parts`.
// Only the answer's text goes back to the server as history (its calls were run there already).
"use strict";
const STORE = "lmforge.conversations";
const SETTINGS = "lmforge.chatSettings";
const $ = (id) => document.getElementById(id);
let conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
let current = conversations.length ? conversations[0].id : null;
let controller = null;

function save() { localStorage.setItem(STORE, JSON.stringify(conversations)); }
function conversation() { return conversations.find((c) => c.id === current); }

function newConversation() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [] };
  conversations.unshift(c);
  current = c.id;
  save();
  render();
}

function render() {
  const list = $("conversations");
  list.textContent = "";
  for (const c of conversations) {
    const item = document.createElement("div");
    item.textContent = c.title;
    if (c.id === current) item.className = "here";
    item.onclick = () => { current = c.id; render(); };
    list.appendChild(item);
  }
  const box = $("messages");
  box.textContent = "";
  for (const m of (conversation() || { messages: [] }).messages) {
    const div = document.createElement("div");
    div.className = "msg " + m.role + (m.error ? " error" : "");
    fill(div, m);
    box.appendChild(div);
  }
  box.scrollTop = box.scrollHeight;
}

// A message's bubble: its text, or its parts in order (text, tool calls, tool outputs).
function fill(div, m) {
  div.textContent = "";
  if (m.error || !m.parts) { div.textContent = m.error || m.content; return; }
  for (const p of m.parts) {
    const el = document.createElement(p.kind === "text" ? "span" : "div");
    if (p.kind === "text") el.textContent = p.text;
    else {
      el.className = "tool " + p.kind;
      el.textContent = p.kind === "call" ? `[${p.name}] ${p.arguments}` : `[${p.name} output] ${p.content}`;
    }
    div.appendChild(el);
  }
}

// One streamed delta into the reply: text extends the last text part; a call or a result is a part of its own.
function addDelta(reply, delta) {
  if (delta.content) {
    reply.content += delta.content;
    const last = reply.parts[reply.parts.length - 1];
    if (last && last.kind === "text") last.text += delta.content; else reply.parts.push({ kind: "text", text: delta.content });
  }
  for (const c of delta.tool_calls || []) {
    reply.parts.push({ kind: "call", name: c.function.name, arguments: c.function.arguments });
  }
  if (delta.tool_result) reply.parts.push({ kind: "result", name: delta.tool_result.name, content: delta.tool_result.content });
}

function settings() {
  return { temperature: parseFloat($("temperature").value), top_p: parseFloat($("top-p").value),
           max_tokens: parseInt($("max-tokens").value, 10) };
}

function saveSettings() {
  localStorage.setItem(SETTINGS, JSON.stringify({ ...settings(), system: $("system").value }));
}

function loadSettings() {
  const s = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
  if (s.temperature !== undefined) $("temperature").value = s.temperature;
  if (s.top_p !== undefined) $("top-p").value = s.top_p;
  if (s.max_tokens !== undefined) $("max-tokens").value = s.max_tokens;
  if (s.system !== undefined) $("system").value = s.system;
}

function busy(on) {
  $("send").disabled = on; $("regenerate").disabled = on; $("stop").disabled = !on;
  $("status").textContent = on ? "generating..." : "";
}

// Stream an answer to the conversation as it stands (its last message is the user's).
async function answer() {
  const c = conversation();
  const history = c.messages.filter((m) => !m.error).map((m) => ({ role: m.role, content: m.content }));
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : history;
  const reply = { role: "assistant", content: "", parts: [] };
  c.messages.push(reply);
  render();
  const bubble = $("messages").lastChild;
  controller = new AbortController();
  busy(true);
  try {
    await streamEvents("/v1/chat/completions", { model: await model(), messages, stream: true, ...settings() },
      (chunk) => {
        if (!chunk.choices.length) return;
        addDelta(reply, chunk.choices[0].delta);
        fill(bubble, reply);
      }, controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") { reply.error = e.message; bubble.className = "msg assistant error"; bubble.textContent = e.message; }
  } finally {
    controller = null;
    busy(false);
    save();
  }
}

function send() {
  const text = $("message").value.trim();
  if (!text || controller) return;
  if (!conversation()) newConversation();
  const c = conversation();
  if (!c.messages.length) c.title = text.slice(0, 40);
  c.messages.push({ role: "user", content: text });
  $("message").value = "";
  save();
  answer();
}

function regenerate() {
  const c = conversation();
  if (!c || controller) return;
  while (c.messages.length && c.messages[c.messages.length - 1].role === "assistant") c.messages.pop();
  if (c.messages.length) answer();
}

navigation("index.html");
loadSettings();
$("send").onclick = send;
$("stop").onclick = () => controller && controller.abort();
$("regenerate").onclick = regenerate;
$("new-chat").onclick = newConversation;
for (const id of ["temperature", "top-p", "max-tokens", "system"]) $(id).addEventListener("change", saveSettings);
$("message").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });
render();
