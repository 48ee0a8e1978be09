"use strict";
// The operator page: polls /api/status, draws the chart with uPlot, plays auditions as they stream.

const REFRESH_MS = 2000;
const PCM_RATE = 24000;
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("kokoro-api-key") || "";
let chart = null;
let audio = null;

class NeedsKey extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new NeedsKey("this service needs its API key");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error(body?.error?.message || `${response.status} ${response.statusText}`);
  }
  return response;
}

function showProblem(error) {
  $("problem").hidden = !error;
  $("problem").textContent = error ? error.message : "";
}

function seconds(value, digits = 2) {
  return value === null || value === undefined ? "—" : `${value.toFixed(digits)} s`;
}

function uptime(total) {
  const s = Math.floor(total);
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"], [Math.floor(s / 60) % 60, "m"], [s % 60, "s"]];
  const first = parts.findIndex(([n]) => n > 0);
  return parts.slice(first < 0 ? 3 : first).map(([n, unit]) => `${n} ${unit}`).join(" ");
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
}

function renderCalls(calls) {
  const body = $("calls").tBodies[0];
  body.replaceChildren();
  for (const call of calls) {
    const row = body.insertRow();
    row.dataset.callId = call.call_id;
    cell(row, call.call_id);
    cell(row, call.link);
    cell(row, call.state, `state-${call.state}`);
    cell(row, seconds(call.lead_s, 1), "number");
    cell(row, String(call.replies), "number");
    cell(row, seconds(call.last_first_audio_s), "number");
  }
  $("no-calls").hidden = calls.length > 0;
}

function renderCounters(counters) {
  const body = $("counters").tBodies[0];
  body.replaceChildren();
  for (const [name, values] of Object.entries(counters)) {
    const entries = Object.entries(values);
    const total = entries.reduce((sum, [, n]) => sum + n, 0);
    const row = body.insertRow();
    cell(row, name);
    cell(row, String(total), "number");
    cell(row, entries.filter(([label, n]) => label && n).map(([label, n]) => `${label}: ${n}`).join(", "));
  }
}

function renderChart(history) {
  const data = [history.t, history.first_audio_p50, history.first_audio_max,
                history.engine_load.map((load) => load * 100)];
  if (chart) {
    chart.setData(data);
    return;
  }
  const box = $("chart");
  chart = new uPlot({
    width: box.clientWidth || 900,
    height: 240,
    scales: { load: { range: [0, 100] } },
    series: [
      {},
      { label: "first audio p50", scale: "s", stroke: "#2d6cdf", width: 2, value: (u, v) => seconds(v) },
      { label: "first audio max", scale: "s", stroke: "#d9822b", dash: [6, 4], value: (u, v) => seconds(v) },
      { label: "engine load", scale: "load", stroke: "#5b9a68", fill: "rgba(91,154,104,0.12)", points: { show: false },
        value: (u, v) => (v === null ? "—" : `${v.toFixed(0)} %`) },
    ],
    axes: [
      {},
      { scale: "s", label: "seconds to first audio" },
      { scale: "load", side: 1, label: "engine load %", grid: { show: false } },
    ],
  }, data, box);
}

async function refresh() {
  try {
    const status = await (await api("/api/status")).json();
    $("engine").textContent = status.engine;
    $("device").textContent = status.device;
    $("voice").textContent = status.voice;
    $("speed").textContent = status.speed.toFixed(2);
    $("uptime").textContent = uptime(status.uptime_s);
    $("settings-note").textContent = status.settings_via === "database"
      ? "Changes are written to the phone system's database (system_config); the service applies them within a second."
      : "This service runs without a database: changes apply at once and last until it restarts.";
    if (!$("settings-voice").value) $("settings-voice").value = status.voice;
    if (!$("settings-speed").value) $("settings-speed").value = status.speed;
    renderCalls(status.calls);
    renderCounters(status.counters);
    renderChart(status.history);
    showProblem(null);
  } catch (error) {
    if (!(error instanceof NeedsKey)) showProblem(error);
  }
}

async function loadVoices() {
  try {
    const { voices } = await (await api("/v1/audio/voices")).json();
    $("voice-names").replaceChildren(...voices.map((voice) => new Option(voice.name, voice.id)));
  } catch (error) {
    if (!(error instanceof NeedsKey)) showProblem(error);
  }
}

// 16-bit little-endian PCM arrives in chunks of any size; each whole sample run is queued to play right
// after the previous one, so the first words play while the rest is still being synthesized.
async function audition(event) {
  event.preventDefault();
  const status = $("audition-status");
  $("play").disabled = true;
  status.dataset.state = "loading";
  status.textContent = "synthesizing…";
  try {
    audio = audio || new AudioContext();
    await audio.resume();
    const response = await api("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "kokoro", input: $("audition-text").value, voice: $("audition-voice").value,
                             speed: Number($("audition-speed").value), response_format: "pcm" }),
    });
    const reader = response.body.getReader();
    let carry = new Uint8Array(0);
    let samples = 0;
    let playAt = audio.currentTime + 0.05;
    let last = null;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const bytes = new Uint8Array(carry.length + value.length);
      bytes.set(carry);
      bytes.set(value, carry.length);
      const count = bytes.length >> 1;
      carry = bytes.slice(count * 2);
      if (!count) continue;
      const view = new DataView(bytes.buffer);
      const buffer = audio.createBuffer(1, count, PCM_RATE);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < count; i++) channel[i] = view.getInt16(i * 2, true) / 32768;
      const source = audio.createBufferSource();
      source.buffer = buffer;
      source.connect(audio.destination);
      playAt = Math.max(playAt, audio.currentTime);
      source.start(playAt);
      playAt += buffer.duration;
      samples += count;
      last = source;
      status.dataset.state = "playing";
      status.textContent = `playing… ${(samples / PCM_RATE).toFixed(2)} s received`;
    }
    const duration = samples / PCM_RATE;
    status.dataset.duration = duration.toFixed(3);
    if (!last) {
      status.dataset.state = "played";
      status.textContent = "nothing to play";
      return;
    }
    await new Promise((resolve) => { last.onended = resolve; });
    status.dataset.state = "played";
    status.textContent = `played ${duration.toFixed(2)} s`;
  } catch (error) {
    status.dataset.state = "failed";
    status.textContent = error.message;
  } finally {
    $("play").disabled = false;
  }
}

async function applySettings(event) {
  event.preventDefault();
  const status = $("settings-status");
  try {
    const response = await api("/api/settings", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ voice: $("settings-voice").value, speed: Number($("settings-speed").value) }),
    });
    const result = await response.json();
    status.textContent = result.applied_via === "database" ? "written to the database" : "applied";
    refresh();
  } catch (error) {
    status.textContent = error.message;
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("kokoro-api-key", apiKey);
  $("key-form").hidden = true;
  refresh();
  loadVoices();
});
$("audition").addEventListener("submit", audition);
$("settings").addEventListener("submit", applySettings);
refresh();
loadVoices();
setInterval(refresh, REFRESH_MS);
