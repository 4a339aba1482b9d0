// pixelmill build-versus-buy dashboard. No dependencies, no build step.
//
// The page computes no verdict: /v1/cost/summary answers with a `scenario` (verdict, N*,
// r at the chosen steps) for the page's exact inputs, computed by pixelmill.cost like
// `pixelmill cost report`. A slider only changes an input and asks again. The inputs keep
// the server's exact values until the user moves a control: a slider's position never
// rounds a measured price (the issue was $0.000613 shown and used as $0.0006).
"use strict";

const $ = (id) => document.getElementById(id);
const DEFAULTS = { price: 0.03, gpuHour: 1.2, rate: 600, overhead: 2000, steps: 30, volume: 0 };
const state = {
  inputs: { ...DEFAULTS },  // exactly what the next what-if request sends
  reference: "",            // the hosted offer the verdict compares with
  scenario: null,           // the server's answer for `inputs`
  online: false,            // whether this page may ask the server (false: needs a key)
  seq: 0, timer: null,
};

// ---- formatting for people ----------------------------------------------------------------

const fmtCount = (v) => Math.round(v).toLocaleString("en-US");
const fmtMoney = (v) => "$" + (Math.abs(v) >= 100 ? fmtCount(v) : v.toFixed(2));
const fmtRate = (v) => (v >= 100 ? fmtCount(v) : v.toFixed(1));
/** A price per image: four significant digits, no trailing zeros ($0.000613, $0.03). */
function fmtPrice(v) {
  if (v === 0) return "$0";
  if (Math.abs(v) < 1e-6) return "$" + v.toExponential(2);
  return "$" + String(Number(v.toPrecision(4)));
}
/** An axis tick: 100, 1k, 10k, 1M, 1B (log axes only have powers of ten). */
function fmtCompact(v) {
  for (const [size, suffix] of [[1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
    if (v >= size) return String(Number((v / size).toPrecision(3))) + suffix;
  }
  return String(Number(v.toPrecision(3)));
}
const roundTo = (v, step) => Math.round(v / step) * step;
const sig3 = (v) => Number(v.toPrecision(3));

// ---- controls: exact inputs, formatted outputs ------------------------------------------------

/** Put `inputs` into the controls and outputs; `data-value` carries each exact number. */
function showInputs() {
  const v = state.inputs;
  const out = (id, value, text) => { $(id).dataset.value = String(value); $(id).textContent = text; };
  out("price-out", v.price, fmtPrice(v.price));
  out("gpu-hour-out", v.gpuHour, "$" + v.gpuHour.toFixed(2));
  out("overhead-out", v.overhead, fmtMoney(v.overhead));
  out("steps-out", v.steps, String(v.steps));
  $("rate").dataset.value = String(v.rate);
}

function setControls() {
  const v = state.inputs;
  const price = $("price");
  price.min = String(Math.min(-4, Math.log10(v.price || 1e-4) - 0.5));
  price.max = String(Math.max(Math.log10(0.2), Math.log10(v.price || 1e-4) + 0.5));
  price.value = String(Math.log10(v.price || 1e-4));  // position only: the value stays in `inputs`
  $("gpu-hour").max = String(Math.max(8, 2 * v.gpuHour));
  $("gpu-hour").value = String(v.gpuHour);
  $("overhead").max = String(Math.max(20000, 2 * v.overhead));
  $("overhead").value = String(v.overhead);
  $("rate").value = fmtRate(v.rate).replace(/,/g, "");  // shown to 0.1; `inputs` keeps the exact r
  $("steps").max = String(Math.max(100, v.steps));
  $("steps").value = String(v.steps);
  $("volume").value = String(v.volume);
  showInputs();
}

/** A control moved: take its value (rounded to what a person can choose) and ask again. */
const READERS = {
  price: (el) => ({ price: sig3(10 ** Number(el.value)) }),
  "gpu-hour": (el) => ({ gpuHour: roundTo(Number(el.value), 0.01) }),
  rate: (el) => ({ rate: Number(el.value) }),
  overhead: (el) => ({ overhead: roundTo(Number(el.value), 10) }),
  steps: (el) => ({ steps: Number(el.value) }),
  volume: (el) => ({ volume: Number(el.value) }),
};

function onInput(event) {
  Object.assign(state.inputs, READERS[event.target.id](event.target));
  showInputs();
  if (!state.online) return;
  document.body.dataset.pending = "true";
  clearTimeout(state.timer);
  state.timer = setTimeout(askScenario, 120);  // one request per pause, not one per pixel
}

// ---- the chart: log–log axes on a canvas ------------------------------------------------------
// The curves are plotted from the inputs (c·N, G·N/r + E); where they cross and what that
// means (N*, the verdict) comes from the server's scenario.

const COLORS = { hosted: "#d62728", elastic: "#1f77b4", dedicated: "#2ca02c", nstar: "#333", you: "#9467bd" };
const FONT = "12px system-ui, sans-serif";

function draw() {
  const canvas = $("chart"), dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 900, H = Math.round(W * 0.6);
  canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr); canvas.style.height = H + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const v = state.inputs, s = state.scenario;
  const rate = s ? s.rate_at_steps : v.rate;
  const series = [
    { color: COLORS.hosted, label: `hosted: ${state.reference || "example"} (${fmtPrice(v.price)}/image)`,
      f: (n) => v.price * n },
    { color: COLORS.elastic, label: "self-hosted, elastic (G·N/r + E)", f: (n) => (v.gpuHour / rate) * n + v.overhead },
  ];
  if (s && s.dedicated) {
    const d = s.dedicated;
    series.push({ color: COLORS.dedicated, dash: [6, 4], label: `self-hosted, dedicated GPUs (${fmtMoney(d.gpu_month)}/GPU-month)`,
      f: (n) => Math.max(1, Math.ceil(n / d.capacity)) * d.gpu_month + v.overhead });
  }
  const pad = { l: 84, r: 24, t: legend(ctx, series, W, false) + 16, b: 58 };
  legend(ctx, series, W, true);
  const nStar = s && s.crossover > 0 ? s.crossover : null;
  const marks = [nStar, v.volume].filter((x) => x > 0);
  const xMin = Math.max(1, Math.min(100, ...marks.map((x) => x / 10))), xMax = Math.max(1e6, ...marks.map((x) => x * 10));
  // Not below a cent: a cheaper curve enters the plot from its bottom edge (clipped, never flattened).
  const ends = series.flatMap((c) => [c.f(xMin), c.f(xMax)]).filter((c) => c > 0);
  const yMin = Math.max(0.01, Math.min(...ends) / 2), yMax = Math.max(10, ...ends) * 2;
  const box = { x0: pad.l, x1: W - pad.r, y0: pad.t, y1: H - pad.b };
  const X = (n) => box.x0 + (Math.log10(n / xMin) / Math.log10(xMax / xMin)) * (box.x1 - box.x0);
  const Y = (c) => box.y1 - (Math.log10(Math.max(c, yMin / 1e3) / yMin) / Math.log10(yMax / yMin)) * (box.y1 - box.y0);
  axes(ctx, X, Y, box, [xMin, xMax], [yMin, yMax], W, H);
  ctx.save();
  ctx.beginPath(); ctx.rect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0); ctx.clip();
  for (const c of series) curve(ctx, X, Y, xMin, xMax, c);
  if (nStar) {
    ctx.fillStyle = "#000"; ctx.beginPath(); ctx.arc(X(nStar), Y(v.price * nStar), 4.5, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.restore();
  if (nStar) marker(ctx, X(nStar), box, COLORS.nstar, `N* = ${fmtCount(nStar)}`, 0);
  if (v.volume > 0) marker(ctx, X(v.volume), box, COLORS.you, `you: ${fmtCount(v.volume)}`, 20);
}

/** The legend above the plot (never over the curves or markers); returns its height. */
function legend(ctx, series, W, paint) {
  ctx.font = FONT; ctx.textBaseline = "middle"; ctx.textAlign = "left";
  let x = 84, y = 14;
  for (const c of series) {
    const width = 26 + ctx.measureText(c.label).width + 22;
    if (x + width > W - 24 && x > 84) { x = 84; y += 20; }
    if (paint) {
      ctx.strokeStyle = c.color; ctx.lineWidth = 3; ctx.setLineDash(c.dash || []);
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + 20, y); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = "#222"; ctx.fillText(c.label, x + 26, y);
    }
    x += width;
  }
  return y + 10;
}

function axes(ctx, X, Y, box, [xMin, xMax], [yMin, yMax], W, H) {
  ctx.strokeStyle = "#ddd"; ctx.fillStyle = "#444"; ctx.font = FONT; ctx.lineWidth = 1;
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let e = Math.ceil(Math.log10(xMin) - 1e-9); e <= Math.log10(xMax) + 1e-9; e++) {
    const x = X(10 ** e), label = fmtCompact(10 ** e), half = ctx.measureText(label).width / 2;
    ctx.beginPath(); ctx.moveTo(x, box.y0); ctx.lineTo(x, box.y1); ctx.stroke();
    ctx.fillText(label, Math.min(Math.max(x, half + 2), W - half - 2), box.y1 + 6);  // never cut at an edge
  }
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let e = Math.ceil(Math.log10(yMin) - 1e-9); e <= Math.log10(yMax) + 1e-9; e++) {
    const y = Y(10 ** e);
    ctx.beginPath(); ctx.moveTo(box.x0, y); ctx.lineTo(box.x1, y); ctx.stroke();
    ctx.fillText("$" + fmtCompact(10 ** e), box.x0 - 8, y);
  }
  ctx.strokeStyle = "#999"; ctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText("volume N (images/month, log scale)", (box.x0 + box.x1) / 2, H - 8);
  ctx.save(); ctx.translate(16, (box.y0 + box.y1) / 2); ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle"; ctx.fillText("cost ($/month, log scale)", 0, 0); ctx.restore();
}

