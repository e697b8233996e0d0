// The predict page: answers on this device (offline.js, LiteRT.js) once the served model is kept here, online
// (POST /) until then or when the device copy cannot load. Place names in the browser's language, else English.
import { OfflineError, keptDescription, loadBest } from "/assets/offline.js";

const input = document.getElementById("image");
const drop = document.getElementById("drop");
const result = document.getElementById("result");
const preview = document.getElementById("preview");
const photo = document.getElementById("photo");
const offline = document.getElementById("offline");
const languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];

let device = null; // the OfflineBundle once ready
let reachable = navigator.onLine; // whether the service answered last time it was asked: the map needs a connection

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

function link(href, content) {
  const a = text("a", content);
  a.href = href; a.target = "_blank"; a.rel = "noopener";
  return a;
}

// placeid_edge.names.local_name: the first of the browser's languages that is English (the entry's name) or that
// the entry's names have; with none, English.
function localName(entry) {
  const names = (entry && entry.names) || {};
  const have = Object.fromEntries(Object.keys(names).map((tag) => [tag.split("-")[0].toLowerCase(), tag]));
  for (const tag of languages) {
    const primary = tag.split("-")[0].toLowerCase();
    if (primary === "en") break;
    if (have[primary]) return names[have[primary]];
  }
  return (entry && entry.name) || names.en || "";
}

function setStatus(message, state) {
  offline.textContent = message;
  offline.className = state || "";
}

function mapEmbed(location) {
  const { lat, lng } = location;
  const d = 0.006;
  const frame = document.createElement("iframe");
  frame.id = "map";
  frame.title = "map";
  frame.loading = "lazy";
  frame.referrerPolicy = "no-referrer";
  frame.src = `https://www.openstreetmap.org/export/embed.html?bbox=${lng - d},${lat - d / 2},${lng + d},${lat + d / 2}` +
    `&layer=mapnik&marker=${lat},${lng}`;
  return frame;
}

function show(answer) {
  result.replaceChildren();
  const mode = answer.answered === "device" ? "answered on this device" : "answered online";
  if (answer.unknown) {
    const heading = text("h2", "Unknown place", "unknown");
    heading.id = "unknown";
    result.append(heading);
    result.append(text("p", "This photo does not look like any place the model knows. Closest candidates:"));
  } else {
    const place = answer.place;
    const where = [place.city, place.country].filter(Boolean).join(", ");
    const heading = text("h2", localName(place));
    heading.id = "place-name";
    result.append(heading);
    result.append(text("p", `${where} · ${(place.probability * 100).toFixed(1)} % sure`));
    if (place.location && reachable && navigator.onLine) result.append(mapEmbed(place.location));
    if (place.map_url) {
      const p = text("p", "");
      p.append(link(place.map_url, "Show on the map"));
      result.append(p);
    }
    if (place.nearby && place.nearby.length) {
      result.append(text("h3", "Nearby"));
      const list = document.createElement("ul");
      list.id = "nearby";
      for (const site of place.nearby) {
        const distance = site.distance_km != null ? ` · ${site.distance_km.toFixed(2)} km` : "";
        list.append(text("li", `${localName(site)} (${site.kind})${distance}`));
      }
      result.append(list);
    }
    result.append(text("h3", "Other candidates"));
  }
  const table = document.createElement("table");
  table.id = "candidates";
  for (const candidate of answer.top_k) {
    const row = table.insertRow();
    row.insertCell().textContent = device && device.places[candidate.place_id] ? localName(device.places[candidate.place_id]) : candidate.name;
    row.insertCell().textContent = `${(candidate.probability * 100).toFixed(1)} %`;
  }
  result.append(table);
  if (answer.gps) {
    const p = text("p", `The photo carries a GPS position: ${answer.gps.lat.toFixed(5)}, ${answer.gps.lng.toFixed(5)} `);
    p.append(link(answer.gps.map_url, "(map)"));
    result.append(p);
  }
  const footer = text("p", "", "muted");
  const badge = text("span", mode, "answered");
  badge.id = "answered";
  footer.append(badge, ` model ${answer.model_version} · ${answer.timing_ms.total.toFixed(1)} ms`);
  result.append(footer);
}

