// Next-token view: /v1/completions with max_tokens 1 and logprobs 10 (tokens as ids), one step per click.
"use strict";
const $ = (id) => document.getElementById(id);
let ids = [];        // the context as token ids (<|bos|> first)
let promptText = "";
let generated = [];  // ids chosen so far
let sampled = null;  // the id the server drew at this step

async function start() {
  promptText = $("prompt").value;
  const { tokens } = await api("/tokenize", { content: promptText, add_special: true });
  ids = tokens;
  generated = [];
  await showText();
  await step();
}

async function showText() {
  const box = $("text");
  box.textContent = promptText;
  if (generated.length) {
    const { content } = await api("/detokenize", { tokens: generated });
    const span = document.createElement("span");
    span.className = "gen";
    span.textContent = content;
    box.appendChild(span);
  }
  $("steps").textContent = `${generated.length} token(s) chosen`;
}

async function step() {
  $("error").textContent = "";
  try {
    const temperature = parseFloat($("temperature").value);
    const answer = await api("/v1/completions", { model: await model(), prompt: ids, max_tokens: 1, logprobs: 10,
      temperature, return_tokens_as_token_ids: true });
    const lp = answer.choices[0].logprobs;
    const idOf = (name) => parseInt(name.slice("token_id:".length), 10);
    sampled = idOf(lp.tokens[0]);
    const top = Object.entries(lp.top_logprobs[0]).map(([name, v]) => [idOf(name), Math.exp(v)]);
    top.sort((a, b) => b[1] - a[1]);
    const { pieces } = await api("/detokenize", { tokens: top.map(([id]) => id), with_pieces: true });
    const list = $("candidates");
    list.textContent = "";
    top.forEach(([id, p], i) => {
      const row = document.createElement("div");
      row.className = "cand" + (id === sampled ? " sampled" : "");
      row.dataset.id = id;
      row.innerHTML = '<span class="piece"></span><span class="id"></span><span><div class="bar"></div></span><span class="p"></span>';
      row.querySelector(".piece").textContent = JSON.stringify(pieces[i].piece);
      row.querySelector(".id").textContent = id;
      row.querySelector(".bar").style.width = (100 * p).toFixed(1) + "%";
      row.querySelector(".p").textContent = (100 * p).toFixed(1) + "%";
      row.onclick = () => choose(id);
      list.appendChild(row);
    });
    $("sample").disabled = false;
  } catch (e) {
    $("error").textContent = e.message;
  }
}

async function choose(id) {
  ids.push(id);
  generated.push(id);
  await showText();
  await step();
}

navigation("next.html");
$("start").onclick = start;
$("sample").onclick = () => sampled !== null && choose(sampled);
