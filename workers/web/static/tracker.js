/* leadcycle tracker: first-party, dependency-free, talks only to the collector that served it.
 *
 *   <script async src="https://COLLECTOR/v1/tracker.js" data-key="WRITE_KEY"></script>
 *
 * Sends page_view on load; content_download for clicks on links with data-leadcycle-download
 * (the attribute's value is the content id); form_submit for forms with data-leadcycle-form.
 * API: leadcycle.identify(email, traits, signature), leadcycle.track(type, properties),
 * leadcycle.unsubscribe(email, signature). `signature` is what the site's server computed for
 * the email (hex HMAC-SHA256 of the lower-cased email keyed with the site's server key,
 * docs/http.md "Trust model"); without it an identify cannot link the visitor to a known lead
 * and an unsubscribe changes no lead.
 * Events are batched and flushed every 2 s, at 10 events, and with sendBeacon on page hide.
 * Each event keeps its creation time (occurred_at) and gets the send time (sent_at) when it
 * leaves: the collector corrects both for this device's clock.
 */
(function () {
  "use strict";
  if (window.leadcycle && window.leadcycle.version) return; // loaded twice: keep the first

  var script = document.currentScript;
  var key = script && script.getAttribute("data-key");
  var endpoint = new URL("/v1/track", script ? script.src : location.href);
  endpoint.searchParams.set("key", key || "");
  var COOKIE = "lc_aid";
  var MAX_BATCH = 10;
  var queue = [];
  var timer = null;

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function anonymousId() {
    var match = document.cookie.match(/(?:^|;\s*)lc_aid=([A-Za-z0-9._:-]{1,128})/);
    var id = match ? match[1] : uuid();
    // First-party cookie on the page's own site, refreshed on every visit: about 13 months.
    document.cookie = COOKIE + "=" + id + "; path=/; max-age=34128000; samesite=lax" +
      (location.protocol === "https:" ? "; secure" : "");
    return id;
  }

  var anon = anonymousId();

  function cut(text, n) {
    return text ? String(text).slice(0, n) : null;
  }

  function scalars(obj) {
    // Extra properties must be scalars (docs/contract.md); anything else is dropped here.
    var out = {};
    Object.keys(obj || {}).slice(0, 24).forEach(function (k) {
      var v = obj[k];
      if (v === null || ["string", "number", "boolean"].indexOf(typeof v) >= 0) {
        out[cut(k, 64)] = typeof v === "string" ? cut(v, 1024) : v;
      }
    });
    return out;
  }

  function enqueue(type, props, extra) {
    var props2 = scalars(props);
    props2.url = cut(location.href, 2048);
    props2.title = cut(document.title, 512);
    if (document.referrer) props2.referrer = cut(document.referrer, 2048);
    var ev = {
      event_id: uuid(),
      type: type,
      occurred_at: new Date().toISOString(),
      anonymous_id: anon,
      properties: props2,
      context: { locale: cut(navigator.language, 35) }
    };
    Object.keys(extra || {}).forEach(function (k) { ev[k] = extra[k]; });
    queue.push(ev);
    if (queue.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = setTimeout(function () { flush(false); }, 2000);
  }

  function flush(leaving) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (!queue.length) return;
    // text/plain is a CORS-safelisted type: no preflight, and sendBeacon may carry it.
    // The device's clock at sending: the collector keeps only the interval sent_at -
    // occurred_at, so a wrong clock does not move the events (docs/http.md, "Device clocks").
    var sentAt = new Date().toISOString();
    var batch = queue.splice(0, queue.length).map(function (ev) {
      ev.sent_at = sentAt;
      return ev;
    });
    var body = JSON.stringify({ batch: batch });
    if (leaving && navigator.sendBeacon) {
      if (navigator.sendBeacon(endpoint.href, new Blob([body], { type: "text/plain" }))) return;
    }
    fetch(endpoint.href, {
      method: "POST", body: body, keepalive: true, credentials: "omit",
      headers: { "Content-Type": "text/plain" }
    }).catch(function () { /* the visit goes on; events are best effort */ });
  }

  document.addEventListener("click", function (e) {
    var link = e.target && e.target.closest && e.target.closest("a[data-leadcycle-download]");
    if (link) {
      enqueue("content_download", {
        content_id: cut(link.getAttribute("data-leadcycle-download"), 128),
        download_url: cut(link.href, 1024)
      });
    }
  }, true);

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form && form.getAttribute && form.hasAttribute("data-leadcycle-form")) {
      enqueue("form_submit", { form_id: cut(form.getAttribute("data-leadcycle-form"), 128) });
    }
  }, true);

  addEventListener("pagehide", function () { flush(true); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush(true);
  });

  window.leadcycle = {
    version: "1",
    anonymousId: function () { return anon; },
    track: function (type, properties) { enqueue(type, properties); },
    identify: function (email, traits, signature) {
      var extra = { email: cut(email, 254) };
      if (signature) extra.email_signature = cut(signature, 128);
      enqueue("identify", traits, extra);
      flush(false); // identification should not wait for the batch timer
    },
    unsubscribe: function (email, signature) {
      // Changes a lead only with the signature a signed unsubscribe link carries.
      var extra = { email: cut(email, 254) };
      if (signature) extra.email_signature = cut(signature, 128);
      enqueue("unsubscribe", {}, extra);
      flush(false);
    },
    flush: function () { flush(false); }
  };

  enqueue("page_view", {});
})();
