// pixelmill web UI: talking to the API. No dependencies, no build step.
//
// Every call goes to the ordinary API with `Authorization: Bearer <key>` when the tab has
// a key (sessionStorage: gone when the tab closes; never a cookie, never localStorage).
// A 401 shows the key form and waits for a key, then tries again; nothing the pages show
// comes from anywhere else. EventSource cannot send headers, so job events are read from
// a fetch() stream and parsed here.
"use strict";

export const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "pixelmill-api-key";  // the same key the dashboard uses, in this tab only
export const REUSE_STORAGE = "pixelmill-ui-reuse";  // parameters the gallery hands to the playground
let waitingForKey = null;  // one pending key prompt shared by every call that got a 401

/** The key this tab holds, or "". */
export const currentKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

/** An error the API answered: `message` is the server's, `param` the parameter it names. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || (body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(extra = {}) {
  const all = { ...extra };
  const key = currentKey();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

/** Show the key form (with why) and resolve once the user gave a key. */
function askForKey(reason) {
  const form = $("key-form");
  $("key-reason").textContent = reason;
  form.hidden = false;
  document.body.dataset.needsKey = "true";
  $("api-key").focus();
  if (!waitingForKey) {
    waitingForKey = new Promise((resolve) => {
      form.addEventListener("submit", function onSubmit(event) {
        event.preventDefault();
        const key = $("api-key").value.trim();
        if (!key) return;
        sessionStorage.setItem(KEY_STORAGE, key);
        $("api-key").value = "";
        form.hidden = true;
        delete document.body.dataset.needsKey;
        form.removeEventListener("submit", onSubmit);
        waitingForKey = null;
        resolve();
      });
    });
  }
  return waitingForKey;
}

/** fetch() with the key; a 401 asks for a key and tries again. Returns the Response (ok or not). */
export async function send(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401) return response;
    const body = await response.json().catch(() => null);
    const message = new ApiError(401, body).message;
    await askForKey(currentKey() ? `That key was refused (${message}). Enter another API key:` :
      "This server needs an API key. Enter yours (kept in this tab only):");
  }
}

/** JSON from the API, or an ApiError with the server's message and parameter. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** POST a JSON body. */
export const postJson = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

/**
 * Follow a job's Server-Sent Events: `onEvent(name, data)` for each, until the stream ends
 * (after succeeded, failed or canceled) or `signal` aborts. Comment lines (keep-alives) are skipped.
 */
export async function followEvents(jobId, onEvent, signal) {
  const response = await send(`/v1/jobs/${encodeURIComponent(jobId)}/events`,
    { headers: { Accept: "text/event-stream" }, signal });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

/** Save a response body as a file (for downloads that need the key, e.g. a batch's ZIP). */
export async function download(path, filename) {
  const response = await send(path);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Set up the page's header: the "forget key" button, and the admin links, shown only when
 * this key may use admin routes (GET /v1/keys answers 200 only to admins, and in open mode).
 */
export async function setUpHeader() {
  const forget = $("forget-key");
  forget.hidden = !currentKey();
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    location.reload();
  });
  const response = await send("/v1/keys");
  const admin = response.ok;
  for (const link of document.querySelectorAll("[data-admin]")) link.hidden = !admin;
  forget.hidden = !currentKey();
  document.body.dataset.admin = String(admin);
  return admin;
}

/** "3.2 s", "1 min 5 s". */
export function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/** A short local date and time. */
export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

/** Show `message` in the page's status line (role=status: read out by screen readers). */
export function say(message, kind = "") {
  const line = $("status-line");
  line.textContent = message;
  line.className = `status ${kind}`.trim();
}
