/* logbus view: one page over the server's JSON API. The state is the URL hash (#samples?run=0&key=...),
   so every view can be linked, reloaded and tested by URL. Text from a run folder (labels, keys, captions,
   cells) is put into the page with textContent or attribute values only, never parsed as HTML. */
"use strict";

const SYSTEM_PREFIXES = ["logbus/", "time/"];  // logbus's own counters and Composer's time/*: folded apart
const PAGE_SIZE = 50;
let RUNS = null;
// An exported page (`logbus view --export`) carries its answers as one JSON element and asks no server.
const STATIC = (() => {
  const node = document.getElementById("logbus-data");
  return node ? JSON.parse(node.textContent) : null;
})();

// -- small DOM helpers --------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function route() {
  const hash = location.hash.slice(1);
  const [page, query] = hash.split("?");
  return {page: page || (STATIC ? "samples" : "metrics"), params: new URLSearchParams(query || "")};
}
function link(page, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") query.set(k, v);
  return "#" + page + (query.toString() ? "?" + query.toString() : "");
}
async function api(path, params) {
  if (STATIC) return staticApi(path, params || {});
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") query.set(k, v);
  const response = await fetch(path + (query.toString() ? "?" + query : ""));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}
function stepName(step) { return step === null ? "none" : String(step); }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
function colour(id) {  // a class's colour: hues spread by the golden angle, so neighbours differ
  return `hsl(${(id * 137.508) % 360}, 80%, 50%)`;
}
function rgb(id) {
  const h = ((id * 137.508) % 360) / 60, c = 0.8, x = c * (1 - Math.abs((h % 2) - 1)), m = 0.1;
  const [r, g, b] = h < 1 ? [c, x, 0] : h < 2 ? [x, c, 0] : h < 3 ? [0, c, x] : h < 4 ? [0, x, c] : h < 5 ? [x, 0, c] : [c, 0, x];
  return [(r + m) * 255, (g + m) * 255, (b + m) * 255];
}
function imageUrl(run, cell, asMask) {
  if (STATIC) return STATIC.images[`${run}/${cell.pack}/${cell.hash}` + (asMask ? "?as=mask" : "")] || "";
  return `/img/${run}/${encodeURIComponent(cell.pack)}/${encodeURIComponent(cell.hash)}` + (asMask ? "?as=mask" : "");
}
function table(runId, key) {
  const run = RUNS.runs[runId];
  return run ? run.tables.find(t => t.key === key) : undefined;
}
function labelOf(labels, id) {  // "3 cat"; just "3" where the class is named by its id
  const name = labels ? labels[id] : undefined;
  return name !== undefined && name !== null && name !== "" && String(name) !== String(id) ? `${id} ${name}` : String(id);
}

