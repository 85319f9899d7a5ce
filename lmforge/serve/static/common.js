// Shared by the pages: the API key (kept in localStorage), JSON calls, and server-sent events over fetch.
"use strict";
const KEY_STORE = "lmforge.apiKey";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function failure(response) {
  try { return (await response.json()).error.message; } catch (e) { return "HTTP " + response.status; }
}

async function api(path, body, signal) {
  const response = await fetch(path, body === undefined ? { headers: headers(), signal }
    : { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw new Error(await failure(response));
  return response.json();
}

// POST body with stream: true; onChunk(json) for each `data:` event until `[DONE]`.
async function streamEvents(path, body, onChunk, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw new Error(await failure(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        onChunk(chunk);
      }
    }
  }
}

let modelId = null;
async function model() {
  if (!modelId) modelId = (await api("/v1/models")).data[0].id;
  return modelId;
}

// The navigation bar with the API key field, on every page.
function navigation(here) {
  const nav = document.createElement("nav");
  const pages = [["index.html", "Chat"], ["tokenizer.html", "Tokenizer"], ["next.html", "Next token"]];
  for (const [href, name] of pages) {
    const a = document.createElement("a");
    a.href = href; a.textContent = name;
    if (href === here) a.className = "here";
    nav.appendChild(a);
  }
  const key = document.createElement("span");
  key.className = "key";
  key.innerHTML = 'API key <input id="api-key" type="password" placeholder="none">';
  nav.appendChild(key);
  document.body.prepend(nav);
  const input = document.getElementById("api-key");
  input.value = localStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => { localStorage.setItem(KEY_STORE, input.value.trim()); modelId = null; });
}
