// Progress for forms that answer with a one-time .p12 download: enrolment, an approved
// request, a recovered key.
// The page stays put while the file arrives, so the server echoes a random token in a
// cookie and we watch for it to say "done". Without JavaScript the form still works.
"use strict";
document.querySelectorAll("form[data-long-operation]").forEach(function (form) {
  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    var progress = form.querySelector("[data-progress]");
    var done = form.querySelector("[data-done]");
    var field = form.querySelector("input[name=download_token]");
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    var token = Array.from(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    if (field) { field.value = token; }
    // Disable after the browser has collected the form data, so the submission goes out.
    setTimeout(function () { if (button) { button.disabled = true; } }, 0);
    if (progress) { progress.hidden = false; }
    if (done) { done.hidden = true; }
    var timer = setInterval(function () {
      if (document.cookie.split("; ").indexOf("pkiportal_download=" + token) === -1) { return; }
      clearInterval(timer);
      document.cookie = "pkiportal_download=; Max-Age=0; path=/; SameSite=Strict";
      form.querySelectorAll("input[type=password]").forEach(function (input) { input.value = ""; });
      if (progress) { progress.hidden = true; }
      if (done) { done.hidden = false; }
      // What the page said before the download is stale now: an approved request is issued
      // and can no longer be withdrawn.
      document.querySelectorAll("[data-downloaded-state]").forEach(function (badge) {
        badge.textContent = badge.getAttribute("data-downloaded-label");
        badge.className = badge.getAttribute("data-downloaded-class") ||
          "badge state-" + badge.getAttribute("data-downloaded-state");
      });
      document.querySelectorAll("[data-hide-when-downloaded]").forEach(function (element) {
        element.hidden = true;
      });
      document.querySelectorAll("[data-show-when-downloaded]").forEach(function (element) {
        element.hidden = false;
      });
    }, 300);
  });
});
