// The status page: fetches status.json every second and redraws. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function bar(job) {
  const pct = (n) => (job.total ? (100 * n) / job.total : 0).toFixed(1) + "%";
  const b = el("div", { class: "bar", role: "progressbar", "aria-valuenow": job.verified + job.failed, "aria-valuemax": job.total });
  b.append(el("span", { class: "verified", style: "width:" + pct(job.verified) }));
  b.append(el("span", { class: "failed", style: "width:" + pct(job.failed) }));
  b.append(el("span", { class: "running", style: "width:" + pct(job.running) }));
  return b;
}

function draw(s) {
  $("peer-id").textContent = s.peer.id.slice(0, 16) + "… at " + s.peer.addr;
  const state = $("state");
  state.textContent = s.peer.paused ? "Paused: " + s.peer.paused : s.peer.running > 0 ? "Working: " + s.peer.running + " tasks running" : "Idle, waiting for work";
  state.className = "state " + (s.peer.paused ? "paused" : "working");
  facts($("me"), [
    ["CPUs given", s.peer.cpus],
    ["tasks running", s.peer.running],
    ["tasks run today", s.peer.tasks_run_today + " (" + s.peer.tasks_not_ok_today + " did not succeed)"],
    ["task memory held", s.peer.task_memory],
    ["up for", s.peer.uptime],
    ...(s.peer.store_rolled_back_commits ? [["store rolled back at start", s.peer.store_rolled_back_commits + " commits lost (see the log)"]] : []),
  ]);
  facts($("controls"), Object.entries(s.controls));
  $("mesh").tBodies[0].replaceChildren(
    ...s.mesh.map((p) =>
      el("tr", {}, el("td", { class: "mono" }, p.id.slice(0, 12) + (p.me ? " (this peer)" : "")), el("td", {}, p.addr),
        el("td", {}, el("span", { class: "badge " + p.state }, p.state)), el("td", {}, p.reachability),
        el("td", {}, p.cpus_free + " / " + p.cpus_total)),
    ),
  );
  $("no-jobs").hidden = s.jobs.length > 0;
  $("jobs").tBodies[0].replaceChildren(
    ...s.jobs.map((j) =>
      el("tr", { "data-job": j.id, "data-state": j.state },
        el("td", { class: "mono" }, j.id.slice(0, 12) + (j.label ? " " + j.label : "")),
        el("td", {}, el("span", { class: "badge " + j.state }, j.state)),
        el("td", {}, bar(j)),
        el("td", {}, j.verified + " verified, " + j.failed + " failed, " + j.running + " running of " + j.total),
        el("td", { class: "mono" }, j.verified_by.map((v) => v.peer.slice(0, 8) + " ×" + v.tasks).join(", ") || "—")),
    ),
  );
  $("updated").textContent = new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    draw(await r.json());
  } catch (e) {
    $("state").textContent = "Cannot reach the peer: " + e.message;
    $("state").className = "state paused";
  }
}

refresh();
setInterval(refresh, 1000);
