// Calls to the gateway's API, with the API key the user gave (kept in this tab only).
//
// The key lives in sessionStorage (or, where that is unavailable, in memory): never in
// localStorage, a cookie or a URL. Every call sends it as "Authorization: Bearer <key>".
// A 401 answer fires "llamagrid:locked" on window, so the page can ask for the key again.

const KEY_NAME = "llamagrid.apiKey";
let memoryKey = "";

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return memoryKey;
  }
}

export function setKey(key) {
  memoryKey = key;
  try {
    sessionStorage.setItem(KEY_NAME, key);
  } catch {
    // Storage refused (a privacy mode): the key stays in memory until the tab reloads.
  }
}

export function clearKey() {
  memoryKey = "";
  try {
    sessionStorage.removeItem(KEY_NAME);
  } catch {
    // Nothing stored.
  }
}

export class LockedError extends Error {
  constructor() {
    super("The gateway needs an API key.");
    this.name = "LockedError";
  }
}

// fetch() on the gateway's own origin, with the key; `path` is relative to the page ("v1/...").
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (options.body !== undefined && !headers.has("Content-Type")) {
    headers.set("Content-Type", "application/json");
  }
  const response = await fetch(path, {
    ...options,
    headers,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (response.status === 401) {
    window.dispatchEvent(new CustomEvent("llamagrid:locked"));
    throw new LockedError();
  }
  return response;
}

// The message of an error answer in OpenAI's shape (or its status line).
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      return `${response.status}: ${body.error.message}`;
    }
  } catch {
    // Not JSON.
  }
  return `${response.status} ${response.statusText}`.trim();
}

// GET a JSON document; throws on any answer but 200.
export async function getJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}