// -- the exported page's answers: the server's, from the rows it holds ----------------------------------
function staticApi(path, params) {
  if (path === "/api/runs") return {runs: STATIC.runs};
  const given = name => params[name] !== undefined && params[name] !== null && params[name] !== "";
  const key = params.key, byStep = (STATIC.rows[String(params.run || 0)] || {})[key] || {};
  const steps = Object.keys(byStep);
  const step = given("step") ? String(params.step) : steps[steps.length - 1];
  const stepValue = step === "none" ? null : Number(step);
  if (path === "/api/history") {
    const rows = steps.flatMap(s => byStep[s]).filter(r => r._sample_key === params.sample);
    return {key, sample: params.sample, steps: steps.map(s => s === "none" ? null : Number(s)), rows};
  }
  if (!(step in byStep)) throw new Error(`step: the export holds no rows of ${key} at step ${step}`);
  let rows = byStep[step].slice();
  if (path === "/api/confusion") {
    if (!rows.length || !("truth" in rows[0] && "prediction" in rows[0])) throw new Error(`the export holds no confusion matrix of ${key}`);
    const counts = new Map(), labels = {};
    for (const r of rows) {
      const pair = `${r.truth},${r.prediction}`;
      counts.set(pair, (counts.get(pair) || 0) + 1);
      if (r.truth_name) labels[r.truth] = r.truth_name;
      if (r.prediction_name) labels[r.prediction] = r.prediction_name;
    }
    const pairs = [...counts.keys()].map(p => p.split(",").map(Number));
    return {key, step: stepValue, unit: "samples", truth: pairs.map(p => p[0]), prediction: pairs.map(p => p[1]), count: [...counts.values()], labels};
  }
  for (const column of ["truth", "prediction"]) if (given(column)) rows = rows.filter(r => r[column] === Number(params[column]));
  if (params.outcome === "right" || params.outcome === "wrong") rows = rows.filter(r => r.correct === (params.outcome === "right"));
  if (given("flag")) rows = rows.filter(r => r.flag === params.flag);
  if (given("q")) {
    const needle = String(params.q).toLowerCase();
    rows = rows.filter(r => Object.entries(r).some(([k, v]) => !k.startsWith("_") && typeof v === "string" && v.toLowerCase().includes(needle)));
  }
  if (given("sort")) {  // as the server sorts: nulls last, then rank and row
    const column = params.sort, sign = params.desc === "1" ? -1 : 1;
    rows.sort((a, b) => {
      const x = a[column], y = b[column];
      if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
      if (y === null || y === undefined) return -1;
      return x < y ? -sign : x > y ? sign : 0;
    });
  }
  const size = Number(params.size || PAGE_SIZE), offset = Number(params.page || 0) * size;
  return {key, step: stepValue, vs: null, total: rows.length, offset, size, rows: rows.slice(offset, offset + size)};
}

// -- chooser of run, table and step, shared by the table pages ---------------------------------------
function chooser(page, params, extra) {
  const runId = Number(params.get("run") || 0);
  const run = RUNS.runs[runId] || RUNS.runs[0];
  const keys = run ? run.tables.map(t => t.key) : [];
  const key = keys.includes(params.get("key")) ? params.get("key") : keys[0];
  const current = table(runId, key);
  const steps = (current ? current.steps : []).map(stepName);  // "none": rows logged without a step
  const stepParam = params.get("step");
  const step = stepParam !== null && steps.includes(stepParam) ? stepParam : (steps.length ? steps[steps.length - 1] : "");
  const go = change => { location.hash = link(page, Object.assign({run: runId, key, step}, extra || {}, change)); };
  const bar = el("div", {class: "chooser"},
    el("label", {}, "run ", el("select", {id: "choose-run", onchange: e => go({run: e.target.value, key: "", step: ""})},
      RUNS.runs.map((r, i) => el("option", {value: i, selected: i === runId, text: r.name})))),
    el("label", {}, "table ", el("select", {id: "choose-table", onchange: e => go({key: e.target.value, step: ""})},
      keys.map(k => el("option", {value: k, selected: k === key, text: k})))),
    el("label", {}, "step ", el("select", {id: "choose-step", onchange: e => go({step: e.target.value})},
      steps.map(s => el("option", {value: s, selected: s === step, text: s})))));
  return {runId, key, step, table: current, bar};
}

