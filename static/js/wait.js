// After a wrong code the portal checks the next one only after a pause (1, 2, 4 ... seconds).
// The page says how long; this holds the button back as long, counting down, so that the
// right code typed at once is not sent too early. Without JavaScript the button stays: a
// code sent early is not checked, and the page says so again. A file, not inline script:
// the Content-Security-Policy allows scripts from the portal's own origin only.
//
// The button is held with aria-disabled, not disabled: a disabled default button makes the
// browser drop Enter (and clicks) without a sign. Held this way, a try during the pause is
// answered in the form's status line ("Wait 3 more seconds"), and the code it would have
// sent is sent when the pause ends, unless it was changed since: the person asked for that
// send, and the pause (30 s at most) is shorter than a code's life (its step and the next).
//
// The words are the page's, in its language: data-* attributes of the [data-wait-notice]
// element, "{seconds}" standing for the number. A sentence with a count has one attribute
// per plural category of the page's language (Intl.PluralRules: "-one", "-other", ...):
//   data-wait-sent-one / -other   "Wait {seconds} more second: your code is sent then."
//   data-wait-send-one / -other   "Wait {seconds} more second, then send your code."
//   data-wait-sending             "Sending your code."
//   data-wait-countdown           "(wait {seconds} s)", after the button's own label
// Any the page does not give is said in English, as before.
"use strict";
var WAIT_ENGLISH = {
  "sent-one": "Wait {seconds} more second: your code is sent then.",
  "sent-other": "Wait {seconds} more seconds: your code is sent then.",
  "send-one": "Wait {seconds} more second, then send your code.",
  "send-other": "Wait {seconds} more seconds, then send your code.",
  "sending": "Sending your code.",
  "countdown": "(wait {seconds} s)"
};

// The page's words for `key`, else English's; `counted`: a sentence with a form for each
// plural category, chosen by `seconds`.
function waitText(element, key, seconds, counted) {
  var name = key;
  if (counted) {
    var category = "other";
    try {
      category = new Intl.PluralRules(document.documentElement.lang || "en").select(seconds);
    } catch (error) { /* an unknown language: its "other" form */ }
    name = key + "-" + category;
    if (!(element && element.getAttribute("data-wait-" + name))) {
      // A form the page does not give: its "other", else English's own choice.
      name = element && element.getAttribute("data-wait-" + key + "-other") ?
        key + "-other" : key + "-" + (seconds === 1 ? "one" : "other");
    }
  }
  var text = (element && element.getAttribute("data-wait-" + name)) || WAIT_ENGLISH[name] || "";
  return text.split("{seconds}").join(String(seconds));
}

document.querySelectorAll("button[data-wait-seconds]").forEach(function (button) {
  var left = parseInt(button.getAttribute("data-wait-seconds"), 10);
  if (!(left > 0)) { return; }
  var form = button.form;
  var notice = form.querySelector("[data-wait-notice]");
  var code = form.elements.namedItem("code");
  var label = button.textContent;
  var until = Date.now() + left * 1000;
  var waiting = true;
  var asked = null;  // the code a try during the pause asked to send, sent when it ends

  function say(text) {
    if (notice) { notice.textContent = text; }
  }

  form.addEventListener("submit", function (event) {
    if (!waiting) { return; }
    event.preventDefault();
    var seconds = Math.max(1, Math.ceil((until - Date.now()) / 1000));
    if (code && code.value.trim()) {
      asked = code.value;
      say(waitText(notice, "sent", seconds, true));
    } else {
      asked = null;
      say(waitText(notice, "send", seconds, true));
    }
  });
  if (code) {
    code.addEventListener("input", function () {
      // Changed after the try: perhaps half typed when the pause ends. Not sent on its own.
      if (asked !== null && code.value !== asked) {
        asked = null;
        say("");
      }
    });
  }

  button.setAttribute("aria-disabled", "true");
  function tick() {
    left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      waiting = false;
      button.removeAttribute("aria-disabled");
      button.textContent = label;
      if (asked !== null && code && code.value === asked) {
        say(waitText(notice, "sending"));
        button.click();
      } else {
        say("");
      }
      return;
    }
    button.textContent = label + " " + waitText(notice, "countdown", left);
    window.setTimeout(tick, Math.min(1000, until - Date.now()));
  }
  tick();
});
