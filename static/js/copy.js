// A "Copy" button for a value shown once (a new API token). Without JavaScript, or where
// the clipboard is refused, the read-only field is still there to select and copy by hand.
// What it says comes from the page (the Content-Security-Policy allows no inline script),
// so it is in the page's language.
"use strict";
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  var copied = button.parentElement.querySelector("[data-copied]");
  if (!field || !navigator.clipboard) { return; }
  button.hidden = false;
  button.addEventListener("click", function () {
    field.select();
    navigator.clipboard.writeText(field.value).then(function () {
      if (copied) { copied.hidden = false; }
    }, function () {
      if (copied) {
        // The page's words (data-copy-failed, in its language), else these.
        copied.textContent = copied.getAttribute("data-copy-failed") ||
          "Select the token and copy it by hand.";
        copied.hidden = false;
      }
    });
  });
});
