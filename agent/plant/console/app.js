// The plant console's page: renders /api/state, then applies the server's pushed events.
"use strict";
const state = { stations: {}, yields: {}, units: [], rollouts: [], actions: false, last: {} };
const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "-").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function since(iso) { return iso ? new Date(iso).toLocaleTimeString() : "-"; }

function renderStations() {
  const rows = Object.values(state.stations).sort((a, b) => a.station.localeCompare(b.station));
  $("#stations tbody").innerHTML = rows.map((s) => {
    const y = state.yields[s.station];
    const job = s.job ? `${esc(s.job.job_id)}: ${s.job.passed}/${s.job.quantity} pass, ` +
      `${s.job.failed} fail (${esc(s.job.state)})` : "-";
    const last = state.last[s.station];
    const verdict = last ? `<span class="verdict ${last.outcome}">${last.outcome.toUpperCase()}` +
      `</span> ${esc(last.serial)}` : "-";
    return `<tr data-station="${esc(s.station)}" class="${s.online ? "online" : "offline"}">` +
      `<td>${esc(s.station)}</td>` +
      `<td class="link">${s.online ? "online" : "OFFLINE"} since ${since(s.since)}</td>` +
      `<td class="active">${esc(Object.values(s.active).join(", ") || "-")}</td>` +
      `<td>${esc(s.staged.join(", ") || "-")}</td><td class="job">${job}</td>` +
      `<td>${s.outbox_depth}</td><td>${esc(s.blocked.join("; ") || "-")}</td>` +
      `<td class="fpy">${y && y.fpy_pct !== null ? y.fpy_pct.toFixed(1) + "% of " + y.units : "-"}` +
      `</td><td class="last">${verdict}</td></tr>`;
  }).join("");
}

function figures(f) {
  if (!f) return "";
  return ` [${f.units} units, FPY ${f.fpy_pct ?? "-"}% vs ${f.baseline_fpy_pct ?? "-"}% ` +
    `before, drop ${f.fpy_drop_pp ?? "-"} pp, ${esc(f.failure_code)} ${f.failure_count}]`;
}

function renderRollouts() {
  $("#rollouts").innerHTML = state.rollouts.map((r) => {
    const waves = r.waves.map((w) => `<span class="wave ${w.state}" data-wave="${w.index + 1}">` +
      `wave ${w.index + 1}: ${w.state} (${w.stations.length})</span>`).join("");
    const finished = ["completed", "rolled_back"].includes(r.state);
    const buttons = finished ? "" : ["approve", "pause", "resume", "abort"].map((a) =>
      `<button data-action="${a}" data-rollout="${r.rollout_id}">${a}</button>`).join(" ");
    const decisions = r.decisions.slice(-8).reverse().map((d) =>
      `<li>${since(d.at)} ${esc(d.kind)} (${esc(d.actor)}): ${esc(d.summary)}` +
      `${esc(figures(d.figures))}</li>`).join("");
    return `<div class="rollout" data-rollout="${r.rollout_id}"><div>Rollout ${r.rollout_id}: ` +
      `${esc(r.plan.set_id)} to ${esc(r.plan.target)} <span class="state">${r.state}</span> ` +
      `${buttons}</div><div class="waves">${waves}</div><ul class="decisions">${decisions}` +
      `</ul></div>`;
  }).join("") || "<p>No rollouts.</p>";
}

function renderUnits() {
  $("#units").innerHTML = state.units.slice(0, 12).map((u) =>
    `<li><span class="${u.outcome}">${u.outcome.toUpperCase()}</span> ${esc(u.serial)} ` +
    `${esc(u.station)} ${esc(u.set_id)} ${u.failure_code ? esc(u.failure_code) : ""}</li>`)
    .join("");
}

async function load() {
  const body = await (await fetch("/api/state")).json();
  state.stations = Object.fromEntries(body.stations.map((s) => [s.station, s]));
  state.yields = body.yields;
  state.units = body.units;
  state.rollouts = body.rollouts;
  for (const u of [...body.units].reverse()) state.last[u.station] = u;
  renderStations(); renderRollouts(); renderUnits();
}

let refresh = null;
function connect() {
  const events = new EventSource("/events");
  events.onopen = () => { $("#live").className = "live"; $("#live").textContent = "live"; };
  events.onerror = () => { $("#live").className = "live off"; $("#live").textContent = "reconnecting"; };
  events.addEventListener("station", (e) => {
    const s = JSON.parse(e.data); state.stations[s.station] = s; renderStations();
  });
  events.addEventListener("unit", (e) => {
    const u = JSON.parse(e.data);
    state.units.unshift(u); state.last[u.station] = u; renderUnits(); renderStations();
    clearTimeout(refresh); refresh = setTimeout(load, 800);  // yields, once the record is stored
  });
  events.addEventListener("rollouts", (e) => { state.rollouts = JSON.parse(e.data); renderRollouts(); });
}

$("#rollouts").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const token = $("#token").value.trim();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const answer = await fetch(`/api/rollouts/${button.dataset.rollout}/${button.dataset.action}`,
    { method: "POST", headers });
  $("#message").textContent = (await answer.json()).message;
});

$("#trace").addEventListener("submit", async (e) => {
  e.preventDefault();
  const serial = $("#serial").value.trim();
  const body = await (await fetch(`/api/trace?serial=${encodeURIComponent(serial)}`)).json();
  $("#trace-out").textContent = body.records ? (body.records.length ? body.records.map((r) =>
    `${r.serial}: ${r.outcome.toUpperCase()} on ${r.station}/${r.slot} with ${r.firmware_set_id}` +
    ` at ${r.finished_at}` + (r.failure ? ` (${r.failure.code}: ${r.failure.detail})` : ""))
    .join("\n") : `no record of ${serial}`) : body.message;
});

load().then(connect);
