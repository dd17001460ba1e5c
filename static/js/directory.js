// Search as you type on /directory/: progressive enhancement over the plain GET form.
// The form works without JavaScript; with it, the results fragment (?partial=1) replaces
// the results in place while typing, and the address bar keeps a shareable URL.
"use strict";
(function () {
  var form = document.querySelector("form[data-live-search]");
  if (!form || !window.fetch || !window.URLSearchParams) { return; }
  var results = document.getElementById(form.getAttribute("data-live-search"));
  var timer = null;
  var controller = null;

  function update() {
    var params = new URLSearchParams(new FormData(form));
    params.delete("after");
    var url = form.action.split("?")[0] + "?" + params.toString();
    if (controller) { controller.abort(); }
    controller = window.AbortController ? new AbortController() : null;
    fetch(url + "&partial=1", {
      credentials: "same-origin",
      signal: controller ? controller.signal : undefined,
    }).then(function (response) {
      // 400 carries a rendered message (a query too long, say): show it too.
      if (!response.ok && response.status !== 400) { throw new Error(response.status); }
      return response.text();
    }).then(function (html) {
      results.innerHTML = html;
      window.history.replaceState(null, "", url);
    }).catch(function () { /* aborted or offline: the plain form still works */ });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(update, 200);
  }
  form.addEventListener("input", later);
  form.addEventListener("change", later);
})();
