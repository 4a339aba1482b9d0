// pixelmill web UI: the playground. Composes a native job body (POST /v1/jobs), follows
// the job's events (queued, started, progress, preview, then succeeded/failed/canceled),
// cancels, and shows the images. Every default and limit is the server's: a field left
// empty is left out of the body, and errors show the server's message next to the field
// it names.
"use strict";

import { $, api, postJson, followEvents, setUpHeader, say, fmtSeconds, ApiError, REUSE_STORAGE } from "/ui/assets/ui-api.js";
import { MaskEditor } from "/ui/assets/ui-mask.js";

const state = { lastSeed: null, config: null, mask: null, following: new Map() };

// ---- the form ----------------------------------------------------------------------------------

const numberOrNull = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
const readFile = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

function seedValue() {
  const mode = document.querySelector("input[name=seed-mode]:checked").value;
  if (mode === "fixed") return numberOrNull("seed") ?? -1;
  if (mode === "reuse" && state.lastSeed !== null) return state.lastSeed;
  return -1;
}

/** The job body the form describes (only the fields the user set). */
async function requestBody() {
  const body = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, seed: seedValue(),
                 n: numberOrNull("n") ?? 1 };
  if ($("model").value) body.model = $("model").value;
  if ($("size-preset").value) Object.assign(body, { width: numberOrNull("width"), height: numberOrNull("height") });
  for (const id of ["steps", "guidance"]) if (numberOrNull(id) !== null) body[id] = numberOrNull(id);
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  const loras = [...document.querySelectorAll("#lora-list li")].map((li) => ({
    name: li.dataset.name, weight: Number(li.querySelector("input").value) }));
  if (loras.length) body.loras = loras;
  if (state.mask.image) {
    const pad = Math.max(0, numberOrNull("outpaint") ?? 0);
    const { image, mask } = state.mask.export(pad);
    body.image = image;
    body.strength = Number($("strength").value);
    body.mode = mask ? "inpaint" : "img2img";
    if (mask) body.mask = mask;
  }
  if ($("control-model").value) {
    const file = $("control-image").files[0];
    if (!file) throw new ApiError(400, { error: { message: "choose a control image for the ControlNet", param: "control-image" } });
    body.controlnets = [{ name: $("control-model").value, image: await readFile(file),
                          preprocess: $("control-preprocess").value, scale: Number($("control-scale").value) }];
  }
  return body;
}

/** Put parameters (from the gallery's "use these parameters") into the form. */
export function fillForm(params) {
  const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = String(value); };
  set("prompt", params.prompt);
  set("negative_prompt", params.negative_prompt);
  if (params.model) ensureOption($("model"), params.model);
  for (const id of ["steps", "guidance"]) set(id, params[id]);
  if (params.scheduler) ensureOption($("scheduler"), params.scheduler);
  if (params.width && params.height) {
    const preset = `${params.width}x${params.height}`;
    ensureOption($("size-preset"), [...$("size-preset").options].some((o) => o.value === preset) ? preset : "custom");
    sizeChanged();
    set("width", params.width);
    set("height", params.height);
  }
  if (params.seed !== undefined) {
    document.querySelector("input[name=seed-mode][value=fixed]").checked = true;
    seedModeChanged();
    set("seed", params.seed);
  }
  $("lora-list").replaceChildren();
  for (const lora of params.loras || []) addLora(lora.name, lora.weight);
}

/** Select `value`, or the option that is its A1111 label ("Euler a" is euler_a), or add it. */
function ensureOption(select, value) {
  const plain = (text) => text.toLowerCase().replace(/\+\+/g, "pp").replace(/[^a-z0-9]/g, "");
  const same = [...select.options].find((o) => o.value === value) ||
    [...select.options].find((o) => o.value && plain(o.value) === plain(value));
  if (same) value = same.value;
  else select.add(new Option(value, value));
  select.value = value;
}

function sizeChanged() {
  const preset = $("size-preset").value;
  const custom = preset === "custom";
  for (const id of ["width", "height"]) $(id).disabled = !custom;
  if (preset && !custom) [$("width").value, $("height").value] = preset.split("x");
  if (!preset) $("width").value = $("height").value = "";
}

function seedModeChanged() {
  $("seed").disabled = document.querySelector("input[name=seed-mode]:checked").value !== "fixed";
}

