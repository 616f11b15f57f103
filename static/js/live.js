// Live updates. A page that wants them has <div hidden data-live-url="/ws/rentals/..." data-live-since="N">.
// The server pushes JSON: {type: "rental.changed", rental, event, html} or {type: "hello", event}.
// `html` holds out-of-band fragments (hx-swap-oob, ids rental-<pk>-status/-timeline) that htmx swaps;
// every change also fires "rental-changed" on <body> (the list table re-fetches on it).
// While the socket is up, polls marked data-live-poll run at most every 30 s; when it is down, at their own pace.
(function () {
  "use strict";
  var root = document.querySelector("[data-live-url]");
  if (!root || !window.WebSocket || !window.htmx) return;
  var live = (window.shopperLive = { connected: false, since: parseInt(root.dataset.liveSince, 10) });
  var attempts = 0, lastPoll = 0, SLOW_POLL_MS = 30000;

  function url() {
    var u = new URL(root.dataset.liveUrl, location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    if (!isNaN(live.since)) u.searchParams.set("since", live.since);
    return u.href;
  }

  function restoreCsrf() {  // pushed fragments are rendered without a request: no csrf input
    var token = "";
    try { token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; } catch (e) { return; }
    document.querySelectorAll("form[method=post]").forEach(function (form) {
      if (form.querySelector("input[name=csrfmiddlewaretoken]")) return;
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "csrfmiddlewaretoken"; input.value = token;
      form.prepend(input);
    });
  }

  function onMessage(e) {
    var msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    if (typeof msg.event === "number" && !(msg.event <= live.since)) live.since = msg.event;
    if (msg.type !== "rental.changed") return;
    if (msg.html) {
      htmx.swap(document.body, msg.html, { swapStyle: "none" });  // only the oob elements swap
      restoreCsrf();
      lastPoll = Date.now();
    }
    htmx.trigger(document.body, "rental-changed", { rental: msg.rental, event: msg.event });
  }

  var refusals = 0;  // handshakes refused in a row (Daphne reports a refused handshake as 1006)

  function connect() {
    var socket = new WebSocket(url()), opened = false;
    socket.onopen = function () { attempts = 0; refusals = 0; opened = true; live.connected = true; };
    socket.onmessage = onMessage;
    socket.onclose = function (e) {
      live.connected = false;
      if (e.code === 4401 || e.code === 4404) return;  // logged out / not yours: polling carries on
      // Never opened three times running: the server refuses us (logged out, not ours); stop trying.
      if (!opened && ++refusals >= 3) return;
      attempts += 1;
      var delay = Math.min(30000, 500 * Math.pow(2, attempts));
      setTimeout(connect, delay / 2 + Math.random() * delay / 2);
    };
  }

  document.body.addEventListener("htmx:beforeRequest", function (e) {
    if (!live.connected || !e.detail.elt.hasAttribute("data-live-poll")) return;
    if (Date.now() - lastPoll < SLOW_POLL_MS) { e.preventDefault(); return; }
    lastPoll = Date.now();
  });

  connect();
})();
