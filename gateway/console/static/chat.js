// The chat playground: a streamed chat completion per turn, with its stats, and a stop button.
//
// Plain mode sends the whole conversation each turn (POST v1/chat/completions). Session mode
// opens a server-held session (POST v1/sessions) and sends only the new message each turn
// (POST v1/sessions/{id}/chat/completions): the worker keeps the rest, and the stats show how
// much of the prompt came from its cache. A stopped or failed turn is not part of the
// conversation afterwards (a session keeps no part of a turn that did not finish either).

import { api, errorMessage, LockedError } from "./api.js";
import { Answer, emptyResult, readStream } from "./answer.js";

const $ = (id) => document.getElementById(id);

// The sampling fields of the form, as the README's parameter table names them, and how each
// is read. An empty field is left out of the request (the worker's default applies).
const SAMPLING = [
  ["temperature", Number],
  ["top_p", Number],
  ["top_k", parseInt],
  ["min_p", Number],
  ["repeat_penalty", Number],
  ["presence_penalty", Number],
  ["frequency_penalty", Number],
  ["max_tokens", parseInt],
  ["seed", parseInt],
];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Chat {
  constructor() {
    this.form = $("chat-form");
    this.model = $("model");
    this.prompt = $("prompt");
    this.transcript = $("transcript");
    this.sendButton = $("send");
    this.stopButton = $("stop-button");
    this.status = $("chat-status");
    this.sessionMode = $("session-mode");
    this.sessionInfo = $("session-info");
    this.history = []; // the committed messages of plain mode
    this.session = null; // { id, model, turns } in session mode
    this.controller = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.form.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.controller) this.stop();
    });
    this.stopButton.addEventListener("click", () => this.stop());
    $("new-chat").addEventListener("click", () => this.reset("New chat."));
    this.sessionMode.addEventListener("change", () => this.reset());
    this.model.addEventListener("change", () => this.reset());
  }

  setModels(ids) {
    const current = this.model.value;
    const options = ids.map((id) => {
      const option = el("option", "", id);
      option.value = id;
      return option;
    });
    this.model.replaceChildren(...options);
    if (ids.includes(current)) this.model.value = current;
    if (!ids.length) this.setStatus("No model is served right now.");
  }

  clear() {
    this.stop();
    this.model.replaceChildren();
    this.transcript.replaceChildren();
    this.history = [];
    this.session = null;
    this.sessionInfo.textContent = "";
    this.setStatus("");
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  reset(message = "") {
    this.stop();
    this.transcript.replaceChildren();
    this.history = [];
    if (this.session) {
      const path = `v1/sessions/${encodeURIComponent(this.session.id)}`;
      api(path, { method: "DELETE" }).catch(() => {}); // it expires anyway
    }
    this.session = null;
    this.showSession();
    this.setStatus(message);
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  showSession() {
    const session = this.session;
    this.sessionInfo.textContent = session
      ? `Session ${session.id.slice(0, 24)}… on ${session.worker}: ${session.turns} turn(s); ` +
        "each turn sends only its new message."
      : this.sessionMode.checked
        ? "A session opens with the first message."
        : "";
  }

  sampling() {
    const body = {};
    for (const [name, parse] of SAMPLING) {
      const raw = $(name).value.trim();
      if (raw === "") continue;
      const value = parse(raw);
      if (Number.isNaN(value)) throw new Error(`${name} is not a number.`);
      body[name] = value;
    }
    const stops = $("stop").value.split("\n").filter((line) => line !== "");
    if (stops.length) body.stop = stops;
    const tools = $("tools").value.trim();
    if (tools) {
      let parsed;
      try {
        parsed = JSON.parse(tools);
      } catch {
        throw new Error("Tools is not valid JSON.");
      }
      if (!Array.isArray(parsed)) throw new Error("Tools must be a JSON array.");
      if (parsed.length) body.tools = parsed;
      const choice = $("tool_choice").value;
      if (parsed.length && choice) body.tool_choice = choice;
    }
    return body;
  }

  addUser(text) {
    const node = el("article", "msg user");
    node.append(el("h3", "who", "You"), el("div", "body", text));
    this.transcript.append(node);
  }

  setBusy(busy) {
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy;
    this.transcript.setAttribute("aria-busy", String(busy));
  }

  async openSession(model, signal) {
    const response = await api("v1/sessions", {
      method: "POST",
      body: JSON.stringify({ model }),
      signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const opened = await response.json();
    return { id: opened.id, model, turns: 0, worker: opened.worker };
  }

  async send() {
    const text = this.prompt.value.trim();
    const model = this.model.value;
    if (!text || this.controller) return;
    if (!model) {
      this.setStatus("Pick a model first.");
      return;
    }
    let params;
    try {
      params = this.sampling();
    } catch (error) {
      this.setStatus(error.message);
      return;
    }
    const system = $("system").value.trim();
    const user = { role: "user", content: text };
    this.addUser(text);
    this.prompt.value = "";
    const answer = new Answer(this.transcript);
    const controller = new AbortController();
    this.controller = controller;
    this.setBusy(true);
    this.setStatus("Generating…");
    const started = performance.now();
    const result = emptyResult();
    try {
      let path;
      let messages;
      if (this.sessionMode.checked) {
        if (!this.session) this.session = await this.openSession(model, controller.signal);
        messages = this.session.turns === 0 && system ? [{ role: "system", content: system }] : [];
        messages.push(user);
        path = `v1/sessions/${encodeURIComponent(this.session.id)}/chat/completions`;
      } else {
        messages = system ? [{ role: "system", content: system }] : [];
        messages.push(...this.history, user);
        path = "v1/chat/completions";
      }
      const body = {
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        ...params,
      };
      const response = await api(path, {
        method: "POST",
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      await readStream(response, answer, started, result);
      answer.finish(result, "done");
      if (this.session) this.session.turns += 1;
      else this.history.push(user, { role: "assistant", content: result.text });
      this.setStatus(`Done: ${result.usage ? result.usage.completion_tokens : "?"} tokens.`);
    } catch (error) {
      if (controller.signal.aborted) {
        answer.finish(result, "stopped");
        this.setStatus("Stopped.");
      } else if (error instanceof LockedError) {
        answer.fail("The gateway asks for an API key.");
      } else {
        answer.fail(error.message);
        this.setStatus(`Failed: ${error.message}`);
      }
    } finally {
      this.controller = null;
      this.setBusy(false);
      this.showSession();
    }
  }
}
