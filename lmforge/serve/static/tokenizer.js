// The tokenizer explorer: each token of the text coloured, with its id, and the count and bytes per token.
"use strict";
const $ = (id) => document.getElementById(id);
let pending = 0;

function shown(piece) {
  // Make whitespace visible; a token that is part of a character shows its bytes (bytes:\xe6...).
  return piece.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u2192");
}

async function update() {
  const text = $("text").value;
  const ticket = ++pending;
  try {
    const { tokens } = await api("/tokenize", { content: text, with_pieces: true });
    if (ticket !== pending) return; // a newer keystroke's answer will follow
    const box = $("tokens");
    box.textContent = "";
    tokens.forEach((t, i) => {
      const span = document.createElement("span");
      span.className = "tok";
      span.style.background = `hsl(${(i * 67) % 360} 80% 85%)`;
      span.title = `id ${t.id}, ${t.bytes.length} byte(s)`;
      span.dataset.id = t.id;
      span.textContent = shown(t.piece);
      const id = document.createElement("sub");
      id.textContent = t.id;
      span.appendChild(id);
      box.appendChild(span);
    });
    const bytes = new TextEncoder().encode(text).length;
    $("count").textContent = tokens.length;
    $("chars").textContent = [...text].length;
    $("bytes").textContent = bytes;
    $("bpt").textContent = tokens.length ? (bytes / tokens.length).toFixed(2) : "-";
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = e.message;
  }
}

navigation("tokenizer.html");
$("text").addEventListener("input", update);
update();
