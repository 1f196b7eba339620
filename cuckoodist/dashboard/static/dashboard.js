// cuckoodist dashboard: polls api/state and api/history and draws them.
// Plain JavaScript, no library, no build step; every text from the daemon
// goes into the page as textContent, never as HTML.
(function () {
  "use strict";

  var STATE_EVERY = 2000;      // ms between state polls
  var HISTORY_EVERY = 10000;   // ms between history polls (the daemon samples every 10 s)
  var TOKEN_KEY = "cuckoodist-dashboard-token";
  var SVG = "http://www.w3.org/2000/svg";
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  var lastState = null;

  // Formatting ------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) { return seconds + " s"; }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) { return minutes + " min " + (seconds % 60) + " s"; }
    var hours = Math.floor(minutes / 60);
    if (hours < 48) { return hours + " h " + (minutes % 60) + " min"; }
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function ago(at, now) {
    return at === null || at === undefined ? "–" : duration(now - at) + " ago";
  }

  function rate(value) {
    if (value === null || value === undefined) { return "–"; }
    return (value >= 10 ? value.toFixed(1) : value.toFixed(2)) + "/s";
  }

  function count(value) {
    return value === null || value === undefined ? "?" : String(value);
  }

  function bytes(value) {
    if (value === null || value === undefined) { return "–"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return (i === 0 ? String(value) : value.toFixed(1)) + " " + units[i];
  }

  // Tables ----------------------------------------------------------------

  function cell(row, className, text) {
    var td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, rows, columns, emptyText) {
    var body = document.querySelector("#" + tableId + " tbody");
    var fresh = document.createDocumentFragment();
    rows.forEach(function (row) { fresh.appendChild(row); });
    if (!rows.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = cell(tr, "none", emptyText);
      td.colSpan = columns;
      fresh.appendChild(tr);
    }
    body.replaceChildren(fresh);
  }

  function renderStages(state) {
    fill("stages", state.stages.map(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.queue = s.queue;
      cell(tr, "stage", s.stage);
      cell(tr, "queue", s.queue);
      cell(tr, "depth", count(s.depth));
      cell(tr, "consumers", count(s.consumers));
      cell(tr, "in-flight", String(s.in_flight));
      cell(tr, "processed-rate", rate(s.processed_rate));
      cell(tr, "failed-rate", rate(s.failed_rate));
      cell(tr, "consuming state-" + s.consuming, s.consuming);
      return tr;
    }), 8, "No stages.");
  }

  function renderInFlight(state) {
    var shown = state.in_flight.length;
    document.getElementById("in-flight-count").textContent =
      "(" + state.in_flight_total + (state.in_flight_total > shown ? ", the oldest " + shown + " shown" : "") + ")";
    fill("in-flight", state.in_flight.map(function (a) {
      var tr = document.createElement("tr");
      tr.dataset.analysisId = a.analysis_id;
      if (a.stalled) { tr.classList.add("stalled"); }
      cell(tr, "analysis-id", a.analysis_id || "?");
      cell(tr, "sample", a.sample_name);
      cell(tr, "node", a.cuckoo);
      cell(tr, "task", a.task_id === null ? "" : String(a.task_id));
      cell(tr, "stage", a.stage);
      cell(tr, "age", duration(a.age)).title = a.stalled ? "stalled" : "";
      return tr;
    }), 6, "Nothing in flight.");
  }

  function renderFailures(state) {
    fill("failures", state.failures.map(function (f) {
      var tr = document.createElement("tr");
      tr.dataset.analysisId = f.analysis_id;
      if (f.final) { tr.classList.add("final"); }
      cell(tr, "when", ago(f.at, state.now));
      cell(tr, "analysis-id", f.analysis_id || "?");
      cell(tr, "stage", f.stage);
      cell(tr, "reason", (f.final ? "permanent: " : "transient: ") + f.reason);
      return tr;
    }), 4, "No failures lately.");
  }

  function renderDump(state) {
    var dump = state.dump;
    document.getElementById("dump-count").textContent =
      "(" + dump.count + " file" + (dump.count === 1 ? "" : "s") +
      (dump.count > dump.entries.length ? ", the oldest " + dump.entries.length + " shown" : "") + ")";
    fill("dump", dump.entries.map(function (d) {
      var tr = document.createElement("tr");
      tr.dataset.file = d.file;
      cell(tr, "file", d.file);
      cell(tr, "analysis-id", d.analysis_id || "?");
      cell(tr, "stage", d.stage);
      cell(tr, "reason", d.reason);
      cell(tr, "age", d.dumped_at === null ? "–" : duration(state.now - d.dumped_at));
      var td = document.createElement("td");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "resubmit";
      button.textContent = state.resubmit_enabled ? "Resubmit" : "Resubmit (disabled)";
      button.disabled = !state.resubmit_enabled;
      button.title = state.resubmit_enabled ? "Put this message back on its queue" : "No dashboard.token is configured";
      button.addEventListener("click", function () { resubmit({files: [d.file]}); });
      td.appendChild(button);
      tr.appendChild(td);
      return tr;
    }), 6, "The dump is empty.");
    var all = document.getElementById("resubmit-all");
    all.disabled = !state.resubmit_enabled || dump.count === 0;
    all.textContent = state.resubmit_enabled ? "Resubmit all" : "Resubmit all (disabled)";
    all.title = state.resubmit_enabled ? "Put every dumped message back on its queue" : "No dashboard.token is configured";
    var status = document.getElementById("resubmit-status");
    if (!state.resubmit_enabled) {
      status.textContent = "Resubmitting is disabled: no dashboard.token is configured.";
    } else if (status.dataset.disabledNote) {
      status.textContent = "";
    }
    status.dataset.disabledNote = state.resubmit_enabled ? "" : "1";
  }

  function renderNodes(state) {
    fill("nodes", state.nodes.map(function (n) {
      var tr = document.createElement("tr");
      tr.dataset.node = n.name;
      cell(tr, "name", n.name);
      cell(tr, "pending", count(n.pending));
      cell(tr, "running", count(n.running));
      cell(tr, "free-disk", bytes(n.free_disk));
      var probed = n.probed_at === null ? "not probed" : ago(n.probed_at, state.now);
      var td = cell(tr, "probed", n.error ? probed + ": " + n.error : probed);
      if (n.error) { td.classList.add("error"); }
      return tr;
    }), 5, "No Cuckoo configured.");
  }

  function render(state) {
    lastState = state;
    renderStages(state);
    renderInFlight(state);
    renderFailures(state);
    renderDump(state);
    renderNodes(state);
  }

  // Charts ----------------------------------------------------------------

  var W = 600, H = 170, LEFT = 48, RIGHT = 8, TOP = 10, BOTTOM = 22;

  function svg(name, attributes, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) { node.setAttribute(key, attributes[key]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function label(parent, x, y, text, anchor) {
    var t = svg("text", {x: x, y: y, "class": "label", "text-anchor": anchor || "end"}, parent);
    t.textContent = text;
    return t;
  }

  function short(value) {
    if (value >= 1000000) { return (value / 1000000).toFixed(1) + "M"; }
    if (value >= 1000) { return (value / 1000).toFixed(1) + "k"; }
    if (value >= 10 || value === 0) { return String(Math.round(value)); }
    return value.toFixed(2);
  }

  // series: [{name, values: [number|null per point]}]; nulls are gaps.
  function chart(id, points, series, unit) {
    var root = document.getElementById(id);
    var fresh = document.createDocumentFragment();
    root.setAttribute("data-points", String(points.length));
    var max = 0;
    series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null && v > max) { max = v; } });
    });
    max = max > 0 ? max * 1.1 : 1;
    // The last hour, or less while the daemon has not run that long.
    var end = points.length ? points[points.length - 1].t : 0;
    var start = points.length ? Math.max(end - 3600, points[0].t) : end - 3600;
    var span = Math.max(end - start, 1);
    function x(t) { return LEFT + (W - LEFT - RIGHT) * Math.max(0, t - start) / span; }
    function y(v) { return TOP + (H - TOP - BOTTOM) * (1 - v / max); }
    svg("line", {x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM, "class": "axis"}, fresh);
    svg("line", {x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM, "class": "axis"}, fresh);
    label(fresh, LEFT - 4, TOP + 8, short(max) + unit);
    label(fresh, LEFT - 4, H - BOTTOM, "0");
    label(fresh, LEFT, H - 6, "−" + duration(end - start), "start");
    label(fresh, W - RIGHT, H - 6, "now", "end");
    var drawn = false;
    series.forEach(function (s, index) {
      var colour = COLOURS[index % COLOURS.length];
      var path = "";
      var run = 0;
      s.values.forEach(function (v, i) {
        var next = i + 1 < s.values.length ? s.values[i + 1] : null;
        if (v === null || v === undefined) { run = 0; return; }
        var px = x(points[i].t).toFixed(1), py = y(v).toFixed(1);
        path += (run ? " L " : " M ") + px + " " + py;
        if (!run && (next === null || next === undefined)) {
          // A point with no neighbour: a line of one point shows nothing.
          svg("circle", {cx: px, cy: py, r: 2.5, fill: colour}, fresh);
        }
        run += 1;
        drawn = true;
      });
      if (path) {
        var line = svg("path", {d: path.trim(), "class": "series", stroke: colour}, fresh);
        var title = svg("title", {}, line);
        title.textContent = s.name;
      }
      if (series.length > 1) {
        var legend = label(fresh, W - RIGHT, TOP + 12 + 12 * index, s.name, "end");
        legend.setAttribute("fill", colour);
      }
    });
    if (!drawn) {
      svg("text", {x: W / 2, y: H / 2, "class": "empty", "text-anchor": "middle"}, fresh).textContent =
        points.length ? "no data yet" : "waiting for the first sample";
    }
    root.replaceChildren(fresh);
  }

  function renderHistory(history) {
    var points = history.points;
    chart("chart-throughput", points, [{name: "throughput", values: points.map(function (p) { return p.throughput; })}], "/s");
    chart("chart-latency", points, [{name: "latency", values: points.map(function (p) { return p.latency; })}], " s");
    var queues = [];
    points.forEach(function (p) {
      Object.keys(p.queues).forEach(function (q) { if (queues.indexOf(q) < 0) { queues.push(q); } });
    });
    chart("chart-queues", points, queues.map(function (q) {
      return {name: q, values: points.map(function (p) { return q in p.queues ? p.queues[q] : null; })};
    }), "");
  }

  // Polling ---------------------------------------------------------------

  function getJSON(path) {
    return fetch(path, {cache: "no-store", credentials: "same-origin"}).then(function (response) {
      if (!response.ok) { throw new Error(path + " answered " + response.status); }
      return response.json();
    });
  }

  function connection(text, bad) {
    var p = document.getElementById("connection");
    p.textContent = text;
    p.classList.toggle("error", !!bad);
  }

  function pollState() {
    getJSON("api/state").then(function (state) {
      render(state);
      var when = new Date();
      document.body.setAttribute("data-updated", when.toISOString());
      connection("Updated " + when.toLocaleTimeString(), false);
    }).catch(function (error) {
      connection("Cannot reach the daemon: " + error.message, true);
    }).then(function () {
      window.setTimeout(pollState, STATE_EVERY);
    });
  }

  function pollHistory() {
    getJSON("api/history").then(renderHistory).catch(function () {
      // The state poll reports the daemon unreachable; keep the old charts.
    }).then(function () {
      window.setTimeout(pollHistory, HISTORY_EVERY);
    });
  }

  // Resubmitting ----------------------------------------------------------

  function token() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function showTokenState() {
    document.getElementById("token-state").textContent = token() ? "a token is set for this tab" : "no token set";
  }

  function saveToken(event) {
    event.preventDefault();
    var field = document.getElementById("token");
    try {
      if (field.value) {
        window.sessionStorage.setItem(TOKEN_KEY, field.value);
      } else {
        window.sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (e) {
      // Storage refused (private mode): the token cannot be kept.
    }
    field.value = "";
    showTokenState();
  }

  function describe(outcome) {
    var parts = [];
    var done = outcome.resubmitted || [];
    parts.push("Resubmitted " + done.length + " file" + (done.length === 1 ? "" : "s") + ".");
    (outcome.skipped || []).forEach(function (s) { parts.push("Skipped " + s.file + ": " + s.reason + "."); });
    return parts.join(" ");
  }

  function resubmit(request) {
    var status = document.getElementById("resubmit-status");
    status.textContent = "Resubmitting…";
    status.classList.remove("error");
    var headers = {"Content-Type": "application/json", "X-Cuckoodist-CSRF": "1"};
    var secret = token();
    if (secret) { headers.Authorization = "Bearer " + secret; }
    fetch("api/resubmit", {
      method: "POST",
      headers: headers,
      body: JSON.stringify(request),
      cache: "no-store",
      credentials: "same-origin"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        var text = body.resubmitted ? describe(body) : "";
        if (!response.ok) {
          var why = body.error || ("the daemon answered " + response.status);
          text = "Refused (" + response.status + "): " + why + (text ? " " + text : "");
          status.classList.add("error");
        }
        status.textContent = text;
      });
    }).catch(function (error) {
      status.textContent = "Could not reach the daemon: " + error.message;
      status.classList.add("error");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("token-form").addEventListener("submit", saveToken);
    document.getElementById("resubmit-all").addEventListener("click", function () { resubmit({all: true}); });
    showTokenState();
    pollState();
    pollHistory();
  });
}());