// -- Metrics ---------------------------------------------------------------------------------------------
function groupOf(name) {
  if (SYSTEM_PREFIXES.some(p => name.startsWith(p))) return null;
  const slash = name.indexOf("/");
  return slash > 0 ? name.slice(0, slash + 1) : "(no prefix)";
}
function smooth(values, weight) {  // exponential moving average, debiased as TensorBoard does
  if (!weight) return values;
  let last = 0, count = 0;
  return values.map(v => {
    if (v === null || !Number.isFinite(v)) return null;
    last = last * weight + (1 - weight) * v; count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}
function series(run, name, axis, weight) {
  const [steps, times, values] = run.series[name] || [[], [], []];
  const t0 = Math.min(...Object.values(run.series).map(([, t]) => t.find(x => x !== null) ?? Infinity));
  const xs = axis === "time" ? times.map(t => t === null ? null : t - t0) : steps;
  const order = xs.map((_, i) => i).filter(i => xs[i] !== null).sort((a, b) => xs[a] - xs[b]);
  return [order.map(i => xs[i]), smooth(order.map(i => values[i]), weight)];
}
function chart(host, name, runs, axis, weight) {
  const tables = runs.map(run => series(run, name, axis, weight)).filter(([xs]) => xs.length);
  const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
  const shown = runs.filter(run => series(run, name, axis, 0)[0].length);
  const opts = {
    width: Math.max(280, host.clientWidth - 8), height: 200, legend: {show: runs.length > 1},
    scales: {x: {time: false}},
    axes: [{label: axis === "time" ? "seconds since start" : "step"}, {}],
    series: [{label: axis === "time" ? "seconds since start" : "step"}].concat(shown.map((run, i) => ({label: run.name, stroke: colour(run.id + 1), width: 1.5, spanGaps: true}))),
  };
  new uPlot(opts, data, host);
}
async function metricsPage(params) {
  const axis = params.get("x") === "time" ? "time" : "step";
  const weight = Math.min(0.99, Math.max(0, Number(params.get("smooth") || 0)));
  const {runs} = await api("/api/metrics");
  const names = [...new Set(runs.flatMap(run => Object.keys(run.series)))].sort();
  const groups = new Map();
  for (const name of names) {
    const group = groupOf(name);
    if (group !== null) (groups.get(group) || groups.set(group, []).get(group)).push(name);
  }
  const system = names.filter(n => groupOf(n) === null);
  const set = change => { location.hash = link("metrics", Object.assign({x: axis, smooth: weight || ""}, change)); };
  const main = el("div", {id: "metrics"},
    el("div", {class: "chooser"},
      el("label", {}, "x axis ", el("select", {id: "metrics-axis", onchange: e => set({x: e.target.value})},
        el("option", {value: "step", selected: axis === "step", text: "step"}),
        el("option", {value: "time", selected: axis === "time", text: "wall time"}))),
      el("label", {}, "smoothing ", el("input", {id: "metrics-smooth", type: "range", min: 0, max: 0.99, step: 0.01,
        value: weight, onchange: e => set({smooth: e.target.value})}), ` ${weight}`),
      el("span", {class: "note", text: `${runs.length} run${runs.length === 1 ? "" : "s"}: ` + runs.map(r => r.name).join(", ")})));
  if (!names.length) main.append(el("p", {class: "note", text: "No metrics logged yet."}));
  const sections = [...groups.entries()].map(([group, members]) => [group, members, true]);
  if (system.length) sections.push(["logbus and time/", system, false]);
  for (const [group, members, open] of sections) {
    const grid = el("div", {class: "charts"});
    const section = el("details", {class: "group", open, "data-group": group},
      el("summary", {text: `${group} (${members.length})`}), grid);
    main.append(section);
    const draw = () => {
      if (grid.dataset.drawn) return;
      grid.dataset.drawn = "1";
      for (const name of members) {
        const box = el("div", {class: "chart", "data-metric": name}, el("h3", {text: name}));
        grid.append(box);
        chart(box, name, runs, axis, weight);
      }
    };
    section.addEventListener("toggle", () => section.open && draw());
    setTimeout(() => open && draw(), 0);
  }
  return main;
}

// -- Samples -----------------------------------------------------------------------------------------
const FILTERS = ["truth", "prediction", "outcome", "flag", "q", "only", "vs", "sort", "desc"];
function thumb(runId, cell, extraClass) {
  if (!cell) return el("span", {class: "note", text: "–"});
  return el("img", {class: "thumb " + (extraClass || ""), src: imageUrl(runId, cell), alt: cell.caption || "",
                    title: cell.caption || "", loading: "lazy"});
}
function cellNode(runId, column, value) {
  if (column.type === "image") return thumb(runId, value);
  return document.createTextNode(fmt(value));
}
async function samplesPage(params) {
  const {runId, key, step, table: current, bar} = chooser("samples", params, Object.fromEntries(FILTERS.map(f => [f, params.get(f)])));
  const main = el("div", {id: "samples"}, bar);
  if (!current) { main.append(el("p", {class: "note", text: "No tables logged yet."})); return main; }
  const state = Object.fromEntries(FILTERS.map(f => [f, params.get(f) || ""]));
  const page = Number(params.get("page") || 0);
  const go = change => { location.hash = link("samples", Object.assign({run: runId, key, step}, state, {page: 0}, change)); };
  const names = current.columns.map(c => c.name);
  const controls = el("div", {class: "filters"});
  const input = (name, label, attrs) => el("label", {}, label + " ", el("input", Object.assign({id: "filter-" + name, value: state[name],
    size: 8, onchange: e => go({[name]: e.target.value})}, attrs || {})));
  if (names.includes("truth")) controls.append(input("truth", "true class", {type: "number"}));
  if (names.includes("prediction") && current.kind === "classification") controls.append(input("prediction", "predicted class", {type: "number"}));
  if (names.includes("correct")) controls.append(el("label", {}, "outcome ", el("select", {id: "filter-outcome", onchange: e => go({outcome: e.target.value})},
    [["", "all"], ["right", "right"], ["wrong", "wrong"]].map(([v, t]) => el("option", {value: v, selected: state.outcome === v, text: t})))));
  if (names.includes("flag")) controls.append(input("flag", "flag"));
  if (current.columns.some(c => c.type === "text")) controls.append(input("q", "search", {type: "search", size: 14}));
  if (names.includes("prediction") && !STATIC) controls.append(el("label", {}, "show ", el("select", {id: "filter-only", onchange: e => go({only: e.target.value})},
    [["", "every row"], ["flipped", "flipped since the previous eval"], ["wrong_always", "wrong at every eval"], ["changed", "changed since step…"]]
      .filter(([v]) => v !== "wrong_always" || names.includes("correct"))
      .map(([v, t]) => el("option", {value: v, selected: state.only === v, text: t})))));
  if (state.only === "changed") controls.append(el("label", {}, "vs step ", el("select", {id: "filter-vs", onchange: e => go({vs: e.target.value})},
    el("option", {value: "", text: "—"}), current.steps.map(s => el("option", {value: s, selected: String(s) === state.vs, text: s})))));
  main.append(controls);
  let body;
  try {
    body = await api("/api/rows", Object.assign({run: runId, key, step, page, size: PAGE_SIZE}, state));
  } catch (error) {
    main.append(el("p", {class: "error", id: "samples-error", text: error.message}));
    return main;
  }
  const first = body.total ? body.offset + 1 : 0, last = body.offset + body.rows.length;
  const pages = Math.max(1, Math.ceil(body.total / body.size));
  const pager = el("div", {class: "pager"},
    el("a", {id: "page-prev", href: page > 0 ? link("samples", Object.assign({run: runId, key, step}, state, {page: page - 1})) : null, text: "‹ previous"}),
    el("span", {id: "page-count", text: `rows ${first}–${last} of ${body.total} (page ${page + 1} of ${pages})`}),
    el("a", {id: "page-next", href: page + 1 < pages ? link("samples", Object.assign({run: runId, key, step}, state, {page: page + 1})) : null, text: "next ›"}));
  main.append(pager);
  const shown = current.columns.filter(c => !["truth_name", "prediction_name"].includes(c.name));
  const header = el("tr", {}, shown.map(c => {
    const sortable = c.type !== "image";
    const desc = state.sort === c.name && state.desc !== "1";
    return el("th", {}, sortable ? el("a", {class: "sort", "data-column": c.name, href: link("samples", Object.assign({run: runId, key, step}, state, {sort: c.name, desc: desc ? "1" : "", page: 0})),
      text: c.name + (state.sort === c.name ? (state.desc === "1" ? " ▼" : " ▲") : "")}) : c.name);
  }), body.vs !== null ? el("th", {text: `at step ${body.vs}`}) : null, el("th", {text: "across evals"}));
  const rows = body.rows.map(row => {
    const outcome = row.correct === true ? "right" : row.correct === false ? "wrong" : "";
    return el("tr", {class: "row " + outcome, "data-sample": row._sample_key, "data-row": row._row, "data-rank": row._rank},
      shown.map(c => {
        let value = row[c.name];
        const td = el("td", {class: "col-" + c.type});
        if (c.name === "truth" || c.name === "prediction") value = labelOf({[row[c.name]]: row[c.name + "_name"]}, row[c.name]);
        td.append(cellNode(runId, c, value));
        return td;
      }),
      body.vs !== null ? el("td", {class: "vs", text: row._vs ? `prediction ${fmt(row._vs.prediction)}, confidence ${fmt(row._vs.confidence)}` : "–"}) : null,
      el("td", {}, row._sample_key ? el("a", {class: "history", href: link("sample", {run: runId, key, sample: row._sample_key, step}), text: "history"}) : "–"));
  });
  main.append(el("table", {class: "rows", id: "rows-table"}, el("thead", {}, header), el("tbody", {}, rows)));
  if (!rows.length) main.append(el("p", {class: "note", id: "no-rows", text: "No rows match."}));
  return main;
}

// -- one sample across evals ---------------------------------------------------------------------------
async function samplePage(params) {
  const runId = Number(params.get("run") || 0), key = params.get("key"), sample = params.get("sample");
  const current = table(runId, key);
  const main = el("div", {id: "sample"}, el("p", {}, el("a", {href: link("samples", {run: runId, key, step: params.get("step")}), text: "‹ back to the samples"})));
  if (!current || !sample) { main.append(el("p", {class: "error", text: "No such table or sample."})); return main; }
  const body = await api("/api/history", {run: runId, key, sample});
  main.append(el("h2", {}, "Sample ", el("code", {id: "sample-key", text: sample}), ` of ${key}: logged at ${plural(new Set(body.rows.map(r => r._step)).size, "eval")} (${plural(body.rows.length, "row")})`));
  const columns = current.columns.filter(c => !["truth_name", "prediction_name"].includes(c.name));
  let previous = null;
  const rows = body.rows.map(row => {
    const flipped = previous !== null && "prediction" in row && row.prediction !== previous.prediction;
    previous = row;
    return el("tr", {class: "row " + (row.correct === true ? "right" : row.correct === false ? "wrong" : "") + (flipped ? " flipped" : ""), "data-step": row._step},
      el("td", {text: fmt(row._step)}), el("td", {text: fmt(row._rank)}),
      columns.map(c => el("td", {class: "col-" + c.type}, cellNode(runId, c, row[c.name]))),
      el("td", {text: flipped ? "flipped" : ""}));
  });
  main.append(el("table", {class: "rows", id: "history-table"},
    el("thead", {}, el("tr", {}, el("th", {text: "step"}), el("th", {text: "rank"}), columns.map(c => el("th", {text: c.name})), el("th", {text: ""}))),
    el("tbody", {}, rows)));
  const withMasks = body.rows.filter(r => columns.some(c => c.type === "image" && r[c.name] && r[c.name].masks.length));
  if (withMasks.length) {
    const wanted = params.get("step");
    const row = withMasks.find(r => stepName(r._step) === wanted) || withMasks[withMasks.length - 1];
    const column = columns.find(c => c.type === "image" && row[c.name] && row[c.name].masks.length);
    main.append(await segmentationView(runId, row[column.name], row._step));
  }
  return main;
}

// -- segmentation: the image, ground truth and prediction as layers, and the error map -------------------
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("could not load " + url));
    image.src = url;
  });
}
function idsOf(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const ids = new Int32Array(canvas.width * canvas.height);
  for (let i = 0; i < ids.length; i++) ids[i] = rgba[4 * i] + 256 * rgba[4 * i + 1];
  return {ids, width: canvas.width, height: canvas.height};
}
async function segmentationView(runId, cell, step) {
  const truthMask = cell.masks.find(m => m.name === "ground_truth" || m.name === "truth");
  const predictionMask = cell.masks.find(m => m.name === "prediction");
  const labels = Object.assign({}, (truthMask || {}).labels, (predictionMask || {}).labels);
  const [base, truthImage, predictionImage] = await Promise.all([loadImage(imageUrl(runId, cell)),
    truthMask ? loadImage(imageUrl(runId, truthMask, true)) : null, predictionMask ? loadImage(imageUrl(runId, predictionMask, true)) : null]);
  const truth = truthImage && idsOf(truthImage), prediction = predictionImage && idsOf(predictionImage);
  const present = new Set();
  for (const mask of [truth, prediction]) if (mask) for (const id of mask.ids) present.add(id);
  const classes = [...new Set([...present, ...Object.keys(labels).map(Number)])].sort((a, b) => a - b);
  // The background class starts hidden, so the prediction is seen over the image, not a wash over all of it.
  const hidden = new Set(classes.filter(id => /^background$/i.test(labels[id] || ""))), layers = {image: true, truth: false, prediction: true, error: false};
  let opacity = 0.6;
  const width = base.naturalWidth, height = base.naturalHeight, scale = Math.max(1, Math.floor(320 / Math.max(width, height)));
  const canvas = el("canvas", {id: "segmentation-canvas", width: width * scale, height: height * scale});
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  const paint = (mask, colourOf) => {
    const layer = new ImageData(mask.width, mask.height);
    for (let i = 0; i < mask.ids.length; i++) {
      const c = colourOf(i, mask.ids[i]);
      if (!c) continue;
      layer.data.set([c[0], c[1], c[2], Math.round(255 * opacity)], 4 * i);
    }
    const off = document.createElement("canvas");
    off.width = mask.width; off.height = mask.height;
    off.getContext("2d").putImageData(layer, 0, 0);
    context.drawImage(off, 0, 0, canvas.width, canvas.height);
  };
  let errors = 0;
  const draw = () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (layers.image) context.drawImage(base, 0, 0, canvas.width, canvas.height);
    if (layers.truth && truth) paint(truth, (i, id) => hidden.has(id) ? null : rgb(id));
    if (layers.prediction && prediction) paint(prediction, (i, id) => hidden.has(id) ? null : rgb(id));
    if (layers.error && truth && prediction) paint(prediction, (i, id) => id !== truth.ids[i] && !hidden.has(truth.ids[i]) ? [255, 0, 0] : null);
  };
  if (truth && prediction) for (let i = 0; i < truth.ids.length; i++) if (truth.ids[i] !== prediction.ids[i]) errors++;
  const toggle = (name, text) => el("label", {}, el("input", {type: "checkbox", id: "layer-" + name, checked: layers[name],
    onchange: e => { layers[name] = e.target.checked; draw(); }}), " " + text);
  const classToggles = classes.map(id => el("label", {class: "class-toggle"},
    el("input", {type: "checkbox", "data-class": id, checked: !hidden.has(id), onchange: e => { e.target.checked ? hidden.delete(id) : hidden.add(id); draw(); }}),
    el("span", {class: "swatch", style: `background:${`rgb(${rgb(id).map(Math.round).join(",")})`}`}), " " + labelOf(labels, id)));
  draw();
  return el("section", {class: "segmentation", id: "segmentation"},
    el("h3", {text: `Masks at step ${fmt(step)}`}),
    el("div", {class: "layers"}, toggle("image", "image"), toggle("truth", "ground truth"), toggle("prediction", "prediction"),
      toggle("error", "error map (prediction ≠ truth)"),
      el("label", {}, "opacity ", el("input", {type: "range", id: "layer-opacity", min: 0, max: 1, step: 0.05, value: opacity,
        oninput: e => { opacity = Number(e.target.value); draw(); }}))),
    el("div", {class: "classes"}, classToggles),
    el("p", {class: "note", id: "error-count", text: `${errors} of ${width * height} pixels wrong`}),
    canvas);
}

