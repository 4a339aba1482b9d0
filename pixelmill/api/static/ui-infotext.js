// pixelmill web UI: an image's parameters (the A1111 "infotext") read back in the browser.
//
// pixelmill writes the infotext of every PNG into a `parameters` text chunk (tEXt, or iTXt
// when not latin-1); the job view does not repeat the prompt, so the gallery reads it from
// the image itself, exactly as A1111's "PNG Info" does. JPEG/WebP results (EXIF) are not
// read here: the gallery says so.
"use strict";

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

/** The `parameters` text of a PNG's bytes, or null (not a PNG, or no such chunk). */
export async function pngParameters(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(buffer);
  let at = 8;
  while (at + 12 <= bytes.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IDAT" || type === "IEND") return null;  // text chunks come first (PIL writes them so)
    const text = await textChunk(type, data);
    if (text && text.keyword === "parameters") return text.value;
    at += 12 + length;
  }
  return null;
}

async function textChunk(type, data) {
  const nul = data.indexOf(0);
  if (nul < 0 || !["tEXt", "iTXt", "zTXt"].includes(type)) return null;
  const keyword = new TextDecoder("latin1").decode(data.subarray(0, nul));
  if (type === "tEXt") return { keyword, value: new TextDecoder("latin1").decode(data.subarray(nul + 1)) };
  if (type === "zTXt") return { keyword, value: new TextDecoder("latin1").decode(await inflate(data.subarray(nul + 2))) };
  // iTXt: keyword \0 flag method language \0 translated keyword \0 text
  const compressed = data[nul + 1] === 1;
  let rest = data.subarray(nul + 3);
  rest = rest.subarray(rest.indexOf(0) + 1);
  rest = rest.subarray(rest.indexOf(0) + 1);
  return { keyword, value: new TextDecoder("utf-8").decode(compressed ? await inflate(rest) : rest) };
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Split a settings line on commas outside JSON-quoted values: [["Steps", "4"], …]. */
function settingsPairs(line) {
  const pairs = [];
  const re = /\s*([\w .+\-/()]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;
  let match;
  while ((match = re.exec(line)) !== null && match[0] !== "") {
    let value = match[2].trim();
    if (value.startsWith('"')) {
      try { value = JSON.parse(value); } catch { /* leave it as written */ }
    }
    pairs.push([match[1].trim(), value]);
  }
  return pairs;
}

/**
 * An infotext as {prompt, negative_prompt, settings: {Steps: "4", …}, loras: [{name, weight}]}.
 * The settings line is the last line; `<lora:name:weight>` tags leave the prompt.
 */
export function parseInfotext(text) {
  const lines = text.trim().split("\n");
  let settingsLine = "";
  if (lines.length > 1 && /^\s*Steps: /.test(lines[lines.length - 1])) settingsLine = lines.pop();
  const negativeAt = lines.findIndex((line) => line.startsWith("Negative prompt:"));
  const promptLines = negativeAt >= 0 ? lines.slice(0, negativeAt) : lines;
  const negative = negativeAt >= 0 ? lines.slice(negativeAt).join("\n").slice("Negative prompt:".length).trim() : "";
  const loras = [];
  const prompt = promptLines.join("\n").replace(/\s*<lora:([^:>]+)(?::([^>]+))?>/g, (_, name, weight) => {
    loras.push({ name, weight: weight === undefined ? 1 : Number(weight) });
    return "";
  }).trim();
  return { prompt, negative_prompt: negative, settings: Object.fromEntries(settingsPairs(settingsLine)), loras };
}

// A1111 samplers whose "Automatic" schedule is one of their own (A1111's sd_samplers_kdiffusion
// options.scheduler); the others' Automatic is their own sigmas. Same table as the server's
// pixelmill/images/schedules.py, which writes "Uniform" for these on their own sigmas.
const OWN_SCHEDULE = { "DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential" };

/**
 * The one-name sampler label the API accepts ("DPM++ 2M Karras") for an infotext's Sampler and
 * Schedule type. A1111 >= 1.9 (and pixelmill) write them apart ("Sampler: DPM++ 2M, Schedule
 * type: Karras"); older infotexts have no Schedule type and name both in Sampler.
 */
export function samplerLabel(sampler, schedule) {
  if (!schedule || schedule === "Uniform") return sampler;
  if (schedule === "Automatic") schedule = OWN_SCHEDULE[sampler];
  return schedule ? `${sampler} ${schedule}` : sampler;
}

/** The infotext as playground fields (only those it states). */
export function infotextToParams(parsed) {
  const s = parsed.settings;
  const params = { prompt: parsed.prompt, negative_prompt: parsed.negative_prompt, loras: parsed.loras };
  if (s.Steps) params.steps = Number(s.Steps);
  if (s["CFG scale"]) params.guidance = Number(s["CFG scale"]);
  if (s.Seed) params.seed = Number(s.Seed);
  if (s.Sampler) params.scheduler = samplerLabel(s.Sampler, s["Schedule type"]);
  if (s.Model) params.model = s.Model;
  if (s.Size) {
    const [width, height] = s.Size.split("x").map(Number);
    Object.assign(params, { width, height });
  }
  if (s["Denoising strength"]) params.strength = Number(s["Denoising strength"]);
  return params;
}
