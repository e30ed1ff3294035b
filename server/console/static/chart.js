// smlocal console: a small SVG line chart, one line per host, drawn with DOM calls only (names and values
// are set as text, never parsed as HTML). SmlocalChart.draw(svgElement, series, {period: seconds}).
"use strict";
window.SmlocalChart = (function () {
  var NS = "http://www.w3.org/2000/svg";
  var W = 640, H = 220, L = 56, R = 12, T = 12, B = 30;

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function fmt(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.001 || a >= 1e6)) { return v.toExponential(2); }
    return String(Math.round(v * 10000) / 10000);
  }
  function clock(ms) { return new Date(ms).toLocaleTimeString(); }

  function draw(svg, series, opts) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var all = [];
    series.forEach(function (s) { s.points.forEach(function (p) { all.push(p); }); });
    if (!all.length) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", "class": "chart-empty"},
                         "no values yet"));
      return 0;
    }
    var t0 = Math.min.apply(null, all.map(function (p) { return p[0]; }));
    var t1 = Math.max.apply(null, all.map(function (p) { return p[0]; }));
    var v0 = Math.min.apply(null, all.map(function (p) { return p[1]; }));
    var v1 = Math.max.apply(null, all.map(function (p) { return p[1]; }));
    if (t1 === t0) { t0 -= 1000; t1 += 1000; }
    if (v1 === v0) { var pad = Math.abs(v0) * 0.1 || 1; v0 -= pad; v1 += pad; }
    function x(t) { return L + (t - t0) / (t1 - t0) * (W - L - R); }
    function y(v) { return T + (v1 - v) / (v1 - v0) * (H - T - B); }
    [v0, (v0 + v1) / 2, v1].forEach(function (v) {
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), "class": "grid"}));
      svg.appendChild(el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "class": "tick"}, fmt(v)));
    });
    svg.appendChild(el("text", {x: L, y: H - 8, "class": "tick"}, clock(t0)));
    svg.appendChild(el("text", {x: W - R, y: H - 8, "text-anchor": "end", "class": "tick"}, clock(t1)));
    series.forEach(function (s, i) {
      if (!s.points.length) { return; }
      var line = s.points.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" ");
      svg.appendChild(el("polyline", {points: line, "class": "line line-" + (i % 6)}));
      if (s.points.length <= 200) {
        s.points.forEach(function (p) {
          var dot = el("circle", {cx: x(p[0]), cy: y(p[1]), r: 2.5, "class": "dot line-" + (i % 6)});
          dot.appendChild(el("title", {}, s.host + " · " + clock(p[0]) + " · " + fmt(p[1])));
          svg.appendChild(dot);
        });
      }
    });
    return all.length;
  }

  return {draw: draw, format: fmt};
})();