function addLora(name, weight = 1) {
  if (!name || document.querySelector(`#lora-list li[data-name="${CSS.escape(name)}"]`)) return;
  const li = document.createElement("li");
  li.dataset.name = name;
  const label = document.createElement("label");
  label.append(`${name} weight `);
  const input = Object.assign(document.createElement("input"),
    { type: "number", min: "-2", max: "2", step: "0.05", value: String(weight) });
  label.append(input);
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove LoRA ${name}`);
  remove.addEventListener("click", () => li.remove());
  li.append(label, remove);
  $("lora-list").append(li);
}

function showFieldError(error) {
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  say(error.param ? `${error.message} (parameter: ${error.param})` : error.message, "error");
  const field = error.param && $(error.param.split(/[.[]/)[0]);
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

// ---- jobs --------------------------------------------------------------------------------------

function jobCard(job, body) {
  const li = document.createElement("li");
  li.className = "job";
  li.dataset.jobId = job.id;
  li.dataset.events = "";
  li.innerHTML = `
    <div class="job-head"><strong class="job-prompt"></strong> <span class="job-status" aria-live="polite"></span></div>
    <progress max="1" value="0" aria-label="progress"></progress>
    <img class="job-preview" alt="live preview" hidden>
    <div class="job-actions"><button type="button" class="cancel">Cancel</button></div>
    <p class="job-error" hidden></p>
    <div class="job-results"></div>`;
  li.querySelector(".job-prompt").textContent = body.prompt.length > 80 ? body.prompt.slice(0, 77) + "…" : body.prompt;
  li.querySelector(".cancel").addEventListener("click", () => cancelJob(job.id, li));
  $("job-list").prepend(li);
  $("jobs-empty").hidden = true;
  return li;
}

const setStatus = (li, status, text) => {
  li.dataset.status = status;
  li.querySelector(".job-status").textContent = text;
};

function onEvent(li, name, data) {
  li.dataset.events += (li.dataset.events ? " " : "") + name;
  const bar = li.querySelector("progress");
  if (name === "queued") setStatus(li, "queued", data.position ? `queued (#${data.position})` : "queued");
  else if (name === "started") setStatus(li, "running", "running");
  else if (name === "progress" || name === "preview") {
    if (data.total) { bar.max = data.total; bar.value = data.step; }
    setStatus(li, "running", `step ${data.step} of ${data.total}`);
    if (name === "preview" && data.image) {
      const img = li.querySelector(".job-preview");
      img.src = data.image;
      img.hidden = false;
    }
  } else if (["succeeded", "failed", "canceled"].includes(name)) finish(li, data);
}

function finish(li, job) {
  li.querySelector(".cancel").hidden = true;
  li.querySelector(".job-preview").hidden = true;
  const bar = li.querySelector("progress");
  if (job.status === "succeeded") {
    bar.max = 1; bar.value = 1;
    const took = job.started_at && job.finished_at ? (new Date(job.finished_at) - new Date(job.started_at)) / 1000 : null;
    setStatus(li, "succeeded", `done in ${fmtSeconds(took)}`);
    const results = li.querySelector(".job-results");
    results.replaceChildren(...job.results.map((result, i) => resultFigure(result, i, job)));
    state.lastSeed = job.results.length ? job.results[0].seed : state.lastSeed;
    $("last-seed").textContent = String(state.lastSeed);
    $("seed-reuse").disabled = state.lastSeed === null;
  } else if (job.status === "failed") {
    setStatus(li, "failed", "failed");
    const error = li.querySelector(".job-error");
    error.textContent = job.error ? job.error.message : "the job failed";
    error.hidden = false;
  } else {
    setStatus(li, "canceled", "canceled");
  }
  say(`Job ${job.id}: ${job.status}.`);
}

function resultFigure(result, index, job) {
  const figure = document.createElement("figure");
  const link = Object.assign(document.createElement("a"), { href: result.url, target: "_blank", rel: "noopener" });
  const img = Object.assign(document.createElement("img"),
    { src: result.url, alt: `image ${index + 1} of job ${job.id}, seed ${result.seed}`, loading: "lazy" });
  link.append(img);
  const caption = document.createElement("figcaption");
  caption.textContent = `seed ${result.seed} · `;
  const save = Object.assign(document.createElement("a"),
    { href: result.url, download: `${job.id}-${result.seed}.png`, textContent: "download" });
  caption.append(save);
  figure.append(link, caption);
  return figure;
}

async function follow(li, jobId) {
  const controller = new AbortController();
  state.following.set(jobId, controller);
  try {
    await followEvents(jobId, (name, data) => onEvent(li, name, data), controller.signal);
  } catch (error) {
    if (error.name !== "AbortError") say(`Lost the events of job ${jobId}: ${error.message}`, "error");
  } finally {
    state.following.delete(jobId);
  }
  if (!["succeeded", "failed", "canceled"].includes(li.dataset.status)) {
    try {  // the stream ended early (network, server restart): read the job once
      const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
      if (["succeeded", "failed", "canceled"].includes(job.status)) finish(li, job);
      else setStatus(li, job.status, `${job.status} (live updates lost: see the gallery)`);
    } catch (error) {
      say(`Job ${jobId}: ${error.message}`, "error");
    }
  }
}

async function cancelJob(jobId, li) {
  li.querySelector(".cancel").disabled = true;
  try {
    await postJson(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, {});
    setStatus(li, "canceling", "canceling…");
  } catch (error) {
    say(error.message, "error");  // 409: it already succeeded or failed; the event stream shows which
  }
}

async function submit(event) {
  event.preventDefault();
  if (!$("prompt").value.trim() && !state.mask.image) {
    showFieldError({ message: "write a prompt first", param: "prompt" });
    return;
  }
  const button = $("generate");
  button.disabled = true;
  try {
    const body = await requestBody();
    const job = await postJson("/v1/jobs", body);
    for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    say(`Job ${job.id} submitted.`);
    follow(jobCard(job, body), job.id);
  } catch (error) {
    showFieldError(error);
  } finally {
    button.disabled = false;
  }
}

// ---- start -------------------------------------------------------------------------------------

async function loadLists() {
  const [config, models, loras, controls] = await Promise.all([
    fetch("/ui/config.json").then((r) => r.json()), api("/v1/models"), api("/v1/loras"), api("/v1/controlnets")]);
  state.config = config;
  for (const name of config.schedulers) $("scheduler").add(new Option(name, name));
  for (const model of models.data.filter((m) => (m.kind || "checkpoint") === "checkpoint")) {
    $("model").add(new Option(model.id, model.id));
  }
  for (const lora of loras.data.filter((l) => l.valid !== false)) {
    const fits = lora.compatible_with && lora.compatible_with.length ? ` (fits ${lora.compatible_with.join(", ")})` : "";
    $("lora-pick").add(new Option(lora.id + fits, lora.id));
  }
  for (const control of controls.data) $("control-model").add(new Option(control.id, control.id));
  const limits = config.limits;
  $("steps").max = limits.max_steps;
  $("steps").placeholder = `default (${config.default_steps})`;
  $("guidance").max = limits.max_guidance;
  $("n").max = limits.max_n;
  for (const id of ["width", "height"]) Object.assign($(id), { min: limits.min_side, max: limits.max_side });
}

async function main() {
  state.mask = new MaskEditor($("mask-canvas"));
  window.pixelmillMask = state.mask;  // for tests and automation: paint strokes programmatically
  $("generate-form").addEventListener("submit", submit);
  $("size-preset").addEventListener("change", sizeChanged);
  for (const radio of document.querySelectorAll("input[name=seed-mode]")) radio.addEventListener("change", seedModeChanged);
  $("lora-add").addEventListener("click", () => addLora($("lora-pick").value));
  $("strength").addEventListener("input", () => { $("strength-out").textContent = $("strength").value; });
  $("mask-on").addEventListener("change", () => { state.mask.enabled = $("mask-on").checked; });
  for (const radio of document.querySelectorAll("input[name=mask-tool]")) {
    radio.addEventListener("change", () => { state.mask.tool = radio.value; });
  }
  $("brush-size").addEventListener("input", () => { state.mask.size = Number($("brush-size").value); });
  $("mask-clear").addEventListener("click", () => state.mask.clear());
  $("init-image").addEventListener("change", async () => {
    const file = $("init-image").files[0];
    if (file) await state.mask.load(file);
    $("init-tools").hidden = !file;
  });
  try {
    await setUpHeader();
    await loadLists();
    const handed = sessionStorage.getItem(REUSE_STORAGE);
    if (handed) {
      sessionStorage.removeItem(REUSE_STORAGE);
      fillForm(JSON.parse(handed));
      say("Parameters filled in from the gallery.");
    }
  } catch (error) {
    say(`Could not load this server's models: ${error.message}`, "error");
  }
  document.body.dataset.ready = "true";
}

main();
