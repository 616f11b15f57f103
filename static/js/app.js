// Page behaviour that used to be inline (onclick=, hx-on, an htmx trigger filter): the
// Content-Security-Policy (shopper/csp.py) allows scripts from this site only, and no eval.
(function () {
  "use strict";

  // <button data-copy="#selector">: copy that element's text; if the clipboard is refused,
  // select the text so Ctrl+C works.
  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("button[data-copy]");
    if (!button) return;
    var el = document.querySelector(button.dataset.copy);
    if (!el) return;
    function selectIt() {
      getSelection().selectAllChildren(el);
      button.textContent = "Press Ctrl+C";
    }
    if (!navigator.clipboard) return selectIt();
    navigator.clipboard.writeText(el.textContent).then(function () {
      button.textContent = "Copied ✓";
    }, selectIt);
  });

  // <form data-confirm="question">: ask before submitting (was an inline onsubmit=).
  document.addEventListener("submit", function (e) {
    var question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });

  // The costs filters (form[data-spend-filters]): picking "Custom dates" waits for the dates
  // instead of asking at once, and empty fields stay out of the URL.
  document.addEventListener("htmx:confirm", function (e) {
    var form = e.target;
    if (!form.matches || !form.matches("form[data-spend-filters]")) return;
    var trigger = e.detail.triggeringEvent;
    var field = trigger && trigger.target;
    if (trigger && trigger.type === "change" && field && field.name === "period" && field.value === "custom") {
      e.preventDefault();
    }
  });
  document.addEventListener("htmx:configRequest", function (e) {
    if (!e.target.matches || !e.target.matches("form[data-spend-filters]")) return;
    var params = e.detail.parameters;
    for (var key of Object.keys(params)) if (!params[key]) delete params[key];
  });

  // A refused action (common/pages.py) answers htmx with its 4xx status and a message placed
  // before the element it would have updated (HX-Reswap). htmx ignores 4xx bodies by default;
  // the X-Refusal header marks this one as meant to be shown.
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.xhr && e.detail.xhr.getResponseHeader("X-Refusal")) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  // The browser's time zone, for the server to render times in (shopper/middleware.py,
  // TimeZoneMiddleware). IANA names are plain cookie characters. The login page sets it, so
  // every page after it is in local time.
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && /^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone) && document.cookie.indexOf("tz=" + zone) === -1) {
      document.cookie = "tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
    }
  } catch (err) { /* no Intl: times stay in UTC, which the pages say */ }

  // <a data-key-download>: once the key is downloaded, "Done" no longer asks about it (the
  // server drops the question too once the download is on the timeline).
  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("a[data-key-download]");
    if (!link) return;
    document.querySelectorAll("form[data-key-unsaved]").forEach(function (form) {
      form.removeAttribute("hx-confirm");
      form.removeAttribute("data-key-unsaved");
    });
  });

  // <… data-elapsed-since="ISO time">: count the wait up every second while a machine is on
  // its way (the status fragment is only re-sent when something changes).
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function elapsedText(seconds) {
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + pad(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + pad(Math.floor(seconds / 60) % 60) + " min";
  }
  setInterval(function () {
    document.querySelectorAll("[data-elapsed-since]").forEach(function (el) {
      var since = Date.parse(el.dataset.elapsedSince);
      if (!isNaN(since)) el.textContent = elapsedText(Math.max(0, Math.floor((Date.now() - since) / 1000)));
    });
  }, 1000);

  // <time data-when="Y-m-d H:i"> without data-zone was rendered without knowing the user's zone
  // (a fragment pushed by the live relay, or the first page before the tz cookie existed): write
  // it in the page's zone (<body data-time-zone>, else the browser's) the way the server writes
  // the others (the "when" filter: the zone as its UTC offset).
  function pageZone() {
    return document.body.dataset.timeZone || Intl.DateTimeFormat().resolvedOptions().timeZone;
  }
  function offsetLabel(parts) {
    // "GMT+09:00", "GMT-05:00", "GMT+05:30", "GMT" -> "UTC+9", "UTC-5", "UTC+5:30", "UTC"
    var m = /^GMT(?:([+-])(\d{1,2})(?::(\d{2}))?)?$/.exec(parts.timeZoneName || "");
    if (!m || !m[1]) return "UTC";
    var rest = m[3] && m[3] !== "00" ? ":" + m[3] : "";
    return "UTC" + m[1] + parseInt(m[2], 10) + rest;
  }
  function localize(el) {
    var moment = new Date(el.getAttribute("datetime"));
    if (isNaN(moment)) return;
    var zone = pageZone();
    var parts = {};
    new Intl.DateTimeFormat("en-GB", {
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit", hourCycle: "h23", timeZone: zone, timeZoneName: "longOffset"
    }).formatToParts(moment).forEach(function (p) { parts[p.type] = p.value; });
    var map = { Y: parts.year, m: parts.month, d: parts.day, H: parts.hour, i: parts.minute, s: parts.second };
    var text = el.dataset.when.replace(/[YmdHis]/g, function (c) { return map[c]; });
    el.textContent = text + " " + offsetLabel(parts);
    el.dataset.zone = zone;
  }
  function localizeAll(root) {
    if (!root.querySelectorAll) return;
    if (root.matches && root.matches("time[data-when]:not([data-zone])")) localize(root);
    root.querySelectorAll("time[data-when]:not([data-zone])").forEach(localize);
  }
  try {
    localizeAll(document);
    new MutationObserver(function (records) {
      records.forEach(function (r) { r.addedNodes.forEach(localizeAll); });
    }).observe(document.body, { childList: true, subtree: true });
  } catch (err) { /* no Intl: the times stay in UTC and say so */ }

  // ---- The offers page (issue 18): its filters form (#offer-filters) and results. ----
  // A value the browser rejects (constraint validation) is never silently dropped: the field
  // is marked (aria-invalid, a message starting with its label) and the results say that filter
  // was not applied. The server does the same for what it refuses (data-error-field in the
  // results). Back/forward: htmx restores the results; the form is refilled from the URL.
  function offerForm() { return document.getElementById("offer-filters"); }
  function fieldLabel(el) {
    var label = el.id && document.querySelector('label[for="' + el.id + '"]');
    if (label) return label.textContent.trim();
    return el.getAttribute("aria-label") || el.name;
  }
  function markField(el, message) {
    el.setAttribute("aria-invalid", "true");
    var box = el.closest(".field");
    if (box) box.classList.add("has-error");
    var out = el.id && document.getElementById(el.id + "-error");
    if (out) out.textContent = message;
    var more = el.closest("details");
    if (more) more.open = true;
  }
  function clearField(el) {
    if (!el.hasAttribute("aria-invalid")) return;
    el.removeAttribute("aria-invalid");
    var box = el.closest(".field");
    if (box) box.classList.remove("has-error");
    var out = el.id && document.getElementById(el.id + "-error");
    if (out) out.textContent = "";
  }
  var pendingNotes = null; // the browser's refusals of the request under way
  document.addEventListener("htmx:configRequest", function (e) {
    var form = offerForm();
    if (!form || e.detail.elt !== form) return;
    var notes = [];
    var params = e.detail.parameters;
    var names = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      names[el.name] = true;
      if (!el.willValidate) return;
      if (el.validity.valid) { clearField(el); return; }
      var message = fieldLabel(el) + ": " + el.validationMessage;
      markField(el, message + " Not applied.");
      notes.push(message);
      params.delete(el.name); // sent without it, and the results say so
    });
    // Empty fields stay out of the URL (the state that matters is what is set).
    Object.keys(names).forEach(function (name) {
      var values = params.getAll(name).filter(function (v) { return v !== ""; });
      params.delete(name);
      values.forEach(function (v) { params.append(name, v); });
    });
    pendingNotes = notes;
    e.detail.errors = []; // htmx would halt on them: the request goes without those fields
  });
  // The same query again (a text field's change after its debounced input) replaces the
  // history entry instead of adding one, so one Back press goes back one step.
  document.addEventListener("htmx:beforeHistoryUpdate", function (e) {
    var update = e.detail.history;
    if (!update || update.type !== "push" || !offerForm()) return;
    var next = new URL(update.path, location.href);
    if (next.pathname + next.search === location.pathname + location.search) update.type = "replace";
  });
  function showNotes(results, notes) {
    if (!notes || !notes.length) return;
    var box = document.createElement("div");
    box.className = "msg msg-error";
    box.setAttribute("role", "alert");
    box.dataset.clientNotes = "";
    notes.forEach(function (text) {
      var line = document.createElement("div");
      line.textContent = text + " This filter was not applied.";
      box.appendChild(line);
    });
    results.insertBefore(box, results.firstChild);
  }
  function markServerErrors(form, results) {
    results.querySelectorAll("[data-error-field]").forEach(function (note) {
      var el = form.querySelector('[name="' + note.dataset.errorField + '"]:not([type=checkbox])') ||
        form.querySelector('[name="' + note.dataset.errorField + '"]');
      if (el) markField(el, note.dataset.errorMessage + " Not applied.");
    });
  }
  // The form as the URL says (back/forward, a header or pager link): every field, no marks.
  function fillForm(form, search) {
    var params = new URLSearchParams(search);
    var gpuTerms = [];
    params.getAll("gpu").forEach(function (v) {
      v.split(",").forEach(function (t) { t = t.trim(); if (t && gpuTerms.indexOf(t) < 0) gpuTerms.push(t); });
    });
    var boxes = form.querySelectorAll("input[type=checkbox][name=gpu]");
    var picked = [];
    boxes.forEach(function (box) {
      box.checked = gpuTerms.indexOf(box.value) >= 0;
      if (box.checked) picked.push(box.value);
    });
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      clearField(el);
      if (el.name === "gpu" && el.type === "text") {
        el.value = gpuTerms.filter(function (t) { return picked.indexOf(t) < 0; }).join(", ");
      } else if (el.type === "checkbox" && el.name !== "gpu") {
        el.checked = params.getAll(el.name).indexOf(el.value) >= 0;
      } else if (el.tagName === "SELECT" || el.tagName === "INPUT") {
        if (el.type !== "checkbox" && el.type !== "submit") el.value = params.get(el.name) || "";
      }
    });
  }
  var syncFormAfterSwap = false;
  document.addEventListener("htmx:beforeRequest", function (e) {
    var form = offerForm();
    if (form && e.detail.elt !== form && e.detail.elt.closest && e.detail.elt.closest("#offer-results")) {
      syncFormAfterSwap = true; // a sort header or pager link: the form follows the URL
      pendingNotes = null;
    }
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    var form = offerForm();
    var results = document.getElementById("offer-results");
    if (!form || !results || (e.detail.target && e.detail.target.id !== "offer-results")) return;
    if (syncFormAfterSwap) { fillForm(form, location.search); syncFormAfterSwap = false; }
    markServerErrors(form, results);
    showNotes(results, pendingNotes);
    pendingNotes = null;
  });
  function afterHistory() {
    var form = offerForm();
    var results = document.getElementById("offer-results");
    if (!form) return;
    fillForm(form, location.search);
    if (results) markServerErrors(form, results);
  }
  document.addEventListener("htmx:historyRestore", afterHistory);
  // htmx restores on popstate first (its own listener runs before this one): refill after it.
  window.addEventListener("popstate", function () { setTimeout(afterHistory, 0); });

  // The navigation collapses behind a menu button on narrow screens (static/css/app.css).
  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("button.nav-toggle");
    if (!button) return;
    var open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    var bar = button.closest(".topbar");
    if (bar) bar.classList.toggle("nav-open", open);
  });
})();
