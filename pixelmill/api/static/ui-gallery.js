// pixelmill web UI: the gallery. The current key's jobs from GET /v1/jobs (an admin key:
// every job), newest first, paged with the listing's cursor. Parameters come from each
// image's own infotext (see ui-infotext.js); "use these parameters" hands them to the
// playground through sessionStorage.
//
// Filters: status is the listing's own `status` query. The listing has no model or text
// query, so those are applied here while scanning the listing page after page (up to
// SCAN_LIMIT jobs per click, reading each candidate's infotext for the text): a match on
// a later page is found, not only on the page shown.
"use strict";

import { $, api, download, setUpHeader, say, fmtSeconds, fmtTime, REUSE_STORAGE } from "/ui/assets/ui-api.js";
import { pngParameters, parseInfotext, infotextToParams } from "/ui/assets/ui-infotext.js";

const PAGE = 12;
const SCAN_LIMIT = 240;
const state = { cursors: [null], index: 0, next: null, gpuHour: null, infos: new Map() };

/** The infotext of a job's first image ({text, params} or null), read once per job. */
function infoOf(job) {
  if (!job.results.length) return Promise.resolve(null);
  if (!state.infos.has(job.id)) {
    state.infos.set(job.id, fetch(job.results[0].url)
      .then((r) => (r.ok ? r.arrayBuffer() : null))
      .then((buffer) => (buffer ? pngParameters(buffer) : null))
      .then((text) => (text ? { text, params: infotextToParams(parseInfotext(text)) } : null))
      .catch(() => null));
  }
  return state.infos.get(job.id);
}

async function matches(job, model, text) {
  if (model && job.model !== model) return false;
  if (!text) return true;
  const needle = text.toLowerCase();
  if ([job.id, job.model || "", job.batch_id || ""].join("\n").toLowerCase().includes(needle)) return true;
  const info = await infoOf(job);  // only when the job view's own fields do not match: it downloads an image
  return Boolean(info && info.text.toLowerCase().includes(needle));
}

