/*
 * Strategy@Home charts: small helpers over plotly.js, which the portal serves itself
 * ({% static 'vendor/plotly.min.js' %}, from the `plotly` PyPI package): no CDN, works offline.
 *
 * Load both scripts, then call a helper from the page's `scripts` block:
 *
 *   <script src="{% static 'vendor/plotly.min.js' %}"></script>
 *   <script src="{% static 'js/charts.js' %}"></script>
 *   <div id="credit-chart" class="chart"></div>
 *   {{ credit_chart|json_script:"credit-chart-data" }}
 *   <script>drawLineChart("credit-chart", "credit-chart-data", {yTitle: "credit"});</script>
 *
 * drawLineChart(elementId, dataScriptId, options) -> Promise (resolves when drawn)
 *   elementId     id of an empty block element (give it class "chart" for its height)
 *   dataScriptId  id of the <script type="application/json"> that Django's json_script wrote
 *   data          {"series": [{"name": "Equity", "x": [...], "y": [...]}, ...],
 *                  "markers": [{"x": ..., "label": "out-of-sample"}]}          (markers optional)
 *                 x values: numbers (milliseconds since 1970 UTC when options.xType is "date",
 *                 the default) or date strings "YYYY-MM-DD[ HH:MM:SS]"; y values: numbers or null.
 *                 Downsample long series on the server (apps/web/charts.py) to ~1,000 points.
 *   options       {xType: "date" | "linear" (default "date"),
 *                  xTitle, yTitle: axis titles,
 *                  xInteger: true for whole-number x ticks (epochs, counts),
 *                  yFormat: a d3 format for the y axis and hover, e.g. ",.0f", ".1%", ".3f",
 *                  area: true to fill each series down to zero (drawdowns, stacked feel),
 *                  markers: more vertical marker lines, same shape as data.markers,
 *                  colors: ["#1f5fbf", ...] one per series (default: the site's palette),
 *                  showLegend: true | false (default: only with more than one series),
 *                  step: true for a step line (counts that change at a time)}
 *
 * drawAreaChart(elementId, dataScriptId, options) is drawLineChart with {area: true}.
 * A series list that is empty, or whose series have no points, shows "No data yet" instead.
 */
(function (global) {
  "use strict";

  var PALETTE = ["#1f5fbf", "#d97706", "#0f8a6c", "#b42318", "#7c3aed", "#0891b2", "#65a30d",
                 "#db2777"];

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name);
    return (value && value.trim()) || fallback;
  }

  function readData(dataScriptId) {
    var node = document.getElementById(dataScriptId);
    if (!node) throw new Error("charts.js: no data element #" + dataScriptId);
    return JSON.parse(node.textContent);
  }

  function showEmpty(element, text) {
    element.classList.add("chart-empty");
    element.textContent = text || "No data yet";
  }

  function markerShapes(markers) {
    var shapes = [], annotations = [];
    markers.forEach(function (marker) {
      shapes.push({type: "line", xref: "x", yref: "paper", x0: marker.x, x1: marker.x,
                   y0: 0, y1: 1, line: {color: cssVar("--muted", "#5d6878"), width: 1.5,
                                        dash: "dash"}});
      if (marker.label) {
        annotations.push({x: marker.x, xref: "x", y: 1, yref: "paper", yanchor: "bottom",
                          xanchor: "left", showarrow: false, text: marker.label,
                          font: {size: 11, color: cssVar("--muted", "#5d6878")}});
      }
    });
    return {shapes: shapes, annotations: annotations};
  }

  function drawLineChart(elementId, dataScriptId, options) {
    options = options || {};
    var element = document.getElementById(elementId);
    if (!element) throw new Error("charts.js: no element #" + elementId);
    var data = readData(dataScriptId);
    var series = (data.series || []).filter(function (s) { return s.x && s.x.length; });
    if (!series.length) { showEmpty(element, options.emptyText); return Promise.resolve(); }
    if (typeof global.Plotly === "undefined") {
      showEmpty(element, "Charts need vendor/plotly.min.js");
      return Promise.resolve();
    }
    var colors = options.colors || PALETTE;
    var xType = options.xType || "date";
    var traces = series.map(function (s, i) {
      var color = s.color || colors[i % colors.length];
      var trace = {type: "scatter", mode: "lines", name: s.name, x: s.x, y: s.y,
                   line: {color: color, width: 1.8, shape: options.step ? "hv" : "linear"},
                   hovertemplate: "%{y" + (options.yFormat ? ":" + options.yFormat : "") +
                                  "}<extra>" + (s.name || "") + "</extra>"};
      if (options.area) {
        trace.fill = "tozeroy";
        trace.fillcolor = color + "33";  // the line's colour at 20% opacity
      }
      return trace;
    });
    var markers = (data.markers || []).concat(options.markers || []);
    var decorations = markerShapes(markers);
    var grid = cssVar("--border", "#dde1e7");
    var layout = {
      margin: {l: 64, r: 16, t: markers.length ? 24 : 12, b: 40},
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: {family: cssVar("--font", "system-ui, sans-serif"), size: 12,
             color: cssVar("--text", "#1c2430")},
      hovermode: "x unified",
      showlegend: options.showLegend !== undefined ? options.showLegend : traces.length > 1,
      xaxis: {type: xType, gridcolor: grid, linecolor: grid, zeroline: false,
              tickformat: options.xInteger ? "d" : undefined, automargin: true,
              title: options.xTitle ? {text: options.xTitle} : undefined,
              hoverformat: xType === "date" ? "%Y-%m-%d %H:%M" : undefined},
      yaxis: {gridcolor: grid, linecolor: grid, zerolinecolor: grid, automargin: true,
              tickformat: options.yFormat, hoverformat: options.yFormat,
              title: options.yTitle ? {text: options.yTitle} : undefined},
      shapes: decorations.shapes,
      annotations: decorations.annotations
    };
    if (options.xInteger) {
      // Whole-number ticks: one per value when there are few, else plotly's own spacing.
      var xs = [].concat.apply([], series.map(function (s) { return s.x; }));
      var span = Math.max.apply(null, xs) - Math.min.apply(null, xs);
      if (span <= 10) { layout.xaxis.dtick = 1; layout.xaxis.tick0 = 0; }
    }
    if (layout.showlegend) {
      // Above the plot, so it never collides with the x axis' title or dates.
      layout.legend = {orientation: "h", x: 0, xanchor: "left", y: 1.02, yanchor: "bottom",
                       bgcolor: "rgba(0,0,0,0)"};
      layout.margin.t = 36;
    }
    var config = {responsive: true, displaylogo: false, displayModeBar: false};
    element.classList.add("chart-drawn");
    return global.Plotly.newPlot(element, traces, layout, config);
  }

  function drawAreaChart(elementId, dataScriptId, options) {
    var merged = {};
    Object.keys(options || {}).forEach(function (key) { merged[key] = options[key]; });
    merged.area = true;
    return drawLineChart(elementId, dataScriptId, merged);
  }

  global.drawLineChart = drawLineChart;
  global.drawAreaChart = drawAreaChart;
})(window);
