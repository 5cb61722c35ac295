// vmcluster's dashboard: the cluster's API (/api/v1) in a page, in the spirit of the
// Failover Cluster Manager. No build step and no outside scripts: what the daemon serves
// is all there is. The token stays in this tab's sessionStorage; every request carries it.
"use strict";

const S = { token: sessionStorage.getItem("vmcluster-token") || "", data: {}, log: [],
            intents: {}, lastSeq: 0, refreshTimer: null, streamOn: false, streamAbort: null,
            prediction: null, actionError: false };

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const badge = (v, cls) => `<span class="badge ${esc(cls || v)}">${esc(v)}</span>`;
const fmtTime = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "-";

async function api(method, path, body) {
  const token = S.token;
  const opts = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const e = new Error(`${resp.status} ${err.message || resp.statusText}`);
    e.status = resp.status;
    e.token = token;  // what it was sent with: a 401 logs out only the session it was for
    throw e;
  }
  return data;
}

// What the user's own action got (a refusal, say) stays until their next action: a
// background refresh that succeeds clears only what a background refresh put there.
// A 401 ends the session whose token it was sent with; one answered after a logout or a
// new login (a refresh still in flight) is not the new session's.
function unauthorized(e) {
  return e && e.status === 401 && e.token === S.token && S.token !== "";
}

function showError(e) {
  S.actionError = !!e;
  $("#error").textContent = e ? String(e.message || e) : "";
  if (unauthorized(e)) logout();
}

function showBackgroundError(e) {
  if (!e && S.actionError) return;
  if (e && e.status === 401 && !unauthorized(e)) return;  // an earlier session's
  $("#error").textContent = e ? String(e.message || e) : "";
  if (unauthorized(e)) logout();
}

// -- login ------------------------------------------------------------------------------

let loginSeq = 0;  // a login answered after a logout (or a later login) is dropped

async function login(token) {
  const seq = ++loginSeq;
  S.token = token;
  let st;
  try {
    st = await api("GET", "/api/v1/cluster/status");
  } catch (e) {
    if (seq !== loginSeq) return;
    S.token = "";
    $("#login-pane").hidden = false;
    $("#login-error").textContent = `cannot connect: ${e.message}`;
    return;
  }
  // The token is good: the page is the cluster's from here on. A read that fails now
  // (a host busy, a render that meets data it did not expect) is shown and tried again,
  // never taken for a failed login.
  if (seq !== loginSeq) return;
  sessionStorage.setItem("vmcluster-token", token);
  $("#login-pane").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#login-error").textContent = "";
  S.data.status = st;
  stream();
  try { await refresh(); showError(null); } catch (e) { showError(e); retryRefresh(); }
  route();
}

function logout() {
  loginSeq += 1;
  if (S.streamAbort) S.streamAbort.abort();
  sessionStorage.removeItem("vmcluster-token");
  S.token = "";
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login-pane").hidden = false;
}

// -- data -------------------------------------------------------------------------------

async function refresh() {
  const [status, nodes, vms, networks, volumes, migrations] = await Promise.all([
    api("GET", "/api/v1/cluster/status"), api("GET", "/api/v1/nodes"),
    api("GET", "/api/v1/vms"), api("GET", "/api/v1/networks"), api("GET", "/api/v1/volumes"),
    api("GET", "/api/v1/migrations?limit=20")]);
  Object.assign(S.data, { status, nodes: nodes.nodes, vms: vms.vms, networks,
                          volumes: volumes.volumes, migrations: migrations.migrations });
  for (const m of S.data.migrations) S.intents[m.id] = S.intents[m.id] || m;
  $("#cluster-name").textContent = `cluster ${status.cluster}`;
  $("#manager").textContent = status.manager.node
    ? `manager ${status.manager.node} (term ${status.manager.token})` : "no manager";
  render();
}

function scheduleRefresh(delay = 300) {
  if (S.refreshTimer) return;
  S.refreshTimer = setTimeout(async () => {
    S.refreshTimer = null;
    if (!S.token) return;  // logged out meanwhile
    try { await refresh(); showBackgroundError(null); } catch (e) {
      showBackgroundError(e); retryRefresh();
    }
  }, delay);
}

// A failed read is tried again a second later while the page is logged in.
function retryRefresh() { if (S.token) scheduleRefresh(1000); }

