// pixelmill build-versus-buy dashboard. No dependencies, no build step.
// The formulas mirror pixelmill/cost/model.py; tests/e2e/test_dashboard.py checks that the
// N* shown here equals the Python crossover_volume for the same inputs.
"use strict";

// ---- the model (same as pixelmill.cost.model) ----------------------------------------------

/** Hosted cost per month: c·N. */
function hostedCost(price, volume) { return price * volume; }

/** Elastic self-hosted cost per month: G·N/r + E. */
function elasticCost(gpuHour, rate, overhead, volume) { return (gpuHour / rate) * volume + overhead; }

/** N* = E / (c − G/r), or null when self-hosting never wins (c ≤ G/r). */
function crossoverVolume(price, gpuHour, rate, overhead) {
  const margin = price - gpuHour / rate;
  return margin <= 0 ? null : overhead / margin;
}

/** Seconds per image at `steps` under the steps model (fixed + per-step time). */
function secondsPerImage(model, steps) { return model.fixed_s + model.per_step_s * steps; }

/** r at `steps`, scaled from r at `refSteps`: time per image follows the steps model. */
function rateAtSteps(rate, refSteps, steps, model) {
  const m = model || { fixed_s: 0, per_step_s: 1 }; // no data: r ∝ 1/steps
  return rate * secondsPerImage(m, refSteps) / secondsPerImage(m, steps);
}

// ---- page state ----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const state = { stepsModel: null, refSteps: 30, reference: "hosted API", dedicated: null };
const fmtCount = (v) => Math.round(v).toLocaleString("en-US");
const fmtMoney = (v) => "$" + (Math.abs(v) >= 100 ? fmtCount(v) : v.toFixed(2));

function inputs() {
  const rate = Number($("rate").value);
  const steps = Number($("steps").value);
  return {
    price: Number($("price").value), gpuHour: Number($("gpu-hour").value), overhead: Number($("overhead").value),
    rate, steps, rateEff: rateAtSteps(rate, state.refSteps, steps, state.stepsModel), volume: Number($("volume").value),
  };
}

function verdictText(v, nStar) {
  const hosted = hostedCost(v.price, v.volume), own = elasticCost(v.gpuHour, v.rateEff, v.overhead, v.volume);
  const at = `at ${fmtCount(v.volume)} images/month`;
  if (nStar === null) {
    return ["hosted", `self-hosting never wins at these prices (G/r ≥ c); ${at} hosting saves ${fmtMoney(own - hosted)}/month`];
  }
  if (hosted > own) {
    return ["self-hosted", `${at} you are past the crossover of ${fmtCount(nStar)}: self-hosting saves ${fmtMoney(hosted - own)}/month`];
  }
  if (hosted < own) {
    return ["hosted", `${at} you are below the crossover of ${fmtCount(nStar)}: the hosted API (${state.reference}) is cheaper by ${fmtMoney(own - hosted)}/month`];
  }
  return ["tie", `${at} you are at the crossover of ${fmtCount(nStar)}`];
}

function update() {
  const v = inputs();
  const nStar = crossoverVolume(v.price, v.gpuHour, v.rateEff, v.overhead);
  $("price-out").textContent = "$" + v.price.toFixed(4);
  $("gpu-hour-out").textContent = "$" + v.gpuHour.toFixed(2);
  $("overhead-out").textContent = fmtMoney(v.overhead);
  $("steps-out").textContent = String(v.steps);
  $("rate-eff").textContent = fmtCount(v.rateEff) + " images/GPU-h";
  $("gpu-per-image").textContent = "$" + (v.gpuHour / v.rateEff).toFixed(5);
  $("nstar").dataset.value = nStar === null ? "never" : String(nStar);
  $("nstar").textContent = nStar === null ? "never" : fmtCount(nStar) + " images/month";
  const [winner, text] = verdictText(v, nStar);
  $("banner").textContent = text;
  $("banner").className = "banner " + winner;
  draw(v, nStar);
}

// ---- the chart: log–log axes on a canvas -----------------------------------------------------

function draw(v, nStar) {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 70, r: 20, t: 20, b: 50 };
  const marks = [nStar, v.volume].filter((x) => x && x > 0);
  const xMin = Math.min(100, ...marks.map((x) => x / 10)), xMax = Math.max(1e6, ...marks.map((x) => x * 10));
  const costs = [hostedCost(v.price, xMin), hostedCost(v.price, xMax), elasticCost(v.gpuHour, v.rateEff, v.overhead, xMax),
                 Math.max(v.overhead, 1)];
  const yMin = Math.max(0.1, Math.min(...costs) / 2), yMax = Math.max(...costs) * 2;
  const X = (n) => pad.l + (Math.log10(n / xMin) / Math.log10(xMax / xMin)) * (W - pad.l - pad.r);
  const Y = (c) => H - pad.b - (Math.log10(Math.max(c, yMin) / yMin) / Math.log10(yMax / yMin)) * (H - pad.t - pad.b);
  ctx.clearRect(0, 0, W, H);
  axes(ctx, X, Y, xMin, xMax, yMin, yMax, W, H, pad);
  curve(ctx, X, Y, xMin, xMax, (n) => hostedCost(v.price, n), "#d62728");
  curve(ctx, X, Y, xMin, xMax, (n) => elasticCost(v.gpuHour, v.rateEff, v.overhead, n), "#1f77b4");
  if (state.dedicated) {
    const cap = state.dedicated.capacity * v.rateEff / state.dedicated.rate;
    curve(ctx, X, Y, xMin, xMax, (n) => Math.ceil(n / cap) * state.dedicated.gpu_month + v.overhead, "#2ca02c", [6, 4]);
  }
  if (nStar !== null && nStar > 0) vline(ctx, X(nStar), pad, H, "#333", `N* = ${fmtCount(nStar)}`);
  if (v.volume > 0) vline(ctx, X(v.volume), pad, H, "#9467bd", `you: ${fmtCount(v.volume)}`, 34);
  legend(ctx, pad);
}

