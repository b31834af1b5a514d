// The fleet view: GET v1/console/fleet every POLL_MS while the view is shown, drawn as one table
// of workers per model, small charts of the last minutes, and the recent requests.

import { getJson, LockedError } from "./api.js";
import { barChart } from "./charts.js";

const POLL_MS = 1500;
const RECENT_SHOWN = 50;
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function percent(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}%` : "–";
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

function cell(row, text, name) {
  const td = el("td", "", text);
  if (name) td.dataset.col = name;
  row.append(td);
  return td;
}

const WORKER_COLUMNS = [
  "worker",
  "state",
  "breaker",
  "slots busy / total",
  "queue",
  "KV used",
  "cached tokens",
  "in flight",
  "sessions",
];

function workerTable(caption, workers) {
  const wrap = el("div", "table-wrap");
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", caption);
  const table = el("table", "workers");
  table.append(el("caption", "", caption));
  const head = el("tr");
  for (const name of WORKER_COLUMNS) {
    const th = el("th", "", name);
    th.scope = "col";
    head.append(th);
  }
  table.append(el("thead"));
  table.tHead.append(head);
  const body = el("tbody");
  for (const worker of workers) {
    const row = el("tr");
    row.dataset.worker = worker.address;
    row.dataset.state = worker.state;
    const name = el("th", "", worker.address);
    name.scope = "row";
    row.append(name);
    const state = cell(row, "", "state");
    state.append(el("span", `badge ${worker.state}`, worker.state));
    cell(row, worker.failures ? `${worker.breaker} (${worker.failures} failed)` : worker.breaker, "breaker");
    const busy = worker.slots_busy === null ? "?" : worker.slots_busy;
    cell(row, `${busy} / ${worker.slots_total || "?"}`, "slots");
    const queue = worker.queued === null ? "–" : `${worker.queued} / ${worker.max_queue}`;
    cell(row, queue, "queue");
    const kv = worker.kv_cells_total ? percent(worker.kv_cells_used, worker.kv_cells_total) : "–";
    cell(row, kv, "kv");
    const ratio = worker.cached_ratio === null ? "–" : `${Math.round(100 * worker.cached_ratio)}%`;
    cell(row, `${ratio} of ${worker.prompt_tokens}`, "cached");
    cell(row, worker.in_flight, "in-flight");
    cell(row, worker.sessions, "sessions");
    body.append(row);
  }
  table.append(body);
  wrap.append(table);
  return wrap;
}

function modelSections(fleet) {
  const byAddress = new Map(fleet.workers.map((worker) => [worker.address, worker]));
  const sections = fleet.models.map((model) => {
    const section = el("section", "model");
    section.dataset.model = model.id;
    const title = el("h3", "", model.id);
    title.append(" ", el("span", "hint", `policy ${model.policy}`));
    section.append(title);
    const workers = model.workers.map((address) => byAddress.get(address)).filter(Boolean);
    section.append(workerTable(`Workers of ${model.id}`, workers));
    return section;
  });
  const unlisted = fleet.workers.filter((worker) => worker.models.length === 0);
  if (unlisted.length) {
    const section = el("section", "model");
    section.append(el("h3", "", "Workers with no model listed yet"));
    section.append(workerTable("Workers with no model listed yet", unlisted));
    sections.push(section);
  }
  if (!sections.length) sections.push(el("p", "hint", "The gateway knows no worker yet."));
  return sections;
}

function recentRows(recent) {
  return recent.slice(0, RECENT_SHOWN).map((request) => {
    const row = el("tr");
    row.dataset.status = request.status;
    cell(row, new Date(request.time * 1000).toLocaleTimeString(), "time");
    cell(row, request.model, "model");
    cell(row, `${request.method} ${request.route}`, "route");
    cell(row, request.worker || "–", "worker");
    const why = request.attempts > 1 ? `${request.reason} (${request.attempts} tries)` : request.reason;
    cell(row, why || "–", "reason");
    cell(row, request.status, "status");
    cell(row, ms(request.ttft_ms), "ttft");
    const tokens = `${request.prompt_tokens} / ${request.cached_tokens} / ${request.completion_tokens}`;
    cell(row, tokens, "tokens");
    cell(row, ms(request.duration_ms), "duration");
    return row;
  });
}

function charts(series) {
  const points = series.points;
  return [
    barChart("tokens", "tok/s", points.map((p) => p.tokens_per_s), "", series.interval_s),
    barChart("ttft", "TTFT", points.map((p) => p.ttft_ms), " ms", series.interval_s),
    barChart("rate-limited", "429s", points.map((p) => p.rate_limited), "", series.interval_s),
  ];
}

export class FleetView {
  constructor() {
    this.status = $("fleet-status");
    this.updated = $("fleet-updated");
    this.models = $("fleet-models");
    this.charts = $("charts");
    this.recent = document.querySelector("#recent tbody");
    this.timer = null;
    this.controller = null;
    this.active = false;
    document.addEventListener("visibilitychange", () => this.schedule(0));
  }

  start() {
    this.active = true;
    this.schedule(0);
  }

  stop() {
    this.active = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.controller) this.controller.abort();
  }

  clear() {
    this.stop();
    this.models.replaceChildren();
    this.charts.replaceChildren();
    this.recent.replaceChildren();
    this.status.textContent = "";
    this.updated.textContent = "";
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.active || document.hidden) return;
    this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    const controller = new AbortController();
    this.controller = controller;
    try {
      const fleet = await getJson("v1/console/fleet", { signal: controller.signal });
      if (!this.active) return;
      this.render(fleet);
    } catch (error) {
      if (error instanceof LockedError) {
        this.clear();
        return;
      }
      if (!controller.signal.aborted) this.updated.textContent = `Not updated: ${error.message}`;
    } finally {
      if (this.controller === controller) this.controller = null;
    }
    this.schedule(POLL_MS);
  }

  render(fleet) {
    const up = fleet.workers.filter((worker) => worker.state === "up").length;
    const summary = `${fleet.workers.length} worker(s), ${up} up.`;
    if (this.status.textContent !== summary) this.status.textContent = summary; // announced
    const when = new Date(fleet.time * 1000).toLocaleTimeString();
    this.updated.textContent = `Updated ${when}, every ${POLL_MS / 1000} s.`;
    this.charts.replaceChildren(...charts(fleet.series));
    this.models.replaceChildren(...modelSections(fleet));
    this.recent.replaceChildren(...recentRows(fleet.recent));
  }
}
