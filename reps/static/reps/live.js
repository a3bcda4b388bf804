// Live updates for the rep pages, without a framework: every few seconds ask the server for the
// changing part of the page and swap it in. Pages work without this (reload to see news).
(function () {
  "use strict";

  function poll(el, url, every, apply) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url(), { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
        .then(function (response) {
          // Logged out meanwhile: reload, which leads to the login page (and back here after it).
          if (response.status === 401 || response.redirected) { window.location.reload(); return; }
          if (response.status === 200) return response.text().then(function (html) { apply(html, response); });
        })
        .catch(function () { /* offline for a moment: the next tick tries again */ })
        .finally(function () { busy = false; });
    }, every * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var rows = document.getElementById("lead-rows");
    if (rows && rows.dataset.every) {
      poll(rows, function () { return rows.dataset.live; }, parseFloat(rows.dataset.every), function (html) {
        var known = {};
        rows.querySelectorAll("tr[data-lead]").forEach(function (tr) { known[tr.dataset.lead] = true; });
        rows.innerHTML = html;
        rows.querySelectorAll("tr[data-lead]").forEach(function (tr) { if (!known[tr.dataset.lead]) tr.classList.add("fresh"); });
      });
    }
    var live = document.getElementById("live");
    if (live && live.dataset.every) {
      poll(live, function () { return live.dataset.live + "?v=" + encodeURIComponent(live.dataset.version); },
        parseFloat(live.dataset.every), function (html, response) {
          live.innerHTML = html;
          live.dataset.version = response.headers.get("X-Version") || "";
        });
    }
  });
})();
