// Lantern's chat page: streams OpenAI chat completions from this server, renders answers as
// sanitized Markdown, and keeps conversations and settings in the browser's localStorage.
// Nothing is fetched from any other host (the page's Content-Security-Policy forbids it).
"use strict";

const STORE = { conversations: "lantern.conversations", current: "lantern.current", settings: "lantern.settings" };
const $ = (id) => document.getElementById(id);

let conversations = load(STORE.conversations, []);
let currentId = load(STORE.current, null);
let running = null; // the AbortController of the answer being streamed

function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch {
    return fallback;
  }
}

function save() {
  localStorage.setItem(STORE.conversations, JSON.stringify(conversations));
  localStorage.setItem(STORE.current, JSON.stringify(currentId));
}

// ---- settings ------------------------------------------------------------------------------

const SETTINGS = ["model", "system-prompt", "temperature", "top-p", "max-tokens", "output-format", "json-schema", "api-key"];

function restoreSettings() {
  const saved = load(STORE.settings, {});
  for (const id of SETTINGS) {
    if (id in saved && id !== "model") $(id).value = saved[id];
  }
  showFormatFields();
  return saved;
}

function saveSettings() {
  const values = {};
  for (const id of SETTINGS) values[id] = $(id).value;
  localStorage.setItem(STORE.settings, JSON.stringify(values));
}

function showFormatFields() {
  $("schema-label").hidden = $("output-format").value !== "json_schema";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function loadModels(saved) {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.status === 401) {
      $("api-key-label").hidden = false;
      $("settings").open = true;
      showError("This server asks for an API key: enter it in Settings.");
      return;
    }
    const body = await response.json();
    const select = $("model");
    select.replaceChildren();
    for (const model of body.data || []) {
      const option = document.createElement("option");
      option.value = option.textContent = model.id;
      select.append(option);
    }
    if (saved.model && [...select.options].some((o) => o.value === saved.model)) select.value = saved.model;
  } catch (error) {
    showError("Cannot reach the server: " + error.message);
  }
}

// ---- conversations -------------------------------------------------------------------------

function current() {
  let conversation = conversations.find((c) => c.id === currentId);
  if (!conversation) {
    conversation = { id: String(Date.now()) + Math.random().toString(16).slice(2, 8), title: "New chat", messages: [] };
    conversations.unshift(conversation);
    currentId = conversation.id;
    save();
  }
  return conversation;
}

function renderList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of conversations) {
    const item = document.createElement("li");
    item.classList.toggle("current", conversation.id === currentId);
    const title = document.createElement("span");
    title.textContent = conversation.title;
    title.addEventListener("click", () => {
      currentId = conversation.id;
      save();
      render();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Delete this conversation";
    remove.addEventListener("click", () => {
      conversations = conversations.filter((c) => c.id !== conversation.id);
      if (currentId === conversation.id) currentId = conversations[0] ? conversations[0].id : null;
      save();
      render();
    });
    item.append(title, remove);
    list.append(item);
  }
}

// Model output is Markdown whose raw HTML is shown as text, and what Markdown makes is
// sanitized too: model output never runs as script or becomes markup of its own.
function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

let markdownReady = false;
function setMarkdown(element, text) {
  if (!markdownReady) {
    marked.use({ renderer: { html: (token) => escapeHtml(token.raw || token.text || "") } });
    markdownReady = true;
  }
  element.innerHTML = DOMPurify.sanitize(marked.parse(text));
}

function messageElement(message) {
  const element = document.createElement("div");
  element.className = "message " + message.role;
  if (message.role === "assistant") setMarkdown(element, message.content);
  else element.textContent = message.content;
  return element;
}

function render() {
  renderList();
  const box = $("messages");
  box.replaceChildren(...current().messages.map(messageElement));
  box.scrollTop = box.scrollHeight;
}

function exportConversation() {
  const conversation = current();
  const blob = new Blob([JSON.stringify(conversation, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "lantern-chat-" + conversation.id + ".json";
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- errors and stats ----------------------------------------------------------------------

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function errorOf(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = (body.error && (body.error.message || body.error)) || "";
  } catch {
    detail = response.statusText;
  }
  if (response.status === 429) return "The server is busy (429): try again in a moment. " + detail;
  if (response.status === 401) {
    $("api-key-label").hidden = false;
    return "The API key is missing or wrong (401).";
  }
  return "The server refused the request (" + response.status + "): " + detail;
}

function showStats(started, firstToken, finished, usage) {
  const parts = [];
  if (firstToken) parts.push("TTFT " + Math.round(firstToken - started) + " ms");
  if (usage && firstToken && finished > firstToken && usage.completion_tokens > 1) {
    const perSecond = (usage.completion_tokens - 1) / ((finished - firstToken) / 1000);
    parts.push(perSecond.toFixed(1) + " tokens/s");
  }
  if (usage) {
    const cached = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
    parts.push(usage.prompt_tokens + " prompt tokens (" + cached + " cached)");
  }
  $("stats").textContent = parts.join(" · ");
}

// ---- sending -------------------------------------------------------------------------------

function requestBody(conversation) {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation.messages) messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value || undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  const format = $("output-format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse($("json-schema").value) } };
  }
  return body;
}

async function send() {
  const text = $("prompt").value;
  if (!text.trim() || running) return;
  showError("");
  const conversation = current();
  let body;
  try {
    conversation.messages.push({ role: "user", content: text });
    body = requestBody(conversation);
  } catch (error) {
    conversation.messages.pop();
    showError("The JSON schema is not valid JSON: " + error.message);
    return;
  }
  if (conversation.messages.length === 1) conversation.title = text.slice(0, 40);
  $("prompt").value = "";
  const answer = { role: "assistant", content: "" };
  conversation.messages.push(answer);
  save();
  render();
  const element = $("messages").lastElementChild;
  running = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    if (!response.ok) {
      showError(await errorOf(response));
      conversation.messages.pop();
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          showError("The server failed while answering: " + (chunk.error.message || chunk.error));
          continue;
        }
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (firstToken === null) firstToken = performance.now();
          answer.content += delta.content;
          setMarkdown(element, answer.content);
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    }
    showStats(started, firstToken, performance.now(), usage);
  } catch (error) {
    if (error.name === "AbortError") {
      answer.content += answer.content ? "\n\n*(stopped)*" : "*(stopped)*";
      setMarkdown(element, answer.content);
    } else {
      showError("The connection dropped: " + error.message);
    }
  } finally {
    running = null;
    $("send").hidden = false;
    $("stop").hidden = true;
    save();
  }
}

// ---- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const saved = restoreSettings();
  for (const id of SETTINGS) $(id).addEventListener("change", saveSettings);
  $("output-format").addEventListener("change", showFormatFields);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("new-chat").addEventListener("click", () => {
    currentId = null;
    current();
    render();
  });
  $("export-chat").addEventListener("click", exportConversation);
  $("toggle-sidebar").addEventListener("click", () => $("app").classList.toggle("sidebar-open"));
  loadModels(saved);
  render();
});