function curve(ctx, X, Y, xMin, xMax, c) {
  ctx.strokeStyle = c.color; ctx.lineWidth = 2.5; ctx.setLineDash(c.dash || []); ctx.beginPath();
  for (let i = 0; i <= 800; i++) {
    const n = xMin * (xMax / xMin) ** (i / 800);
    if (i === 0) ctx.moveTo(X(n), Y(c.f(n))); else ctx.lineTo(X(n), Y(c.f(n)));
  }
  ctx.stroke(); ctx.setLineDash([]);
}

/** A vertical marker line; its label sits beside it, on the side with room. */
function marker(ctx, x, box, color, label, dy) {
  ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.5; ctx.setLineDash([3, 3]);
  ctx.beginPath(); ctx.moveTo(x, box.y0); ctx.lineTo(x, box.y1); ctx.stroke(); ctx.setLineDash([]);
  ctx.font = "bold 13px system-ui, sans-serif"; ctx.textBaseline = "top";
  const right = x + 6 + ctx.measureText(label).width <= box.x1 - 4;
  ctx.textAlign = right ? "left" : "right";
  const text = ctx.measureText(label).width;
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  ctx.fillRect(right ? x + 4 : x - 8 - text, box.y0 + 6 + dy, text + 4, 17);
  ctx.fillStyle = color; ctx.fillText(label, right ? x + 6 : x - 6, box.y0 + 8 + dy);
}