// Server-sent events over fetch (EventSource cannot send the token). The server ends a
// stream after a few minutes; the page then opens the next one from the last event seen.
async function stream() {
  if (S.streamOn || !S.token) return;
  S.streamOn = true;
  S.streamAbort = new AbortController();  // a logout ends the session's stream
  $("#live").className = "badge on";
  $("#live").textContent = "live";
  try {
    const resp = await fetch(`/api/v1/stream?after=${S.lastSeq}`,
                             { headers: { Authorization: `Bearer ${S.token}` },
                               signal: S.streamAbort.signal });
    if (!resp.ok) throw new Error(`stream: ${resp.status}`);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let kind = "message", data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onStream(kind, JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showBackgroundError(e);
  } finally {
    S.streamOn = false;
    $("#live").className = "badge off";
    $("#live").textContent = "offline";
    if (S.token) setTimeout(stream, 1000);
  }
}

function onStream(kind, data) {
  if (kind === "event") {
    S.lastSeq = Math.max(S.lastSeq, data.seq);
    S.log.push(data);
    if (S.log.length > 500) S.log.shift();
    if (currentRoute().page === "events" || currentRoute().page === "cluster") renderEvents();
  } else if (kind === "intent") {
    S.intents[data.id] = data;
    const t = window.vmcTiming;
    if (data.id === S.watching && data.progress) {
      if (t.click_to_progress_ms == null) t.click_to_progress_ms = performance.now() - S.clickedAt;
      if (data.progress.pass && t.click_to_first_pass_ms == null) {
        t.click_to_first_pass_ms = performance.now() - S.clickedAt;
      }
    }
    const r = currentRoute();
    if (r.page === "vm" && data.kind === "migrate" && data.args.vm === r.arg) renderVmMigration();
    if (r.page === "migrations") renderPage();
    if (r.page === "power" && data.id === S.powerIntent) renderPower();
    if (r.page === "nodes" && data.kind === "drain") renderDrain();
  } else if (kind === "change") {
    scheduleRefresh();
  }
}

// -- actions ----------------------------------------------------------------------------

async function act(method, path, body, what) {
  try {
    const got = await api(method, path, body);
    showError(null);
    scheduleRefresh();
    return got;
  } catch (e) {
    showError(new Error(`${what}: ${e.message}`));
    return null;
  }
}

window.vmcTiming = { click_to_progress_ms: null };  // read by the browser test and bench
window.vmc = {
  drain: (n) => act("POST", `/api/v1/nodes/${encodeURIComponent(n)}/drain`, undefined, `drain ${n}`),
  resume: (n) => act("POST", `/api/v1/nodes/${encodeURIComponent(n)}/resume`, undefined, `resume ${n}`),
  start: (v) => act("POST", `/api/v1/vms/${encodeURIComponent(v)}/start`, {}, `start ${v}`),
  stop: (v) => act("POST", `/api/v1/vms/${encodeURIComponent(v)}/stop`, undefined, `stop ${v}`),
  pause: (v) => act("POST", `/api/v1/vms/${encodeURIComponent(v)}/pause`, undefined, `pause ${v}`),
  unpause: (v) => act("POST", `/api/v1/vms/${encodeURIComponent(v)}/resume`, undefined, `resume ${v}`),
  cancel: (id) => act("POST", `/api/v1/migrations/${encodeURIComponent(id)}/cancel`, undefined, "cancel"),
  create: async (ev) => {
    ev.preventDefault();
    const name = $("#new-name").value.trim();
    const params = new URLSearchParams({ name, owner: $("#new-owner").value,
      memory_mib: $("#new-memory").value, vcpus: $("#new-vcpus").value,
      start: $("#new-start").checked ? "true" : "false" });
    const boot = $("#new-boot").value;
    if (boot) params.set("boot", boot);
    const file = $("#new-image").files[0];
    $("#create-status").textContent = file ? `uploading ${file.name} and converting it...` : "creating...";
    try {
      let got;
      if (file) {
        const resp = await fetch(`/api/v1/vms/import?${params}`, { method: "POST", body: file,
          headers: { Authorization: `Bearer ${S.token}`, "Content-Type": "application/octet-stream" } });
        got = await resp.json();
        if (!resp.ok) throw new Error(`${resp.status} ${(got.error || {}).message}`);
      } else {
        got = await api("POST", "/api/v1/vms", { name, owner: params.get("owner"),
          memory_mib: Number(params.get("memory_mib")), vcpus: Number(params.get("vcpus")),
          start: $("#new-start").checked, ...(boot ? { boot } : {}) });
      }
      $("#create-status").textContent = file
        ? `${name}: imported a ${got.import.image.format} image (${got.import.image.disk_mib} MiB) onto ${got.import.disk}`
        : `${name}: defined`;
      showError(null);
      scheduleRefresh();
    } catch (e) {
      $("#create-status").textContent = "";
      showError(new Error(`create ${name}: ${e.message}`));
    }
    return false;
  },
  predict: async (v) => {
    const to = $("#migrate-target").value;
    try {
      S.prediction = await api("GET", `/api/v1/plans/migration?vm=${encodeURIComponent(v)}&to=${encodeURIComponent(to)}`);
      showError(null);
    } catch (e) { S.prediction = null; showError(e); }
    renderPrediction();
  },
  plan: async () => {
    const policy = $("#power-policy").value;
    $("#power-status").textContent = "planning...";
    try {
      S.power = await api("GET", `/api/v1/plans/consolidation?policy=${encodeURIComponent(policy)}`);
      S.powerIntent = null;
      $("#power-status").textContent = "";
      showError(null);
    } catch (e) { S.power = null; $("#power-status").textContent = ""; showError(e); }
    renderPower();
  },
  applyPlan: async () => {
    if (!S.power) return;
    const got = await act("POST", "/api/v1/consolidations", { plan: S.power.plan }, "apply the plan");
    if (got) { S.intents[got.id] = got; S.powerIntent = got.id; }
    renderPower();
  },
  openResult: async (input) => {
    const file = input.files[0];
    if (!file) return;
    try {
      S.result = { name: file.name, data: JSON.parse(await file.text()) };
      showError(null);
    } catch (e) { S.result = null; showError(new Error(`${file.name}: not JSON (${e.message})`)); }
    renderResult();
  },
  migrate: async (v) => {
    const to = $("#migrate-target").value;
    const mode = $("#migrate-mode").value;
    S.clickedAt = performance.now();
    window.vmcTiming = { click_to_progress_ms: null, click_to_first_pass_ms: null };
    const got = await act("POST", `/api/v1/vms/${encodeURIComponent(v)}/migrate`, { to, mode },
                          `migrate ${v}`);
    if (got) { S.intents[got.id] = got; S.watching = got.id; renderVmMigration(); }
  },
};

// -- pages ------------------------------------------------------------------------------

function currentRoute() {
  const parts = (location.hash.replace(/^#\/?/, "") || "cluster").split("/");
  return { page: parts[0] || "cluster", arg: decodeURIComponent(parts[1] || "") };
}

function route() {
  const r = currentRoute();
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "") || "cluster";
    a.classList.toggle("active", target === r.page || (r.page === "vm" && target === "roles"));
  }
  S.prediction = null;
  renderPage();
}

function render() { if (!$("#app").hidden) renderPage(); }

function renderPage() {
  const r = currentRoute();
  const pages = { cluster: pageCluster, roles: pageRoles, nodes: pageNodes, storage: pageStorage,
                  networks: pageNetworks, migrations: pageMigrations, events: pageEvents,
                  power: pagePower, vm: pageVm };
  const page = pages[r.page] || pageCluster;
  if (!S.data.nodes) return;
  // A form being filled in is never re-rendered (a chosen file cannot be put back): on the
  // roles page only the table follows the cluster.
  if (r.page === "roles" && $("#create-form") && $("#vms") && S.renderedPage === "roles") {
    $("#vms").outerHTML = vmsTable();
    return;
  }
  // The power page keeps its plan and its opened result: only the plan's box follows.
  if (r.page === "power" && $("#power-box") && S.renderedPage === "power") {
    renderPower();
    return;
  }
  S.renderedPage = r.page;
  // What the user was choosing survives a re-render (the cluster changes under the page).
  const kept = {};
  for (const el of document.querySelectorAll("#main select, #main input:not([type=file])")) {
    kept[el.id] = el.value;
  }
  $("#main").innerHTML = page(r.arg);
  for (const [id, value] of Object.entries(kept)) {
    const el = document.getElementById(id);
    if (el && [...(el.options || [{ value }])].some((o) => o.value === value)) el.value = value;
  }
  if (r.page === "vm") { renderPrediction(); renderVmMigration(); openConsole(r.arg); }
  else closeConsole();
  if (r.page === "events" || r.page === "cluster") renderEvents();
  if (r.page === "power") { renderPower(); renderResult(); }
  if (r.page === "nodes") renderDrain();
}

function nodesTable() {
  const rows = S.data.nodes.map((n) => `
    <tr data-node="${esc(n.name)}">
      <td>${esc(n.name)}</td><td>${badge(n.state)}</td>
      <td>${n.report.fresh ? badge("reporting", "up") : badge("silent", "down")}</td>
      <td>${n.vms.map((v) => `<a href="#/vm/${esc(v)}">${esc(v)}</a>`).join(", ") || "-"}</td>
      <td>${n.memory_used_mib} / ${n.memory_mib} MiB</td><td>${n.vcpus_used} vCPU / ${n.cores} cores</td>
      <td class="muted">${esc(n.qemu_version || "-")}</td>
      <td>${n.state === "up"
        ? `<button class="drain" onclick="vmc.drain('${esc(n.name)}')">Pause (drain roles)</button>`
        : `<button class="resume" onclick="vmc.resume('${esc(n.name)}')">Resume</button>`}</td>
    </tr>`).join("");
  return `<table id="nodes"><tr><th>Node</th><th>Status</th><th>Report</th><th>Roles</th>
    <th>Memory</th><th>CPU</th><th>QEMU</th><th></th></tr>${rows}</table>`;
}

function networksTable() {
  const rows = S.data.networks.networks.map((n) => `
    <tr data-network="${esc(n.name)}">
      <td>${esc(n.name)}</td><td>${badge(n.state)}</td>
      <td>${n.role} ${esc({ 0: "(none)", 1: "(cluster only)", 3: "(cluster and client)" }[n.role] || "")}</td>
      <td>${n.metric}</td><td>${n.auto_metric ? "1" : "0"}</td>
      <td class="mono">${esc(n.subnet)}</td>
      <td>${n.carries.map((c) => badge(c, "")).join(" ") || "-"}</td>
      <td>${n.down.length ? "down on " + esc(n.down.join(", ")) : ""}</td></tr>`).join("");
  return `<table id="networks"><tr><th>Name</th><th>Status</th><th>Role</th><th>Metric</th>
    <th>AutoMetric</th><th>Subnet</th><th>Carries now</th><th></th></tr>${rows}</table>`;
}

function volumesTable() {
  const rows = S.data.volumes.map((v) => `
    <tr data-volume="${esc(v.name)}"><td>${esc(v.name)}</td><td>${v.size_gib} GiB</td>
      <td>${esc(v.coordinator || "-")}</td><td>${esc(v.vms.join(", ") || "-")}</td>
      <td>${v.nodes.map((a) => `${esc(a.node)}: ${badge(a.mode)}${a.via ? " via " + esc(a.via) : ""}`).join("<br>")}</td></tr>`).join("");
  return `<table id="volumes"><tr><th>Volume</th><th>Size</th><th>Coordinator</th><th>VMs</th>
    <th>Access per node</th></tr>${rows}</table>`;
}

function vmsTable() {
  const rows = S.data.vms.map((v) => `
    <tr data-vm="${esc(v.name)}"><td><a class="vm-link" href="#/vm/${esc(v.name)}">${esc(v.name)}</a></td>
      <td>${badge(v.state)}</td><td>${esc(v.desired)}</td><td class="vm-owner">${esc(v.node || "-")}</td>
      <td>${v.definition.memory_mib} MiB, ${v.definition.vcpus || 1} vCPU</td>
      <td class="mono">${esc(v.definition.address || "-")}</td>
      <td>${esc(v.definition.volume || "local")}</td></tr>`).join("");
  return `<table id="vms"><tr><th>Role</th><th>Status</th><th>Desired</th><th>Owner node</th>
    <th>Size</th><th>Address</th><th>Disk on</th></tr>${rows}</table>`;
}

function pageCluster() {
  const st = S.data.status;
  const byNode = S.data.nodes.map((n) => `
    <div class="card" data-card="${esc(n.name)}"><h3>${esc(n.name)} ${badge(n.state)}</h3>
      ${n.vms.map((v) => `<div><a href="#/vm/${esc(v)}">${esc(v)}</a></div>`).join("") || '<div class="muted">no roles</div>'}
    </div>`).join("");
  return `<h1>Cluster ${esc(st.cluster)}</h1>
    <p>Manager: ${esc(st.manager.node || "none")} · etcd leader: ${esc(st.etcd.leader || "none")}
       · heartbeats and CSV on <b>${esc(S.data.networks.cluster || "-")}</b></p>
    ${witnessLine(st.witness)}
    <h2>Roles by node</h2><div class="cards">${byNode}</div>
    <h2>Nodes</h2>${nodesTable()}
    <h2>Networks</h2>${networksTable()}
    <h2>Storage</h2>${volumesTable()}
    <h2>Recent cluster events</h2><table id="events-list"></table>`;
}

// The cluster's witness (a two-node cluster's tie-breaker): reporting, and whom it hears.
function witnessLine(w) {
  if (!w) return "";
  const hears = Object.entries(w.hears).map(([p, nets]) => `${esc(p)} (${nets.map(esc).join("/")})`);
  return `<p id="witness" data-fresh="${w.report.fresh}">Witness <b>${esc(w.name)}</b>: ${w.report.fresh
    ? `${badge("reporting", "up")} hears ${hears.join(", ") || "nobody"}`
    : `${badge("silent", "down")} the nodes keep running, a split cannot be broken`}</p>`;
}

function pageRoles() {
  const owners = S.data.nodes.map((n) => `<option value="${esc(n.name)}">${esc(n.name)}</option>`).join("");
  return `<h1>Roles</h1>${vmsTable()}
    <h2>Create a VM, or import one from a disk image</h2>
    <form id="create-form" class="actions" onsubmit="return vmc.create(event)">
      <label>name <input id="new-name" required size="10"></label>
      <label>owner <select id="new-owner">${owners}</select></label>
      <label>memory MiB <input id="new-memory" type="number" min="64" value="256" size="6"></label>
      <label>vCPUs <input id="new-vcpus" type="number" min="1" value="1" size="3"></label>
      <label>image (raw, qcow2, vmdk, vhd, vhdx) <input id="new-image" type="file"></label>
      <label>boots <select id="new-boot">
        <option value="">its image (BIOS), or the hosts' kernel</option>
        <option value="bios">its disk, BIOS (SeaBIOS)</option>
        <option value="uefi">its disk, UEFI (OVMF)</option>
        <option value="kernel">the hosts' guest kernel</option></select></label>
      <label><input id="new-start" type="checkbox"> start it</label>
      <button id="new-submit" class="primary" type="submit">Create</button>
    </form>
    <p id="create-status" class="muted"></p>`;
}
function pageNodes() { return `<h1>Nodes</h1>${nodesTable()}<div id="drain-box"></div>`; }
function pageStorage() { return `<h1>Cluster shared volumes</h1>${volumesTable()}`; }

function pageNetworks() {
  const pairs = S.data.networks.pairs.map((p) => `<tr><td>${esc(p.nodes.join(" – "))}</td>
    <td>${esc(p.cluster || "-")}</td></tr>`).join("");
  return `<h1>Networks</h1>${networksTable()}
    <h2>Per node pair</h2><table><tr><th>Pair</th><th>Heartbeats and CSV</th></tr>${pairs}</table>`;
}

function migrationRow(m) {
  const p = m.progress || {};
  return `<tr data-migration="${esc(m.id)}"><td>${esc(m.vm)}</td><td>${esc(m.to)}</td>
    <td>${esc(m.mode)}</td><td>${badge(m.state)}</td>
    <td>${p.pass ? `pass ${p.pass}, ${p.remaining_mib} MiB left` : ""}</td>
    <td>${m.result ? `${m.result.total_s} s, downtime ${m.result.downtime_ms} ms` : esc(m.error || "")}</td>
    <td>${esc(m.by || "")}</td>
    <td>${m.state === "running" || m.state === "pending"
      ? `<button onclick="vmc.cancel('${esc(m.id)}')">Cancel</button>` : ""}</td></tr>`;
}

function pageMigrations() {
  const list = Object.values(S.intents).filter((m) => (m.kind || "migrate") === "migrate")
    .map((m) => m.kind ? { id: m.id, vm: m.args.vm, to: m.args.to, mode: m.args.mode || "live",
                           state: m.state, progress: m.progress, result: m.result, error: m.error,
                           by: m.by, at: m.at } : m)
    .sort((a, b) => (b.at || 0) - (a.at || 0));
  return `<h1>Migrations</h1><table id="migrations"><tr><th>VM</th><th>To</th><th>Mode</th>
    <th>State</th><th>Progress</th><th>Result</th><th>By</th><th></th></tr>
    ${list.map(migrationRow).join("")}</table>`;
}

function pageEvents() { return `<h1>Cluster events</h1><table id="events-list"></table>`; }

function renderEvents() {
  const t = $("#events-list");
  if (!t) return;
  const shown = currentRoute().page === "events" ? 200 : 12;
  t.innerHTML = `<tr><th>#</th><th>Time</th><th>Event</th><th>Node</th><th>Details</th></tr>` +
    S.log.slice(-shown).reverse().map((e) => {
      const { seq, kind, at, node, ...rest } = e;
      return `<tr data-seq="${seq}"><td>${seq}</td><td>${fmtTime(at)}</td><td>${esc(kind)}</td>
        <td>${esc(node)}</td><td class="mono">${esc(JSON.stringify(rest))}</td></tr>`;
    }).join("");
}

function pageVm(name) {
  const v = S.data.vms.find((x) => x.name === name);
  if (!v) return `<h1>${esc(name)}</h1><p class="error">no VM ${esc(name)} in the cluster</p>`;
  const d = v.definition;
  const targets = S.data.nodes.filter((n) => n.name !== v.node && n.state === "up")
    .map((n) => `<option value="${esc(n.name)}">${esc(n.name)}</option>`).join("");
  return `<h1>Role ${esc(v.name)} ${badge(v.state)}</h1>
    <dl>
      <dt>Owner node</dt><dd id="vm-node">${esc(v.node || "-")}</dd>
      <dt>Desired state</dt><dd id="vm-desired">${esc(v.desired)}</dd>
      <dt>Memory, vCPUs</dt><dd>${d.memory_mib} MiB, ${d.vcpus || 1}</dd>
      <dt>Disk</dt><dd>${esc(d.volume ? `on shared volume ${d.volume}` : "local file")}${d.disk_mib ? `, ${d.disk_mib} MiB` : ""}</dd>
      <dt>Address</dt><dd class="mono">${esc(d.address || "-")}</dd>
      <dt>Preferred owners</dt><dd>${esc((d.preferred_owners || []).join(", ") || "any")}</dd>
      <dt>Downtime budget</dt><dd>${esc(d.max_downtime_ms || 300)} ms</dd>
      <dt>Machine</dt><dd>${esc(v.machine || "-")}</dd>
    </dl>
    <div class="actions">
      <button id="vm-start" onclick="vmc.start('${esc(v.name)}')" ${v.node ? "disabled" : ""}>Start</button>
      <button id="vm-stop" onclick="vmc.stop('${esc(v.name)}')" ${v.node ? "" : "disabled"}>Stop</button>
      <button id="vm-pause" onclick="vmc.pause('${esc(v.name)}')" ${v.node && v.state === "running" ? "" : "disabled"}>Pause</button>
      <button id="vm-resume" onclick="vmc.unpause('${esc(v.name)}')" ${v.state === "paused" ? "" : "disabled"}>Resume</button>
    </div>
    <h2>Move (live migration)</h2>
    <div class="actions">
      <label>to <select id="migrate-target">${targets}</select></label>
      <label>mode <select id="migrate-mode"><option value="live">live</option><option value="quick">quick</option></select></label>
      <button id="migrate-predict" onclick="vmc.predict('${esc(v.name)}')" ${v.node && targets ? "" : "disabled"}>Predict</button>
      <button id="migrate-start" class="primary" onclick="vmc.migrate('${esc(v.name)}')" ${v.node && targets ? "" : "disabled"}>Migrate</button>
    </div>
    <div id="prediction"></div>
    <div id="migration"></div>
    <h2>Serial console</h2>
    <pre id="console" class="console"></pre>`;
}

// A VM's serial console, live, over the API's websocket (the token is its first message).
function openConsole(vm) {
  const box = $("#console");
  if (S.console && S.console.vm === vm) {
    if (box) { box.textContent = S.console.text; box.scrollTop = box.scrollHeight; }
    return;
  }
  closeConsole();
  const ws = new WebSocket(`wss://${location.host}/api/v1/vms/${encodeURIComponent(vm)}/console/ws`);
  S.console = { vm, ws, text: "" };
  const mine = S.console;
  ws.onopen = () => ws.send(JSON.stringify({ token: S.token }));
  ws.onmessage = (ev) => {
    mine.text = (mine.text + ev.data).slice(-65536);
    const b = $("#console");
    if (b && S.console === mine) { b.textContent = mine.text; b.scrollTop = b.scrollHeight; }
  };
  ws.onclose = () => { if (S.console === mine) S.console = null; };
}

function closeConsole() {
  if (S.console) { S.console.ws.close(); S.console = null; }
}

function renderPrediction() {
  const box = $("#prediction");
  if (!box) return;
  const p = S.prediction;
  if (!p) { box.innerHTML = ""; return; }
  box.innerHTML = `<p id="predicted">Predicted over <b>${esc(p.network)}</b>:
    ${p.total_s.toFixed(2)} s in ${p.passes.length} pass${p.passes.length === 1 ? "" : "es"}, downtime ${p.downtime_ms.toFixed(0)} ms
    ${p.converged === false ? "(does not converge within the budget)" : ""}</p>`;
}

function renderVmMigration() {
  const box = $("#migration");
  if (!box) return;
  const name = currentRoute().arg;
  const mine = Object.values(S.intents)
    .filter((i) => i.kind === "migrate" && i.args && i.args.vm === name)
    .sort((a, b) => (b.at || 0) - (a.at || 0));
  const m = mine[0];
  if (!m) { box.innerHTML = ""; return; }
  const p = m.progress || {};
  const passes = (p.passes || []).map((x) => `<tr><td>${x.pass}</td><td>${x.sent_mib}</td>
    <td>${x.remaining_mib}</td></tr>`).join("");
  // This pass's share done: what it sent of what it sent plus what is left.
  const sent = p.sent_mib || 0, left = p.remaining_mib || 0;
  const pct = sent + left > 0 ? Math.max(0, Math.min(100, 100 * sent / (sent + left))) : 0;
  const r = m.result;
  box.innerHTML = `<h2>Migration to ${esc(m.args.to)} ${badge(m.state, m.state === "running" ? "running-intent" : m.state)}</h2>
    <p id="migration-state" data-state="${esc(m.state)}">${esc(p.status || m.state)}
      ${p.pass ? ` · pass ${p.pass} over ${esc(p.network || "")} <span class="bar"><span style="width:${pct.toFixed(0)}%"></span></span>` : ""}
      ${m.state === "running" ? `<button onclick="vmc.cancel('${esc(m.id)}')">Cancel</button>` : ""}</p>
    ${r ? `<p id="migration-result">${r.ok ? "Done" : "Failed"}: ${esc(r.source)} → ${esc(r.target)}
      over ${esc(r.network)}, ${r.total_s} s, ${r.passes} passes, downtime ${r.downtime_ms} ms</p>` : ""}
    ${m.error ? `<p class="error">${esc(m.error)}</p>` : ""}
    <table id="passes"><tr><th>Pass</th><th>Sent MiB</th><th>Remaining MiB</th></tr>${passes}</table>`;
}

// -- power: the consolidation plan, and a simulation's or evaluation's result -------------

function pagePower() {
  return `<h1>Power</h1>
    <p class="muted">What the consolidation policy would do now, from each VM's CPU as the host
      running it measured it: live migrations, then the emptied nodes powered off.</p>
    <div class="actions">
      <label>policy <select id="power-policy">
        <option value="ours">ours</option><option value="lr-mmt-1.2">lr-mmt-1.2</option>
        <option value="thr-mmt-0.8">thr-mmt-0.8</option></select></label>
      <button id="power-plan" class="primary" onclick="vmc.plan()">Plan</button>
      <span id="power-status" class="muted"></span>
    </div>
    <div id="power-box"></div>
    <h2>A simulation or evaluation result</h2>
    <p class="muted">Open the JSON that <code>vmcluster simulate SCENARIO --json</code> or
      <code>vmcluster evaluate --json</code> printed.</p>
    <input id="result-file" type="file" accept=".json,application/json" onchange="vmc.openResult(this)">
    <div id="result-box"></div>`;
}

// A plan's moves (a consolidation's or a drain's: one plan model), as a table.
function movesTable(p, id) {
  const rows = p.migrations.map((m) => `<tr data-move="${esc(m.vm)}"><td>${esc(m.vm)}</td>
    <td>${esc(m.source)} → ${esc(m.target)}</td><td>${esc(m.network)}</td>
    <td>${m.predicted_s.toFixed(2)} s</td><td>${m.predicted_downtime_ms.toFixed(0)} ms</td>
    <td>${(m.broke || []).map(esc).join("; ")}</td></tr>`).join("");
  return rows ? `<table id="${id}"><tr><th>VM</th><th>Move</th><th>Network</th><th>Predicted</th>
    <th>Downtime</th><th>Breaks</th></tr>${rows}</table>` : "";
}

// The latest drain's plan (its intent carries it), under the nodes table.
function renderDrain() {
  const box = $("#drain-box");
  if (!box) return;
  const drains = Object.values(S.intents).filter((m) => m.kind === "drain")
    .sort((a, b) => (a.at || 0) - (b.at || 0));
  const it = drains[drains.length - 1];
  const p = it && (((it.result || {}).plan) || ((it.progress || {}).plan));
  if (!p) { box.innerHTML = ""; return; }
  box.innerHTML = `<h2>Drain of ${esc(it.args.node)} ${badge(it.state, it.state === "running" ? "running-intent" : it.state)}</h2>
    <p id="drain-plan" data-node="${esc(it.args.node)}">${p.migrations.length} VM(s) to move,
      ${p.skipped.length} cannot; ${p.watts_before.toFixed(1)} W → ${p.watts_after.toFixed(1)} W</p>
    ${movesTable(p, "drain-moves")}
    <ul>${p.skipped.map((o) => `<li>not moving <b>${esc(o.vm)}</b>: ${esc(o.reason)}</li>`).join("")}</ul>`;
}

function renderPower() {
  const box = $("#power-box");
  if (!box) return;
  if (!S.power) { box.innerHTML = ""; return; }
  const p = S.power.plan, load = S.power.load;
  const saved = p.watts_before - p.watts_after;
  const lines = [
    ...p.power_off.map((o) => `power off <b>${esc(o.node)}</b> (${esc(o.reason)})`),
    ...p.power_on.map((n) => `power on <b>${esc(n)}</b> (the load needs it)`),
    ...p.kept_on.map((o) => `keep <b>${esc(o.node)}</b> on (${esc(o.reason)})`),
    ...p.skipped.map((o) => `not moving <b>${esc(o.vm)}</b>: ${esc(o.reason)}`)];
  const it = S.powerIntent ? S.intents[S.powerIntent] : null;
  const steps = it ? ((it.result || {}).steps || (it.progress || {}).steps || []) : [];
  box.innerHTML = `<p id="power-summary" data-before="${p.watts_before}" data-after="${p.watts_after}">
      Policy <b>${esc(p.policy)}</b>: ${p.migrations.length} migration(s);
      <b>${p.watts_before.toFixed(1)} W → ${p.watts_after.toFixed(1)} W</b>
      (${saved >= 0 ? "saves" : "costs"} ${Math.abs(saved).toFixed(1)} W,
      ${(Math.abs(saved) * 24 / 1000).toFixed(2)} kWh a day) ·
      load measured for ${load.vms_measured} of ${load.vms_running} running VMs</p>
    ${barChart(p.nodes.map((n) => ({ label: n.node, bars: [
      { name: "before", value: n.watts_before, cls: "before", note: `${n.state_before}, CPU ${(100 * n.util_before).toFixed(0)}%` },
      { name: "after", value: n.watts_after, cls: "after", note: `${n.state_after}, CPU ${(100 * n.util_after).toFixed(0)}%` }] })), "W")}
    ${movesTable(p, "power-moves")}
    <ul id="power-lines">${lines.map((l) => `<li>${l}</li>`).join("")}</ul>
    ${p.migrations.length || p.power_off.length || p.power_on.length
      ? `<button id="power-apply" class="primary" onclick="vmc.applyPlan()">Apply the plan</button>`
      : `<p class="muted">Nothing to do.</p>`}
    ${it ? `<p id="power-intent" data-state="${esc(it.state)}">Applying: ${badge(it.state, it.state === "running" ? "running-intent" : it.state)}
      ${it.error ? `<span class="error">${esc(it.error)}</span>` : ""}</p>
      <pre class="console" id="power-steps">${esc(steps.join("\n"))}</pre>` : ""}`;
}

// Bars in SVG: groups of bars (label, bars [{name, value, cls, note}]), one scale.
function barChart(groups, unit) {
  const max = Math.max(1, ...groups.flatMap((g) => g.bars.map((b) => b.value)));
  const rowH = 18, labelW = 90, width = 800, barW = width - labelW - 330;
  let y = 0, out = "";
  for (const g of groups) {
    out += `<text x="0" y="${y + rowH}" class="label">${esc(g.label)}</text>`;
    for (const b of g.bars) {
      const w = Math.max(1, barW * b.value / max);
      out += `<rect x="${labelW}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 6}" class="${esc(b.cls)}"
        data-group="${esc(g.label)}" data-bar="${esc(b.name)}" data-value="${b.value}"><title>${esc(b.name)}: ${b.value.toFixed(1)} ${unit}</title></rect>
        <text x="${labelW + w + 6}" y="${y + rowH - 3}" class="value">${esc(b.name)} ${b.value.toFixed(1)} ${unit}${b.note ? ` · ${esc(b.note)}` : ""}</text>`;
      y += rowH;
    }
    y += 8;
  }
  return `<svg class="chart bars" viewBox="0 0 ${width} ${y}" width="${width}" height="${y}">${out}</svg>`;
}

// Lines in SVG: one x series, several y series each on its own scale (a legend says which).
function lineChart(xs, series, xLabel) {
  const width = 640, height = 240, left = 40, bottom = 24, top = 12 + 14 * series.length;
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const sx = (x) => left + (width - left - 10) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0);
  let out = `<line x1="${left}" y1="${height - bottom}" x2="${width - 10}" y2="${height - bottom}" class="axis"/>
    <text x="${left}" y="${height - 6}" class="label">${x0.toFixed(1)}</text>
    <text x="${width - 10}" y="${height - 6}" class="label" text-anchor="end">${x1.toFixed(1)} ${esc(xLabel)}</text>`;
  series.forEach((s, i) => {
    const lo = Math.min(0, ...s.ys), hi = Math.max(...s.ys, lo + 1e-9);
    const sy = (v) => top + (height - bottom - top) * (1 - (v - lo) / (hi - lo));
    const pts = xs.map((x, k) => `${sx(x).toFixed(1)},${sy(s.ys[k]).toFixed(1)}`).join(" ");
    out += `<polyline points="${pts}" class="${esc(s.cls)}" data-series="${esc(s.name)}" data-max="${hi}"/>
      <text x="${left + 6}" y="${14 + 14 * i}" class="legend ${esc(s.cls)}">${esc(s.name)} (0 to ${hi.toFixed(1)})</text>`;
  });
  return `<svg class="chart lines" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">${out}</svg>`;
}

