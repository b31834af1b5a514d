// The console's entry point: the key prompt, the two views (#chat and #fleet) and their tabs.
//
// Nothing is shown until the gateway answers GET v1/models: with no API key configured it does
// at once; with one, the page asks for the key, and any 401 later locks the page again and
// clears what it showed.

import { clearKey, getJson, getKey, LockedError, setKey } from "./api.js";
import { Chat } from "./chat.js";
import { FleetView } from "./fleet.js";

const $ = (id) => document.getElementById(id);
const RETRY_MS = 3000;

const chat = new Chat();
const fleet = new FleetView();
const views = { chat: $("chat-view"), fleet: $("fleet-view") };
const tabs = { chat: $("tab-chat"), fleet: $("tab-fleet") };
let unlocked = false;
let retry = null;

function setStatus(text) {
  $("app-status").textContent = text;
}

function currentView() {
  return location.hash === "#fleet" ? "fleet" : "chat";
}

function show() {
  const name = currentView();
  for (const [key, view] of Object.entries(views)) {
    view.hidden = !unlocked || key !== name;
    if (key === name) tabs[key].setAttribute("aria-current", "page");
    else tabs[key].removeAttribute("aria-current");
  }
  $("key-view").hidden = unlocked;
  $("forget-key").hidden = !getKey();
  if (unlocked && name === "fleet") fleet.start();
  else fleet.stop();
}

function lock(message) {
  const wasUnlocked = unlocked;
  unlocked = false;
  chat.clear();
  fleet.clear();
  $("key-error").textContent = message;
  show();
  if (wasUnlocked || message) $("key-input").focus();
}

async function unlock() {
  clearTimeout(retry);
  try {
    const models = await getJson("v1/models");
    unlocked = true;
    setStatus("");
    $("key-error").textContent = "";
    chat.setModels(models.data.map((model) => model.id));
    show();
  } catch (error) {
    if (!(error instanceof LockedError)) {
      setStatus(`The gateway did not answer (${error.message}); trying again.`);
      retry = setTimeout(unlock, RETRY_MS);
    }
    // A 401: the "llamagrid:locked" listener has locked the page.
  }
}

window.addEventListener("llamagrid:locked", () => {
  const refused = getKey() !== "";
  clearKey();
  lock(refused ? "The gateway refused that key." : "");
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("key-input");
  const key = input.value.trim();
  input.value = "";
  if (!key) return;
  setKey(key);
  unlock();
});

$("forget-key").addEventListener("click", () => {
  clearKey();
  lock("");
  unlock();
});

window.addEventListener("hashchange", () => {
  show();
  if (unlocked && currentView() === "chat") unlock(); // refresh the model list
});

show();
unlock();
