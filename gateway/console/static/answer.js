// One answer of the chat: its stream read from the gateway's SSE, and how it is shown (text
// rendered as Markdown, thinking, tool calls, and its stats).

import { renderMarkdown } from "./markdown.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// One answer in the transcript: its text (rendered as Markdown), tool calls, thinking, stats.
export class Answer {
  constructor(transcript) {
    this.node = el("article", "msg assistant");
    this.node.setAttribute("aria-busy", "true");
    this.node.append(el("h3", "who", "Assistant"));
    this.thinking = el("details", "thinking");
    this.thinking.hidden = true;
    this.thinking.append(el("summary", "", "Thinking"), el("pre", "thinking-text"));
    this.body = el("div", "body md");
    this.tools = el("div", "tool-calls");
    this.tools.hidden = true;
    this.stats = el("dl", "stats");
    this.node.append(this.thinking, this.body, this.tools, this.stats);
    transcript.append(this.node);
    this.text = "";
    this.pending = false;
    this.node.scrollIntoView({ block: "end" });
  }

  setText(text) {
    this.text = text;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    this.body.replaceChildren(renderMarkdown(this.text));
    this.node.scrollIntoView({ block: "end" });
  }

  setThinking(text) {
    this.thinking.hidden = false;
    this.thinking.querySelector("pre").textContent = text;
  }

  setToolCalls(calls) {
    this.tools.hidden = calls.length === 0;
    const items = calls.map((call) => {
      const item = el("div", "tool-call");
      item.append(el("span", "tool-label", "Tool call"), " ");
      item.append(el("code", "tool-name", call.function.name || "?"));
      item.append(el("pre", "tool-args", call.function.arguments || ""));
      return item;
    });
    this.tools.replaceChildren(...items);
  }

  stat(name, label, value) {
    const row = el("div", "stat");
    const term = el("dt", "", label);
    const data = el("dd", "", value);
    data.dataset.stat = name;
    row.append(term, data);
    this.stats.append(row);
  }

  finish(result, state) {
    this.render();
    this.node.removeAttribute("aria-busy");
    this.node.dataset.state = state;
    this.stats.replaceChildren();
    const usage = result.usage;
    if (result.firstMs !== null) this.stat("ttft", "TTFT", formatMs(result.firstMs));
    if (usage && result.firstMs !== null && usage.completion_tokens > 1) {
      const seconds = (result.endMs - result.firstMs) / 1000;
      const rate = seconds > 0 ? (usage.completion_tokens - 1) / seconds : 0;
      this.stat("rate", "tok/s", rate.toFixed(1));
    }
    if (usage) {
      const cached = (usage.prompt_tokens_details || {}).cached_tokens || 0;
      this.stat("prompt", "prompt", String(usage.prompt_tokens));
      this.stat("cached", "cached", String(cached));
      this.stat("completion", "completion", String(usage.completion_tokens));
    }
    if (result.worker) this.stat("worker", "worker", result.worker);
    if (result.route) this.stat("route", "route", result.route);
    if (result.attempts && result.attempts !== "1") this.stat("attempts", "attempts", result.attempts);
    if (result.finish) this.stat("finish", "finish", result.finish);
    if (state !== "done") this.stat("state", "state", state);
  }

  fail(message) {
    this.node.removeAttribute("aria-busy");
    this.node.dataset.state = "error";
    this.node.append(el("p", "error", message));
  }
}

// What one answer gathered (filled as its stream comes in, so a stopped one keeps its part).
export function emptyResult() {
  return {
    text: "",
    thinking: "",
    toolCalls: [],
    usage: null,
    finish: "",
    firstMs: null,
    endMs: null,
    worker: "",
    route: "",
    attempts: "",
  };
}

// Read an SSE response of chat completion chunks into `result` and `answer`.
export async function readStream(response, answer, started, result) {
  result.worker = response.headers.get("X-Llamagrid-Worker") || "";
  result.route = response.headers.get("X-Llamagrid-Route") || "";
  result.attempts = response.headers.get("X-Llamagrid-Attempts") || "";
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a comment (": keep-alive") or an empty event
      if (data === "[DONE]") {
        result.endMs = performance.now() - started;
        return;
      }
      take(JSON.parse(data), result, answer, started);
    }
  }
  throw new Error("The stream ended before it was complete.");
}

function take(chunk, result, answer, started) {
  if (chunk.error) throw new Error(chunk.error.message || "The stream failed.");
  if (chunk.usage) result.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    const output = delta.content || delta.reasoning_content || delta.tool_calls;
    if (output && result.firstMs === null) result.firstMs = performance.now() - started;
    if (delta.content) {
      result.text += delta.content;
      answer.setText(result.text);
    }
    if (delta.reasoning_content) {
      result.thinking += delta.reasoning_content;
      answer.setThinking(result.thinking);
    }
    for (const call of delta.tool_calls || []) {
      const index = call.index ?? result.toolCalls.length;
      const known = (result.toolCalls[index] ||= { id: "", function: { name: "", arguments: "" } });
      if (call.id) known.id = call.id;
      if (call.function && call.function.name) known.function.name += call.function.name;
      if (call.function && call.function.arguments) {
        known.function.arguments += call.function.arguments;
      }
      answer.setToolCalls(result.toolCalls.filter(Boolean));
    }
    if (choice.finish_reason) result.finish = choice.finish_reason;
  }
}