// ---- the server ----------------------------------------------------------------------------

const KEY_STORAGE = "pixelmill-api-key";  // sessionStorage: gone when the tab closes

async function getSummary(params) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const query = params ? "?" + new URLSearchParams(params) : "";
  const response = await fetch("/v1/cost/summary" + query, { headers });
  if (response.status === 401 || response.status === 403) {
    $("key-form").hidden = false;  // a server with API keys: the ledger is for admins
    throw new Error(key ? "that key may not read the ledger" : "an admin API key is needed");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || `/v1/cost/summary answered ${response.status}`);
  return body;
}

async function askScenario() {
  const seq = ++state.seq, v = state.inputs;
  document.body.dataset.pending = "true";
  try {
    // String(number) is the shortest text that parses back to the same double: exact inputs.
    const summary = await getSummary({ price: String(v.price), gpu_hour: String(v.gpuHour), rate: String(v.rate),
      overhead: String(v.overhead), steps: String(v.steps), volume: String(v.volume) });
    if (seq === state.seq) showScenario(summary.scenario);
  } catch (error) {
    if (seq === state.seq) showError(error.message);
  } finally {
    if (seq === state.seq) document.body.dataset.pending = "false";
  }
}

function showError(message) {
  state.scenario = null;
  $("banner").textContent = message;
  $("banner").className = "banner error";
  $("nstar").dataset.value = "";
  for (const id of ["nstar", "rate-eff", "gpu-per-image"]) $(id).textContent = "–";
  draw();
}

function showScenario(s) {
  state.scenario = s;
  $("rate-eff").textContent = fmtRate(s.rate_at_steps) + " images/GPU-h";
  $("gpu-per-image").textContent = fmtPrice(s.gpu_cost_per_image);
  $("nstar").dataset.value = s.crossover === null ? "never" : String(s.crossover);
  $("nstar").textContent = s.crossover === null ? "never" : fmtCount(s.crossover) + " images/month";
  $("banner").textContent = s.verdict.message;
  $("banner").className = "banner " + s.verdict.winner;
  draw();
}

