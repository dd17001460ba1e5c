// The revoke form's "since when may the key have been in other hands" belongs to a key
// compromise only: shown, and sent, only while that reason is chosen. Without
// JavaScript the field stays, and the server refuses a date given with another reason.
"use strict";
document.querySelectorAll("[data-only-for-reason]").forEach(function (field) {
  var form = field.closest("form");
  var wanted = field.getAttribute("data-only-for-reason");
  function update() {
    var chosen = form.querySelector("input[name=reason]:checked");
    var shown = chosen !== null && chosen.value === wanted;
    field.hidden = !shown;
    // A disabled input is not submitted: a date typed before switching reason goes nowhere.
    field.querySelectorAll("input").forEach(function (input) { input.disabled = !shown; });
  }
  form.addEventListener("change", update);
  update();
});
