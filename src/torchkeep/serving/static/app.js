// torchkeep serve's page: pick a model, drop images, see the top-k classes as bars. No framework, no CDN.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], token: localStorage.getItem("torchkeep-token") || "" };
  const base = new URL(".", window.location.href);

  function headers() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function api(path, options) {
    const res = await fetch(new URL(path, base), Object.assign({ headers: headers() }, options || {}));
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.status === 401) { $("token-box").hidden = false; }
    if (!res.ok) {
      const msg = body && body.error ? body.error + ": " + (body.detail || "") : "HTTP " + res.status;
      throw new Error(msg);
    }
    return body;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }

  function showInfo(m) {
    const pre = m.preprocessing || {};
    const steps = [];
    steps.push("convert to " + pre.channels);
    if (pre.resize) steps.push("resize " + pre.resize.join("×"));
    if (pre.crop) steps.push("center crop " + pre.crop.join("×"));
    steps.push("scale to [0, 1]");
    if (pre.mean) steps.push("normalize mean " + pre.mean.map((v) => v.toFixed(3)).join(", ") +
                             " std " + pre.std.map((v) => v.toFixed(3)).join(", "));
    const rows = [
      ["architecture", m.architecture], ["backend", m.backend], ["input", m.in_channels + " × " + m.input_size.join(" × ")],
      ["preprocessing", steps.join("; ")], ["classes", m.num_classes + ""], ["file", m.file], ["sha256", m.sha256.slice(0, 16) + "…"],
      ["state", m.state],
    ];
    const dl = el("dl");
    for (const [k, v] of rows) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", { text: v })); }
    const classes = el("ol", { class: "classes", start: "0" }, m.classes.map((c) => el("li", { text: c })));
    const info = $("model-info");
    info.replaceChildren(el("h2", { text: m.name }), dl, el("h2", { text: "classes" }), classes);
  }

  async function loadModels() {
    try {
      const doc = await api("v1/models");
      state.models = doc.models;
      const sel = $("model");
      sel.replaceChildren(...doc.models.map((m) => el("option", { value: m.name, text: m.name })));
      if (doc.models.length) showInfo(doc.models[0]);
      $("token-box").hidden = !state.token;
      status("Ready: choose or drop images.");
      document.body.dataset.ready = "1";
    } catch (e) {
      status(e.message, true);
    }
  }

  function card(file, url, prediction, error) {
    const children = [el("img", { src: url, alt: file.name }), el("div", { class: "file", text: file.name })];
    if (error) {
      children.push(el("div", { class: "error", text: error }));
    } else {
      children.push(el("div", { class: "label", text: prediction.label }));
      const bars = prediction.topk.map((s) => el("div", { class: "bar-row" }, [
        el("span", { class: "name", text: s.label, title: s.label }),
        el("div", { class: "bar" }, [el("span", { style: "width:" + (100 * s.probability).toFixed(1) + "%" })]),
        el("span", { class: "p", text: (100 * s.probability).toFixed(1) + "%" }),
      ]));
      children.push(el("div", { class: "bars" }, bars));
    }
    return el("div", { class: "prediction" }, children);
  }

  async function classify(files) {
    files = Array.from(files).filter((f) => f && f.size !== undefined);
    if (!files.length) return;
    const name = $("model").value;
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    status("Classifying " + files.length + " image(s) with " + name + "…");
    const results = $("results");
    try {
      const doc = await api("v1/models/" + encodeURIComponent(name) + "/predict?topk=5", { method: "POST", body: form });
      results.replaceChildren(...doc.predictions.map((p, i) => card(files[i], URL.createObjectURL(files[i]), p)));
      status(files.length + " image(s) classified by " + name + " (" + doc.backend + ").");
    } catch (e) {
      results.replaceChildren(...files.map((f) => card(f, URL.createObjectURL(f), null, e.message)));
      status(e.message, true);
    }
  }

  $("file").addEventListener("change", (ev) => classify(ev.target.files));
  $("model").addEventListener("change", () => {
    const m = state.models.find((x) => x.name === $("model").value);
    if (m) showInfo(m);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); classify(ev.dataTransfer.files); });
  $("token").value = state.token;
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    localStorage.setItem("torchkeep-token", state.token);
    loadModels();
  });
  loadModels();
})();