async function askOnline(file) {
  const form = new FormData();
  form.append("image", file);
  let response;
  try {
    response = await fetch(window.location.pathname, { method: "POST", body: form });
    reachable = true;
  } catch (error) {
    reachable = false;
    throw error;
  }
  const answer = await response.json();
  if (!response.ok) {
    const error = new Error(`Error ${response.status}: ${answer.error ? answer.error.message : "unknown"}`);
    error.shown = true;
    throw error;
  }
  return { ...answer, answered: "online" };
}

// The answer for a photo: on this device when the model is kept here, else online. A photo the device cannot
// answer for (one this browser cannot decode, HEIC say, or beyond the limits) goes to the service when it can be
// reached, which decodes more formats and says why it refuses the others.
async function classify(file) {
  if (!device) return askOnline(file);
  try {
    return await device.predict(file);
  } catch (error) {
    if (!reachable) throw error;
    return askOnline(file);
  }
}

let asked = 0; // the latest photo picked: an earlier one's answer arriving late is not shown

async function send(file) {
  if (!file) return;
  const mine = ++asked;
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  photo.style.display = "block";
  result.replaceChildren(text("p", "Looking…", "muted"));
  try {
    const answer = await classify(file);
    if (mine === asked) show(answer);
  } catch (error) {
    if (mine !== asked) return;
    const message = error.shown || error instanceof OfflineError ? error.message : `The request failed: ${error}`;
    result.replaceChildren(text("p", message, "error"));
    result.firstChild.id = "error";
  }
}

// Resolves once the service worker controls the page (or after a few seconds without one).
async function underServiceWorker(timeoutMs = 5000) {
  if (!("serviceWorker" in navigator) || navigator.serviceWorker.controller) return;
  await Promise.race([
    new Promise((resolve) => navigator.serviceWorker.addEventListener("controllerchange", resolve, { once: true })),
    new Promise((resolve) => setTimeout(resolve, timeoutMs)),
  ]);
}

// The runtime's files this page loaded (LiteRT.js picks one of two builds), kept by the service worker's cache too,
// so that the page can start it offline.
async function keepRuntime() {
  const shell = await caches.open("placeid-shell-v1");
  const loaded = performance.getEntriesByType("resource").map((entry) => new URL(entry.name))
    .filter((url) => url.origin === location.origin && url.pathname.startsWith("/assets/vendor/litert/litert_wasm"));
  for (const url of loaded) {
    if (!(await shell.match(url.pathname))) await shell.add(url.pathname);
  }
  return loaded.length > 0;
}

// Keep (or refresh) the offline copy and load it; the page works online meanwhile, and if it fails.
async function prepareDevice() {
  if (!("caches" in window) || !window.isSecureContext) {
    setStatus("This browser cannot keep the model (it needs a secure page): photos are sent to the service.", "failed");
    return null;
  }
  try {
    const before = (await keptDescription())?.version;
    await underServiceWorker(); // so that the runtime's WebAssembly, fetched next, is kept for offline use
    const { bundle, fresh, reached, problem } = await loadBest((served, done, total) => {
      if (served.version !== before) setStatus(`Downloading model ${served.version} for offline use… ${done}/${total}`);
    });
    device = bundle;
    reachable = reached;
    const kept = await keepRuntime().catch(() => false);
    if (problem) {
      setStatus(`Offline copy: model ${device.version} (the served model could not be kept: ${problem.message}).`, "ready");
    } else if (fresh) {
      setStatus(`Ready offline: photos are recognised on this device (model ${device.version})` +
        `${kept ? "" : "; reload once to keep the runtime too"}.`, "ready");
    } else {
      setStatus(`Offline: photos are recognised on this device (model ${device.version}).`, "ready");
    }
    return device;
  } catch (error) {
    setStatus(`The offline copy is not available (${error.message}); photos are sent to the service.`, "failed");
    return null;
  }
}

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js").catch(() => {});
}

input.addEventListener("change", () => send(input.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  send(event.dataTransfer.files[0]);
});

// For scripts and tests: wait for the device copy, and classify a Blob as the page would.
window.placeid = {
  ready: prepareDevice(),
  classify,
  get mode() { return device ? "device" : "online"; },
  get version() { return device ? device.version : null; },
};