function applySummary(s) {
  state.reference = s.reference;
  const scenario = s.scenario;
  state.inputs = scenario
    ? { price: scenario.price, gpuHour: scenario.gpu_hour, rate: scenario.rate, overhead: scenario.overhead,
        steps: scenario.steps, volume: scenario.volume }
    : { ...DEFAULTS, price: s.reference_price, gpuHour: s.self_hosted.gpu_hour,
        overhead: s.self_hosted.overhead_month, volume: s.trailing_volume };
  setControls();
  $("ref-steps").textContent = String(scenario ? scenario.reference_steps : DEFAULTS.steps);
  $("rate-measured").textContent = s.rate ? `${fmtRate(s.rate)} images/GPU-hour (${s.rate_source})` : "";
  const basis = s.steps_model ? s.steps_model.basis : "assumed";
  $("steps-basis").textContent = basis === "measured"
    ? "Steps: time per image fitted to the step counts the ledger measured."
    : "Steps: time per image assumed proportional to steps (r ∝ 1/steps).";
  $("source").textContent = `r ${s.rate ? "measured from " + fmtCount(s.images) + " images" : "not measured yet: assumed " +
    DEFAULTS.rate}; hosted prices (${s.reference} at ${fmtPrice(s.reference_price)}/image) from ${s.prices_source}.`;
  $("notes").replaceChildren(...s.notes.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
}

// ---- the gateway section: the server's numbers, shown as they are ---------------------------------

/** One table row; each cell is [text, exact value or undefined]. */
function tableRow(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const [text, value, cls] of cells) {
    const td = Object.assign(document.createElement("td"), { textContent: text });
    if (value !== undefined && value !== null) td.dataset.value = String(value);
    if (cls) td.className = cls;
    tr.append(td);
  }
  return tr;
}

const money = (v) => (v === null ? ["–", null] : [fmtMoneyExact(v), v]);
/** Spend to the cent, or to four significant digits under a dollar ($0.0002 is not $0.00). */
function fmtMoneyExact(v) {
  return Math.abs(v) >= 1 || v === 0 ? "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    : (v < 0 ? "-" : "") + fmtPrice(Math.abs(v));
}

/** Spend by backend, the counterfactuals, the saving and the per-model flags (null: no --backends). */
function showGateway(g) {
  $("gateway").hidden = !g;
  if (!g) return;
  const t = g.total;
  $("gw-period").textContent = g.months.length ? g.months.map((m) => m.month).join(", ") : "no traffic yet";
  const spend = Object.entries(t.by_backend).map(([backend, v]) =>
    tableRow([[backend === "local" ? "local GPUs" : `upstream: ${backend}`], money(v)], "backend"));
  spend.forEach((tr, i) => { tr.dataset.backend = Object.keys(t.by_backend)[i]; });
  const line = (label, key, cls) => {
    const tr = tableRow([[label], money(t[key])], cls);
    tr.dataset.key = key;
    return tr;
  };
  $("gw-spend").tBodies[0].replaceChildren(...spend, line("shadow runs", "shadow"), line("actual", "actual", "total"),
    line("all hosted (counterfactual)", "all_hosted"), line("all local (counterfactual)", "all_local"),
    line("saving (all hosted − actual)", "saving", "total"));
  $("gw-models").tBodies[0].replaceChildren(...g.models.map((m) => {
    const tr = tableRow([
      [m.model], [m.backend ? `${m.policy} → ${m.backend}` : m.policy],
      [fmtCount(m.images_local), m.images_local], [fmtCount(m.images_upstream), m.images_upstream],
      [fmtCount(m.trailing_volume), m.trailing_volume],
      [m.rate === null ? "–" : `${fmtRate(m.rate)} (${m.rate_source})`, m.rate],
      m.price_per_image === null ? ["–"] : [fmtPrice(m.price_per_image), m.price_per_image],
      m.n_star === null ? ["never"] : [fmtRate(m.n_star), m.n_star],
      [m.flag || "", undefined, "flag"],
    ]);
    tr.dataset.model = m.model;
    return tr;
  }));
}

async function loadSummary() {
  try {
    const summary = await getSummary();
    applySummary(summary);
    showGateway(summary.gateway || null);
    $("key-form").hidden = true;
    state.online = true;
    if (summary.scenario) showScenario(summary.scenario); else await askScenario();
  } catch (error) {
    state.online = false;
    setControls();
    $("source").textContent = `could not load this server's numbers (${error.message}); the controls show examples.`;
    showError(`no verdict: ${error.message}`);
  }
}

async function start() {
  for (const id of Object.keys(READERS)) $(id).addEventListener("input", onInput);
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    await loadSummary();
  });
  window.addEventListener("resize", () => draw());
  await loadSummary();
  document.body.dataset.ready = "true";
}

start();
