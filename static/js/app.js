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
})();