function renderResult() {
  const box = $("#result-box");
  if (!box) return;
  const r = S.result;
  if (!r) { box.innerHTML = ""; return; }
  const d = r.data;
  if (d && d.series && Array.isArray(d.series.t)) {  // vmcluster simulate --json
    const hours = d.series.t.map((t) => t / 3600);
    const ms = d.migration_summary || {};
    box.innerHTML = `<p id="result-summary" data-kind="simulation" data-energy="${d.energy_kwh}">
        Simulation <b>${esc(d.scenario)}</b> (${esc(r.name)}): ${d.hosts} hosts, ${d.vms} VMs,
        ${(d.duration_s / 3600).toFixed(1)} h; energy <b>${Number(d.energy_kwh).toFixed(3)} kWh</b>;
        ${ms.ok ?? 0} migrations (${ms.failed ?? 0} failed)</p>
      ${lineChart(hours, [{ name: "power W", ys: d.series.power_w, cls: "s1" },
                          { name: "active hosts", ys: d.series.active_hosts, cls: "s2" },
                          { name: "migrations running", ys: d.series.migrations_running, cls: "s3" }], "h")}`;
  } else if (d && Array.isArray(d.results)) {  // vmcluster evaluate --json
    const by = {};
    for (const x of d.results) (by[x.policy] = by[x.policy] || []).push(x);
    const groups = Object.entries(by).map(([policy, rows]) => {
      const mean = (k) => rows.reduce((a, x) => a + Number(x[k] || 0), 0) / rows.length;
      const note = policy === "lower-bound"
        ? "the offline lower bound: no policy serving every request can use less"
        : `SLAV ${mean("slav").toExponential(2)}, ${Math.round(mean("migrations"))} migrations`;
      return { label: policy, bars: [{ name: "energy", value: mean("energy_kwh"), cls: "before",
        note }] };
    });
    const days = [...new Set(d.results.map((x) => x.day))];
    box.innerHTML = `<p id="result-summary" data-kind="evaluation" data-policies="${groups.length}">
        Evaluation (${esc(r.name)}): ${groups.length} policies over ${days.length} day(s)
        (${esc(days.join(", "))}), mean energy per day</p>${barChart(groups, "kWh")}`;
  } else {
    box.innerHTML = "";
    showError(new Error(`${r.name}: neither a simulation (series) nor an evaluation (results)`));
  }
}

// -- start ------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
$("#login-form").addEventListener("submit", (ev) => { ev.preventDefault(); login($("#token").value.trim()); });
$("#logout").addEventListener("click", logout);
if (S.token) login(S.token); else $("#login-pane").hidden = false;
