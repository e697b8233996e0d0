// The predict page's service worker: the page and its scripts load with no network. The page itself (GET /) and
// its scripts: from the network when it answers within 5 s (kept for later), else the kept copy. The runtime
// (LiteRT.js and its WebAssembly, /assets/vendor/): the kept copy at once, refreshed in the background (conditional
// requests, so an unchanged file costs a 304). The model bundle is kept by the page (offline.js), not here.
const SHELL = "placeid-shell-v1";
const PAGE = ["/", "/assets/page.js", "/assets/offline.js", "/assets/vendor/litert/core.js",
              "/assets/vendor/litert/wasm-utils.js"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(PAGE)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n.startsWith("placeid-shell-") && n !== SHELL).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

// A response worth keeping: complete, not redirected (a captive portal's page is not the app), of the type asked.
function keepable(request, response) {
  if (!response.ok || response.redirected || response.type !== "basic") return false;
  const type = response.headers.get("Content-Type") || "";
  return new URL(request.url).pathname === "/" ? type.startsWith("text/html") : !type.startsWith("text/html");
}

async function networkFirst(request) {
  const cache = await caches.open(SHELL);
  const kept = await cache.match(request, { ignoreSearch: true });
  // With a kept copy, a network slower than 5 s is no network (a navigation's request takes no abort signal).
  const slow = new Promise((resolve) => setTimeout(() => resolve(null), 5000));
  try {
    const network = fetch(request);
    const response = await (kept ? Promise.race([network, slow]) : network);
    if (response && keepable(request, response)) {
      await cache.put(request, response.clone());
      return response;
    }
    return kept || response;
  } catch (error) {
    if (kept) return kept;
    throw error;
  }
}

async function keptThenRefresh(event) {
  const cache = await caches.open(SHELL);
  const kept = await cache.match(event.request);
  const refresh = fetch(event.request).then(async (response) => {
    if (keepable(event.request, response)) await cache.put(event.request, response.clone());
    return response;
  });
  if (kept) {
    event.waitUntil(refresh.catch(() => {}));
    return kept;
  }
  return refresh;
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/assets/vendor/")) {
    event.respondWith(keptThenRefresh(event));
  } else if (url.pathname === "/" || url.pathname.startsWith("/assets/")) {
    event.respondWith(networkFirst(event.request));
  }
});
