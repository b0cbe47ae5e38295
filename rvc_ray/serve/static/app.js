// The listening page: plain JavaScript over the rvc-ray HTTP API (no build step).
// Voices come from GET v1/voices, option ranges and defaults from GET v1/options (the API's schema),
// conversions from POST v1/convert (one input, several voices), results and spectrograms from v1/results.
"use strict";

const BASE = new URL(document.baseURI).pathname; // the app's route prefix + "/" (a <base> set by the server)
const $ = (id) => document.getElementById(id);
const state = { voices: [], schema: null, input: null, inputName: null, recorder: null, objectUrls: [] };

function apiKey() { return $("api-key").value.trim(); }
function headers() { const key = apiKey(); return key ? { "X-API-Key": key } : {}; }
function url(path) { return path.startsWith("/") ? path : BASE + path; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorText(response) {
  // API errors are JSON {error, detail}; anything else is shown as its status line.
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error}: ${body.detail}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function api(path, options = {}) {
  const response = await fetch(url(path), { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function fmt(value, digits = 3) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

// ---------------------------------------------------------------------------- voices

function groupByRun(voices) {
  const runs = new Map();
  for (const voice of voices) {
    const run = voice.run || voice.id;
    if (!runs.has(run)) runs.set(run, []);
    runs.get(run).push(voice);
  }
  for (const list of runs.values()) list.sort((a, b) => (a.epoch ?? 1e9) - (b.epoch ?? 1e9) || a.id.localeCompare(b.id));
  return runs;
}

function renderVoices() {
  const root = $("voices");
  root.textContent = "";
  if (!state.voices.length) { root.innerHTML = '<p class="hint">No voices in the voices location yet.</p>'; return; }
  for (const [run, voices] of groupByRun(state.voices)) {
    const scored = voices.filter((v) => v.validation && v.validation["val/mel_l1"] !== undefined);
    const best = scored.length ? Math.min(...scored.map((v) => v.validation["val/mel_l1"])) : null;
    const title = document.createElement("h3");
    title.textContent = `run ${run} `;
    const all = document.createElement("button");
    all.type = "button"; all.textContent = "select all epochs"; all.className = "select-run"; all.dataset.run = run;
    // "<run>.pth" is training's copy of the latest epoch: skip it when the epochs themselves are listed.
    const epochs = voices.filter((v) => !(v.id === run && voices.length > 1));
    all.onclick = () => epochs.forEach((v) => { const box = root.querySelector(`input[data-voice="${v.id}"]`); if (box && !box.disabled) box.checked = true; });
    title.appendChild(all);
    root.appendChild(title);
    const table = document.createElement("table");
    table.className = "run";
    table.innerHTML = "<thead><tr><th></th><th>voice</th><th>epoch</th><th>step</th><th>val mel L1</th><th>val MCD</th><th>rate</th><th>F0 (default)</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const voice of voices) {
      const row = document.createElement("tr");
      const val = voice.validation || {};
      const isBest = best !== null && val["val/mel_l1"] === best;
      row.innerHTML = `<td><input type="checkbox" class="voice-check"></td><td class="id"></td>
        <td class="num">${voice.epoch ?? "–"}</td><td class="num">${voice.step ?? "–"}</td>
        <td class="num ${isBest ? "best" : ""}">${fmt(val["val/mel_l1"])}</td><td class="num">${fmt(val["val/mcd"], 2)}</td>
        <td class="num">${voice.sample_rate ?? "–"}</td><td class="f0"></td>`;
      const box = row.querySelector("input");
      box.dataset.voice = voice.id;
      const note = voice.error ? ` (${voice.error})` : voice.id === run && voices.length > 1 ? " (latest copy)" : "";
      row.querySelector(".id").textContent = voice.id + note;
      if (voice.error) { box.disabled = true; row.querySelector(".id").className = "id voice-error"; }
      const f0 = row.querySelector(".f0");
      f0.textContent = voice.f0_method || "–";
      f0.title = voice.f0_method_reason || "";
      body.appendChild(row);
    }
    table.appendChild(body);
    root.appendChild(table);
  }
}

async function loadVoices() {
  try {
    const response = await api("v1/voices");
    state.voices = (await response.json()).voices;
    renderVoices();
    showError("");
  } catch (err) {
    $("voices").innerHTML = '<p class="hint">Could not list the voices.</p>';
    showError(err.message);
  }
}

function selectedVoices() {
  return [...document.querySelectorAll("input.voice-check:checked")].map((box) => box.dataset.voice);
}

// ---------------------------------------------------------------------------- options (from the API's schema)

function describe(prop) {
  // {type, minimum, maximum, enum, nullable} of a JSON-schema property (pydantic writes anyOf for `X | None`).
  const variants = prop.anyOf || [prop];
  const main = variants.find((v) => v.type !== "null") || {};
  return { ...main, nullable: variants.some((v) => v.type === "null") };
}

function renderOptions() {
  const form = $("options");
  form.textContent = "";
  for (const [name, prop] of Object.entries(state.schema.properties)) {
    const info = describe(prop);
    const label = document.createElement("label");
    label.title = prop.description || "";
    const head = document.createElement("span");
    head.textContent = name;
    label.appendChild(head);
    const control = document.createElement("span");
    control.className = "control";
    let input;
    if (info.enum) {
      input = document.createElement("select");
      input.innerHTML = '<option value="">(server default)</option>' + info.enum.map((v) => `<option>${v}</option>`).join("");
      input.value = prop.default ?? "";
    } else {
      input = document.createElement("input");
      input.type = "number";
      if (info.minimum !== undefined) input.min = info.minimum;
      if (info.maximum !== undefined) input.max = info.maximum;
      input.step = info.type === "integer" ? "1" : "any";
      input.value = prop.default ?? "";
      if (info.nullable) input.placeholder = "default";
      const bounded = info.minimum !== undefined && info.maximum !== undefined && info.maximum - info.minimum <= 100;
      if (bounded && !info.nullable) {
        const slider = document.createElement("input");
        slider.type = "range"; slider.min = info.minimum; slider.max = info.maximum;
        slider.step = info.type === "integer" ? "1" : String((info.maximum - info.minimum) / 100);
        slider.value = input.value;
        slider.oninput = () => { input.value = slider.value; };
        input.oninput = () => { slider.value = input.value; };
        control.appendChild(slider);
      }
    }
    input.name = name;
    input.dataset.default = prop.default ?? "";
    control.appendChild(input);
    label.appendChild(control);
    const help = document.createElement("small");
    const range = info.minimum !== undefined ? ` [${info.minimum} … ${info.maximum ?? "∞"}]` : "";
    help.textContent = `${prop.description || ""}${range} default: ${prop.default ?? "none"}`;
    label.appendChild(help);
    form.appendChild(label);
  }
}

async function loadOptions() {
  try {
    state.schema = await (await api("v1/options")).json();
    renderOptions();
  } catch (err) { showError(err.message); }
}

function optionValues() {
  const values = {};
  for (const el of $("options").querySelectorAll("input[name], select[name]")) {
    if (el.value !== "" && el.value !== el.dataset.default) values[el.name] = el.value;
  }
  return values;
}

// ---------------------------------------------------------------------------- input: file or microphone

function setInput(blob, name) {
  state.input = blob;
  state.inputName = name;
  const audio = $("input-audio");
  audio.src = remember(URL.createObjectURL(blob));
  audio.hidden = false;
}

function remember(objectUrl) { state.objectUrls.push(objectUrl); return objectUrl; }

function encodeWav(samples, rate) {
  // 16-bit PCM mono WAV of Float32 samples: what the server decodes without any codec.
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([buffer], { type: "audio/wav" });
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) { state.recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) { showError("this browser cannot record (no MediaRecorder)"); return; }
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (err) { showError(`microphone: ${err.message}`); return; }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.textContent = "● record";
    $("record-state").textContent = "";
    try {
      // Browsers record webm/ogg; decode here and send a WAV, which every server build reads.
      const context = new AudioContext();
      const decoded = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
      setInput(encodeWav(decoded.getChannelData(0), decoded.sampleRate), "recording.wav");
      context.close();
    } catch (err) { showError(`could not decode the recording: ${err.message}`); }
  };
  recorder.start();
  state.recorder = recorder;
  button.textContent = "■ stop";
  $("record-state").textContent = "recording…";
}

// ---------------------------------------------------------------------------- convert and show

async function blobUrl(path) {
  // Results need the API key header, which <audio src> cannot send: fetch, then play a local copy.
  const response = await api(path);
  return remember(URL.createObjectURL(await response.blob()));
}

function card(title, className) {
  const el = document.createElement("div");
  el.className = `card ${className}`;
  const h = document.createElement("h3");
  h.textContent = title;
  el.appendChild(h);
  return el;
}

async function renderResults(answer) {
  const root = $("results");
  root.textContent = "";
  const input = card(`input: ${state.inputName}`, "input");
  const inAudio = document.createElement("audio");
  inAudio.controls = true; inAudio.src = $("input-audio").src;
  input.appendChild(inAudio);
  const inMeta = document.createElement("div");
  inMeta.className = "meta"; inMeta.textContent = `${fmt(answer.input_duration_s, 2)} s`;
  input.appendChild(inMeta);
  const inImg = document.createElement("img");
  inImg.alt = "input spectrogram";
  input.appendChild(inImg);
  root.appendChild(input);
  const jobs = [blobUrl(answer.input_spectrogram_url).then((u) => { inImg.src = u; })];
  for (const result of answer.results) {
    const el = card(result.voice, "result");
    el.dataset.voice = result.voice;
    const meta = document.createElement("div");
    meta.className = "meta";
    const val = result.validation || {};
    meta.textContent = `epoch ${result.epoch ?? "–"} · step ${result.step ?? "–"} · val mel L1 ${fmt(val["val/mel_l1"])}`;
    el.appendChild(meta);
    if (result.error) {
      const err = document.createElement("p");
      err.className = "voice-error"; err.textContent = `${result.error}: ${result.detail}`;
      el.appendChild(err);
    } else {
      const audio = document.createElement("audio");
      audio.controls = true; audio.preload = "auto";
      const link = document.createElement("a");
      link.textContent = "download"; link.download = `${result.voice}.wav`;
      const img = document.createElement("img");
      img.alt = `spectrogram of ${result.voice}`;
      const report = document.createElement("div");
      report.className = "meta";
      report.textContent = `${result.report.f0_method} · ${fmt(result.report.processing_s, 2)} s${result.cached ? " · cached" : ""}`;
      el.append(audio, link, report, img);
      jobs.push(blobUrl(result.audio_url).then((u) => { audio.src = u; link.href = u; }));
      jobs.push(blobUrl(result.spectrogram_url).then((u) => { img.src = u; }));
    }
    root.appendChild(el);
  }
  $("results-section").hidden = false;
  await Promise.all(jobs);
}

async function convert() {
  showError("");
  const voices = selectedVoices();
  if (!state.input) { showError("choose an input: upload a file or record one"); return; }
  if (!voices.length) { showError("select at least one voice (tick epochs in the table)"); return; }
  const form = new FormData();
  form.append("file", state.input, state.inputName || "input.wav");
  form.append("voices", voices.join(","));
  for (const [name, value] of Object.entries(optionValues())) form.append(name, value);
  const button = $("convert");
  button.disabled = true;
  $("status").textContent = `converting with ${voices.length} voice(s)…`;
  const started = performance.now();
  try {
    const answer = await (await api("v1/convert", { method: "POST", body: form })).json();
    await renderResults(answer);
    const failed = answer.results.filter((r) => r.error).length;
    $("status").textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s` + (failed ? ` (${failed} failed)` : "");
  } catch (err) {
    showError(err.message);
    $("status").textContent = "failed";
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------- wiring

$("api-key").value = localStorage.getItem("rvc-ray-api-key") || "";
$("api-key").onchange = () => { localStorage.setItem("rvc-ray-api-key", apiKey()); loadVoices(); loadOptions(); };
$("reload").onclick = loadVoices;
$("reset-options").onclick = renderOptions;
$("file").onchange = (event) => { const f = event.target.files[0]; if (f) setInput(f, f.name); };
$("record").onclick = toggleRecording;
$("convert").onclick = convert;
loadVoices();
loadOptions();
