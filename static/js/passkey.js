// Security keys and passkeys (WebAuthn): the browser side of accounts/views.py's JSON
// endpoints. The server's options carry binary fields as base64url; the browser wants
// ArrayBuffers, and its answer goes back as base64url again. Forms marked data-passkey
// stay hidden where the browser has no WebAuthn (the code forms beside them still work).
// What it says comes from the form's data-text-* attributes, in the page's language
// (templates/accounts/_passkey_texts.html); the English here stands in where one is missing.
"use strict";
(function () {
  if (!window.PublicKeyCredential || !navigator.credentials) { return; }

  function toBuffer(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toText(buffer) {
    if (!buffer) { return null; }
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      var copy = Object.assign({}, item);
      copy.id = toBuffer(item.id);
      return copy;
    });
  }

  function creationOptions(options) {
    options.challenge = toBuffer(options.challenge);
    options.user.id = toBuffer(options.user.id);
    options.excludeCredentials = descriptors(options.excludeCredentials);
    return options;
  }

  function requestOptions(options) {
    options.challenge = toBuffer(options.challenge);
    options.allowCredentials = descriptors(options.allowCredentials);
    return options;
  }

  function common(credential) {
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {}
    };
  }

  function registrationJSON(credential) {
    var out = common(credential);
    var response = credential.response;
    out.response = {
      clientDataJSON: toText(response.clientDataJSON),
      attestationObject: toText(response.attestationObject),
      transports: response.getTransports ? response.getTransports() : []
    };
    return out;
  }

  function assertionJSON(credential) {
    var out = common(credential);
    var response = credential.response;
    out.response = {
      clientDataJSON: toText(response.clientDataJSON),
      authenticatorData: toText(response.authenticatorData),
      signature: toText(response.signature),
      userHandle: toText(response.userHandle)
    };
    return out;
  }

  function text(form, name, english) {
    return form.getAttribute("data-text-" + name) || english;
  }

  function post(form, url, body) {
    var token = form.querySelector("input[name=csrfmiddlewaretoken]");
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": token ? token.value : "" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var refused = text(form, "refused", "The portal refused ({status}).");
          var error = new Error(data.detail || refused.replace("{status}", response.status));
          error.url = data.url;
          throw error;
        }
        return data;
      });
    });
  }

  function say(form, text) {
    var status = form.querySelector("[data-passkey-status]");
    if (status) { status.textContent = text; status.hidden = !text; }
  }

  function field(form, name) {
    var input = form.querySelector("[name=" + name + "]");
    return input ? input.value : "";
  }

  function failed(form, error) {
    if (error && error.name === "NotAllowedError") {
      say(form, text(form, "cancelled", "The security key was not used (cancelled or timed out). Try again."));
    } else if (error && error.name === "InvalidStateError") {
      say(form, text(form, "registered", "This security key is registered already."));
    } else {
      say(form, (error && error.message) || text(form, "failed", "Something went wrong. Try again."));
    }
    if (error && error.url) {
      var link = document.createElement("a");
      link.href = error.url;
      link.textContent = " " + text(form, "continue", "Continue");
      form.querySelector("[data-passkey-status]").appendChild(link);
    }
  }

  function register(form) {
    say(form, text(form, "touch", "Touch your security key, or confirm on your device…"));
    post(form, form.getAttribute("data-options-url"), {
      name: field(form, "name"), current_code: field(form, "current_code")
    }).then(function (options) {
      return navigator.credentials.create({ publicKey: creationOptions(options) });
    }).then(function (credential) {
      return post(form, form.getAttribute("data-url"), {
        credential: registrationJSON(credential), next: field(form, "next")
      });
    }).then(function (done) {
      if (done.backup_codes && done.backup_codes.length) { showCodes(form, done); return; }
      window.location.assign(done.redirect);
    }).catch(function (error) { failed(form, error); });
  }

  // The backup codes made with a first key: shown once, in the page, never stored.
  function showCodes(form, done) {
    var box = form.parentElement.querySelector("[data-passkey-codes]");
    if (!box) { codesWithoutTheirPlace(form, done); return; }
    var list = box.querySelector("ol");
    done.backup_codes.forEach(function (text) {
      var item = document.createElement("li");
      var code = document.createElement("code");
      code.textContent = text;
      item.appendChild(code);
      list.appendChild(item);
    });
    box.querySelector("[data-passkey-continue]").href = done.redirect;
    form.hidden = true;
    box.hidden = false;
    box.querySelector("h2").focus();
  }

  // A page without [data-passkey-codes] (a template that forgot it): the codes exist
  // nowhere else, so never navigate away from them. Say them in the status line, with the
  // way on as a link, and complain in the console; no status line: an alert.
  function codesWithoutTheirPlace(form, done) {
    var shown = text(form, "codes", "Your backup codes, shown only this once (write them down now):") +
      " " + done.backup_codes.join("  ");
    if (window.console) { console.error("passkey.js: no [data-passkey-codes] on this page"); }
    var status = form.querySelector("[data-passkey-status]");
    if (!status) { window.alert(shown); window.location.assign(done.redirect); return; }
    say(form, shown + ". ");
    var link = document.createElement("a");
    link.href = done.redirect;
    link.textContent = text(form, "kept", "I have kept them: continue");
    status.appendChild(link);
    form.querySelector("button[type=submit]").disabled = true;
  }

  function authenticate(form) {
    say(form, text(form, "touch", "Touch your security key, or confirm on your device…"));
    post(form, form.getAttribute("data-options-url"), {}).then(function (options) {
      return navigator.credentials.get({ publicKey: requestOptions(options) });
    }).then(function (credential) {
      return post(form, form.getAttribute("data-url"), {
        credential: assertionJSON(credential), next: field(form, "next")
      });
    }).then(function (done) {
      window.location.assign(done.redirect);
    }).catch(function (error) { failed(form, error); });
  }

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    form.hidden = false;
    var unsupported = form.parentElement.querySelector("[data-passkey-unsupported]");
    if (unsupported) { unsupported.hidden = true; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (form.getAttribute("data-passkey") === "register") { register(form); } else { authenticate(form); }
    });
  });
}());
