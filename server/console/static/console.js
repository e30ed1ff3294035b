// smlocal console: live parts of server-rendered pages. Elements with data-live="<url>" are replaced by a
// fresh server-rendered fragment every data-live-every ms (HTML escaped on the server, nothing built here).
"use strict";
(function () {
  function refresh(el) {
    var every = parseInt(el.getAttribute("data-live-every") || "2000", 10);
    var untilTerminal = el.hasAttribute("data-live-until-terminal");
    var indicator = document.querySelector("[data-live-indicator]");
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fetch(el.getAttribute("data-live"), {headers: {"Accept": "text/html"}, credentials: "same-origin"})
        .then(function (r) { return r.ok || r.status === 400 ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          el.innerHTML = html;
          if (indicator) { indicator.textContent = "live · updated " + new Date().toLocaleTimeString(); }
          var summary = el.querySelector("[data-status]");
          if (summary) {
            document.dispatchEvent(new CustomEvent("smlocal:status", {detail: {
              status: summary.getAttribute("data-status"),
              terminal: summary.getAttribute("data-terminal") === "yes"}}));
            if (untilTerminal && summary.getAttribute("data-terminal") === "yes") { return; }
          }
          setTimeout(tick, every);
        })
        .catch(function () {
          if (indicator) { indicator.textContent = "not updated: the server does not answer"; }
          setTimeout(tick, every * 2);
        });
    }
    var first = el.querySelector("[data-terminal]");
    if (untilTerminal && first && first.getAttribute("data-terminal") === "yes") { return; }
    setTimeout(tick, every);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), refresh);
  });
})();
