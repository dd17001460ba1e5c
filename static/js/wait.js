// After a wrong code the portal checks the next one only after a pause (1, 2, 4 ... seconds).
// The page says how long; this holds the button back as long, counting down, so that the
// right code typed at once is not sent too early. Without JavaScript the button stays: a
// code sent early is not checked, and the page says so again. A file, not inline script:
// the Content-Security-Policy allows scripts from the portal's own origin only.
"use strict";
document.querySelectorAll("button[data-wait-seconds]").forEach(function (button) {
  var left = parseInt(button.getAttribute("data-wait-seconds"), 10);
  if (!(left > 0)) { return; }
  var label = button.textContent;
  var until = Date.now() + left * 1000;
  button.disabled = true;
  function tick() {
    left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      button.disabled = false;
      button.textContent = label;
      return;
    }
    button.textContent = label + " (wait " + left + " s)";
    window.setTimeout(tick, Math.min(1000, until - Date.now()));
  }
  tick();
});