// -- confusion matrix ---------------------------------------------------------------------------------
async function confusionPage(params) {
  const {runId, key, step, table: current, bar} = chooser("confusion", params);
  const main = el("div", {id: "confusion"}, bar);
  if (!current) { main.append(el("p", {class: "note", text: "No tables logged yet."})); return main; }
  let body;
  try { body = await api("/api/confusion", {run: runId, key, step}); } catch (error) {
    main.append(el("p", {class: "error", id: "confusion-error", text: error.message})); return main;
  }
  const ids = [...new Set([...body.truth, ...body.prediction])].filter(v => v !== null).sort((a, b) => a - b);
  const counts = new Map();
  let total = 0, diagonal = 0, largest = 1;
  body.count.forEach((n, i) => {
    counts.set(`${body.truth[i]},${body.prediction[i]}`, n); total += n;
    if (body.truth[i] === body.prediction[i]) diagonal += n;
    largest = Math.max(largest, n);
  });
  main.append(el("p", {id: "confusion-summary", text: `${key} at step ${step}: ${total} ${body.unit}, ${(100 * diagonal / Math.max(1, total)).toFixed(1)}% on the diagonal. Rows: true class; columns: predicted class.`}));
  const grid = el("table", {class: "confusion", id: "confusion-table"},
    el("thead", {}, el("tr", {}, el("th", {text: "true \\ predicted"}), ids.map(id => el("th", {class: "label", text: labelOf(body.labels, id)})))),
    el("tbody", {}, ids.map(t => el("tr", {}, el("th", {class: "label", text: labelOf(body.labels, t)}), ids.map(p => {
      const n = counts.get(`${t},${p}`) || 0;
      const shade = n ? 0.12 + 0.88 * n / largest : 0;
      const td = el("td", {class: t === p ? "diagonal" : "off", "data-truth": t, "data-prediction": p,
        style: `background: rgba(${t === p ? "40,120,220" : "220,60,40"}, ${shade.toFixed(3)})`});
      if (n && body.unit === "samples") td.append(el("a", {href: link("samples", {run: runId, key, step, truth: t, prediction: p}), text: n}));
      else if (n) td.append(el("a", {href: link("samples", {run: runId, key, step, sort: "pixel_accuracy"}), text: n}));
      return td;
    })))));
  main.append(grid);
  return main;
}

// -- the page ------------------------------------------------------------------------------------------
const PAGES = {metrics: STATIC ? samplesPage : metricsPage, samples: samplesPage, sample: samplePage, confusion: confusionPage};
async function render() {
  const {page, params} = route();
  const hash = location.hash;  // what this render shows: a click's hashchange comes a moment after the click
  document.documentElement.dataset.viewer = "loading";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.id === "nav-" + page);
  const main = document.getElementById("main");
  try {
    RUNS = await api("/api/runs");
    document.getElementById("runs").textContent = RUNS.runs.map(r => r.name + (r.ranks > 1 ? ` (${r.ranks} ranks)` : "")).join(" · ");
    const view = await (PAGES[page] || (STATIC ? samplesPage : metricsPage))(params);
    main.replaceChildren(view);
    document.documentElement.dataset.page = page;
  } catch (error) {
    main.replaceChildren(el("p", {class: "error", id: "page-error", text: error.message}));
  }
  document.documentElement.dataset.rendered = hash;
  document.documentElement.dataset.viewer = "ready";
}
window.addEventListener("hashchange", render);
render();