/** Jobs from `cursor` on that pass the filters: {jobs, next, scanned}. */
async function collect(cursor) {
  const status = $("filter-status").value, model = $("filter-model").value, text = $("filter-text").value.trim();
  const jobs = [];
  let scanned = 0;
  do {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (status) query.set("status", status);
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/v1/jobs?${query}`);
    const passed = await Promise.all(page.data.map((job) => matches(job, model, text)));
    jobs.push(...page.data.filter((_, i) => passed[i]));
    scanned += page.data.length;
    cursor = page.next_cursor;
  } while (cursor && jobs.length < PAGE && scanned < SCAN_LIMIT);
  return { jobs, next: cursor, scanned, filtered: Boolean(model || text) };
}

function row(dl, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
  return dd;
}

function card(job) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.jobId = job.id;
  li.dataset.status = job.status;
  const images = document.createElement("div");
  images.className = "thumbs";
  for (const [i, result] of job.results.entries()) {
    const figure = document.createElement("figure");
    const img = Object.assign(document.createElement("img"),
      { src: result.url, alt: `image ${i + 1} of job ${job.id}, seed ${result.seed}`, loading: "lazy" });
    const caption = document.createElement("figcaption");
    caption.append(`seed ${result.seed} · `, Object.assign(document.createElement("a"),
      { href: result.url, download: `${job.id}-${result.seed}.png`, textContent: "download" }));
    figure.append(img, caption);
    images.append(figure);
  }
  if (!job.results.length) images.textContent = job.status === "failed" && job.error ? job.error.message : `no images (${job.status})`;
  const title = document.createElement("h2");
  title.className = "card-title";
  title.textContent = job.status === "succeeded" ? "…" : `${job.status} job`;
  const dl = document.createElement("dl");
  row(dl, "status", job.status);
  row(dl, "model", job.model || "–");
  row(dl, "served by", job.route === "local" || !job.route ? "this server" : `upstream: ${job.route}`).dataset.route = job.route || "local";
  row(dl, "size", job.width ? `${job.width} × ${job.height}` : "–");
  row(dl, "steps", String(job.steps));
  row(dl, "created", fmtTime(job.created_at));
  const took = job.started_at && job.finished_at ? (new Date(job.finished_at) - new Date(job.started_at)) / 1000 : null;
  row(dl, "run time", fmtSeconds(took));
  row(dl, "GPU time", job.gpu_seconds === null ? "–" : fmtSeconds(job.gpu_seconds));
  if (state.gpuHour !== null && job.gpu_seconds !== null) {
    row(dl, "cost", `$${(job.gpu_seconds * state.gpuHour / 3600).toFixed(5)}`);
  }
  const details = document.createElement("details");
  details.innerHTML = "<summary>Parameters (infotext)</summary><pre class='infotext'></pre>";
  const actions = document.createElement("div");
  actions.className = "card-actions";
  const reuse = Object.assign(document.createElement("button"), { type: "button", textContent: "Use these parameters", className: "reuse" });
  reuse.addEventListener("click", () => useParameters(job));
  actions.append(reuse);
  if (job.batch_id) {
    const zip = Object.assign(document.createElement("button"), { type: "button", textContent: "Batch ZIP" });
    zip.addEventListener("click", () => download(`/v1/batches/${job.batch_id}/archive?partial=true`, `${job.batch_id}.zip`)
      .catch((error) => say(error.message, "error")));
    const only = Object.assign(document.createElement("button"), { type: "button", textContent: "Whole batch" });
    only.addEventListener("click", () => {  // the batch's jobs: its id is part of what the text filter reads
      $("filter-text").value = job.batch_id;
      $("filter-status").value = "";
      state.cursors = [null];
      show(0);
    });
    actions.append(zip, only);
  }
  li.append(title, images, dl, details, actions);
  infoOf(job).then((info) => {
    const pre = details.querySelector("pre");
    if (info) {
      title.textContent = info.params.prompt || "(no prompt)";
      pre.textContent = info.text;
    } else {
      if (job.status === "succeeded") title.textContent = "(parameters not readable)";
      pre.textContent = job.results.length ? "This image carries no PNG infotext (JPEG/WebP results keep it in EXIF)." : "No image.";
    }
    li.dataset.infotext = info ? "yes" : "no";
  });
  return li;
}

async function useParameters(job) {
  const info = await infoOf(job);
  const params = info ? { ...info.params } : {};
  // The job view's resolved values stand in for what the infotext did not say.
  params.model ??= job.model || undefined;
  if (!params.width && job.width) Object.assign(params, { width: job.width, height: job.height });
  params.steps ??= job.steps;
  if (job.results.length) params.seed = job.results[0].seed;
  sessionStorage.setItem(REUSE_STORAGE, JSON.stringify(params));
  location.href = "/ui";
}

async function show(index) {
  const list = $("gallery-list");
  list.setAttribute("aria-busy", "true");
  say("Loading jobs…");
  try {
    const { jobs, next, scanned, filtered } = await collect(state.cursors[index]);
    state.index = index;
    state.cursors[index + 1] = next;
    state.cursors.length = index + 2;
    list.replaceChildren(...jobs.map(card));
    $("gallery-empty").hidden = jobs.length > 0;
    $("older").disabled = !next;
    $("newer").disabled = index === 0;
    $("page-label").textContent = `page ${index + 1}`;
    $("filter-note").textContent = filtered ? `Model and text filters scanned ${scanned} jobs of the listing` +
      (next ? "; “Older” scans further." : ", to its end.") : "";
    say(`${jobs.length} job${jobs.length === 1 ? "" : "s"} shown.`);
  } catch (error) {
    say(`Could not list jobs: ${error.message}`, "error");
  } finally {
    list.removeAttribute("aria-busy");
    document.body.dataset.ready = "true";
  }
}

async function main() {
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); state.cursors = [null]; show(0); });
  $("older").addEventListener("click", () => show(state.index + 1));
  $("newer").addEventListener("click", () => show(state.index - 1));
  try {
    const admin = await setUpHeader();
    const models = await api("/v1/models");
    for (const model of models.data) $("filter-model").add(new Option(model.id, model.id));
    if (admin) {  // the price of a GPU-hour is the admin's cost configuration
      state.gpuHour = await api("/v1/cost/summary").then((s) => s.self_hosted.gpu_hour).catch(() => null);
    }
  } catch (error) {
    say(error.message, "error");
  }
  await show(0);
}

main();