function axes(ctx, X, Y, xMin, xMax, yMin, yMax, W, H, pad) {
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#444"; ctx.font = "12px system-ui"; ctx.lineWidth = 1;
  for (let e = Math.ceil(Math.log10(xMin)); e <= Math.log10(xMax); e++) {
    const x = X(10 ** e);
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, H - pad.b); ctx.stroke();
    ctx.fillText(fmtCount(10 ** e), x - 14, H - pad.b + 16);
  }
  for (let e = Math.ceil(Math.log10(yMin)); e <= Math.log10(yMax); e++) {
    const y = Y(10 ** e);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(W - pad.r, y); ctx.stroke();
    ctx.fillText("$" + fmtCount(10 ** e), 4, y + 4);
  }
  ctx.fillText("volume (images/month, log scale)", W / 2 - 90, H - 12);
  ctx.save(); ctx.translate(14, H / 2 + 40); ctx.rotate(-Math.PI / 2); ctx.fillText("cost ($/month)", 0, 0); ctx.restore();
}

function curve(ctx, X, Y, xMin, xMax, f, color, dash) {
  ctx.strokeStyle = color; ctx.lineWidth = 2.5; ctx.setLineDash(dash || []); ctx.beginPath();
  for (let i = 0; i <= 400; i++) {
    const n = xMin * (xMax / xMin) ** (i / 400);
    if (i === 0) ctx.moveTo(X(n), Y(f(n))); else ctx.lineTo(X(n), Y(f(n)));
  }
  ctx.stroke(); ctx.setLineDash([]);
}

function vline(ctx, x, pad, H, color, label, dy) {
  ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.5; ctx.setLineDash([3, 3]);
  ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, H - pad.b); ctx.stroke(); ctx.setLineDash([]);
  ctx.font = "bold 13px system-ui"; ctx.fillText(label, x + 5, pad.t + 16 + (dy || 0));
}

function legend(ctx, pad) {
  const items = [["#d62728", `hosted: ${state.reference}`], ["#1f77b4", "self-hosted, elastic (G·N/r + E)"]];
  if (state.dedicated) items.push(["#2ca02c", "self-hosted, dedicated GPUs"]);
  ctx.font = "12px system-ui";
  items.forEach(([color, text], i) => {
    ctx.fillStyle = color; ctx.fillRect(pad.l + 10, pad.t + 50 + i * 18, 14, 4);
    ctx.fillStyle = "#222"; ctx.fillText(text, pad.l + 30, pad.t + 56 + i * 18);
  });
}

// ---- start: defaults from this server's ledger ----------------------------------------------------

function applySummary(s) {
  state.reference = s.reference;
  state.stepsModel = s.steps_model;
  state.refSteps = s.rates.length ? s.rates[0].steps : 30;
  if (s.dedicated && s.rate) state.dedicated = { capacity: s.dedicated.capacity, gpu_month: s.dedicated.gpu_month, rate: s.rate };
  const price = $("price");
  price.max = String(Math.max(0.2, 2 * s.reference_price));
  price.value = String(s.reference_price);
  $("gpu-hour").value = String(s.self_hosted.gpu_hour);
  $("overhead").max = String(Math.max(20000, 2 * s.self_hosted.overhead_month));
  $("overhead").value = String(s.self_hosted.overhead_month);
  $("rate").value = String(s.rate || 600);
  $("ref-steps").textContent = String(state.refSteps);
  $("steps").value = String(state.refSteps);
  $("volume").value = String(s.trailing_volume);
  const basis = s.steps_model ? s.steps_model.basis : "assumed";
  $("steps-basis").textContent = basis === "measured"
    ? "Steps: time per image measured at several step counts (fitted line)."
    : "Steps: assumed r ∝ 1/steps (the ledger has one step count or none).";
  $("source").textContent = `r ${s.rate ? "measured from " + fmtCount(s.images) + " images" : "not measured yet: assumed 600"}; ` +
    `hosted prices from ${s.prices_source}.`;
}

const KEY_STORAGE = "pixelmill-api-key";  // sessionStorage: gone when the tab closes

async function loadSummary() {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    const response = await fetch("/v1/cost/summary", { headers });
    if (response.status === 401 || response.status === 403) {
      $("key-form").hidden = false;  // a server with API keys: the ledger is for admins
      throw new Error(key ? "that key may not read the ledger" : "an admin API key is needed");
    }
    if (!response.ok) throw new Error(`/v1/cost/summary answered ${response.status}`);
    applySummary(await response.json());
    $("key-form").hidden = true;
  } catch (error) {
    $("source").textContent = `could not load this server's numbers (${error.message}); showing examples.`;
  }
  update();
}

async function start() {
  for (const id of ["price", "gpu-hour", "rate", "overhead", "steps", "volume"]) $(id).addEventListener("input", update);
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    await loadSummary();
  });
  await loadSummary();
  document.body.dataset.ready = "true";
}

start();
