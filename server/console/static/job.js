// smlocal console, the job page: each host's log stream, tailed through GetLogEvents, and a chart per
// metric through GetMetricData (both via the console's JSON feeds). Log lines are set as text, never HTML.
"use strict";
(function () {
  var MAX_LINES = 5000, LOG_EVERY = 1000, METRICS_EVERY = 2000, PAGES_PER_TICK = 20;
  var ended = false;

  function withParams(url, params) {
    var query = Object.keys(params).filter(function (k) { return params[k]; })
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]); }).join("&");
    if (!query) { return url; }
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + query;
  }
  function getJson(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      return r.json().then(function (body) { return r.ok ? body : Promise.reject(body); });
    });
  }

  // ---- logs --------------------------------------------------------------------------------------
  function Logs(section) {
    var streamsUrl = section.getAttribute("data-streams"), logsUrl = section.getAttribute("data-logs");
    var tabs = document.getElementById("log-tabs"), panes = document.getElementById("log-panes");
    var streams = {}, order = [];

    function select(name) {
      order.forEach(function (n) {
        var on = n === name;
        streams[n].tab.setAttribute("aria-selected", on ? "true" : "false");
        streams[n].pane.hidden = !on;
      });
    }
    function add(stream) {
      var tab = document.createElement("button");
      tab.type = "button";
      tab.setAttribute("role", "tab");
      tab.textContent = stream.host;
      tab.title = stream.name;
      tab.addEventListener("click", function () { select(stream.name); });
      var pane = document.createElement("pre");
      pane.className = "log";
      pane.setAttribute("data-stream", stream.name);
      pane.setAttribute("data-host", stream.host);
      tabs.appendChild(tab);
      panes.appendChild(pane);
      streams[stream.name] = {tab: tab, pane: pane, token: null};
      order.push(stream.name);
      var empty = document.getElementById("logs-empty");
      if (empty) { empty.remove(); }
      if (order.length === 1) { select(stream.name); } else { pane.hidden = true; }
    }
    function append(pane, events) {
      var stick = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
      events.forEach(function (e) {
        var line = document.createElement("div");
        line.className = "line";
        var when = document.createElement("span");
        when.className = "ts";
        when.textContent = new Date(e.timestamp).toLocaleTimeString() + " ";
        line.appendChild(when);
        line.appendChild(document.createTextNode(e.message));
        pane.appendChild(line);
      });
      while (pane.childNodes.length > MAX_LINES) { pane.removeChild(pane.firstChild); }
      if (stick) { pane.scrollTop = pane.scrollHeight; }
    }
    function drain(name, pages) {
      var s = streams[name];
      return getJson(withParams(logsUrl, {stream: name, token: s.token})).then(function (page) {
        s.token = page.nextToken || s.token;
        append(s.pane, page.events);
        if (page.events.length && pages > 1) { return drain(name, pages - 1); }
      });
    }
    function tick() {
      var last = ended;
      getJson(streamsUrl).then(function (body) {
        body.streams.forEach(function (s) { if (!streams[s.name]) { add(s); } });
        return Promise.all(order.map(function (n) { return drain(n, PAGES_PER_TICK); }));
      }).then(function () {
        // Every line is stored before the job shows a final status: one read after that gets the rest.
        if (last) { section.setAttribute("data-complete", "yes"); return; }
        setTimeout(tick, LOG_EVERY);
      }, function () { setTimeout(tick, LOG_EVERY * 3); });
    }
    tick();
  }

  // ---- metrics -----------------------------------------------------------------------------------
  function Metrics(section) {
    var url = section.getAttribute("data-metrics"), charts = document.getElementById("charts");
    var made = {};
    function chart(name) {
      if (made[name]) { return made[name]; }
      var figure = document.createElement("figure");
      figure.className = "chart";
      figure.setAttribute("data-metric", name);
      var caption = document.createElement("figcaption");
      caption.textContent = name;
      var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      var legend = document.createElement("div");
      legend.className = "legend";
      figure.appendChild(caption);
      figure.appendChild(svg);
      figure.appendChild(legend);
      charts.appendChild(figure);
      made[name] = {figure: figure, svg: svg, legend: legend};
      return made[name];
    }
    function tick() {
      var last = ended;
      getJson(url).then(function (body) {
        document.getElementById("metrics-period").textContent =
          "(GetMetricData, average per " + body.period + " s, per host)";
        body.metrics.forEach(function (m) {
          var c = chart(m.name);
          var count = window.SmlocalChart.draw(c.svg, m.series, {period: body.period});
          c.figure.setAttribute("data-points", String(count));
          while (c.legend.firstChild) { c.legend.removeChild(c.legend.firstChild); }
          m.series.forEach(function (s, i) {
            var item = document.createElement("span");
            item.className = "key line-" + (i % 6);
            var lastPoint = s.points[s.points.length - 1];
            item.textContent = s.host + (lastPoint ? ": " + window.SmlocalChart.format(lastPoint[1]) : ": no values");
            c.legend.appendChild(item);
          });
        });
        if (last) { section.setAttribute("data-complete", "yes"); return; }
        setTimeout(tick, METRICS_EVERY);
      }, function () { setTimeout(tick, METRICS_EVERY * 3); });
    }
    tick();
  }

  document.addEventListener("smlocal:status", function (event) { if (event.detail.terminal) { ended = true; } });
  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.querySelector("#live-summary [data-terminal]");
    ended = !!summary && summary.getAttribute("data-terminal") === "yes";
    var logs = document.getElementById("logs-section"), metrics = document.getElementById("metrics-section");
    if (logs) { Logs(logs); }
    if (metrics) { Metrics(metrics); }
  });
})();
