// The status page: polls /api/status (docs/monitoring.md) and draws it. Every value from
// the coordinator goes in as text (textContent), never as markup: package names and
// failure reasons come from the registry.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function count(n) { return Number(n).toLocaleString("en-US"); }

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined || s < 0) return "unknown";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h > 0 ? `${h} h ${m} min` : m > 0 ? `${m} min ${sec} s` : `${sec} s`;
}

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function rows(tbody, items, columns) {
  const trs = items.map((item) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of columns(item)) tr.appendChild(cell("td", text, cls));
    return tr;
  });
  tbody.replaceChildren(...trs);
}

function chart(points) {
  $("chart-empty").hidden = points.length > 0;
  if (points.length === 0) return;
  const max = Math.max(1, ...points.map((p) => p.packuments_per_second));
  // The x axis spans the points kept (at most the last hour), so a short run fills it.
  const t1 = points[points.length - 1].t;
  const t0 = Math.min(t1 - 1, Math.max(t1 - 3600 * 1000, points[0].t - 5000));
  const xy = points.map((p) => {
    const x = ((p.t - t0) / (t1 - t0)) * 600;
    const y = 118 - (p.packuments_per_second / max) * 112;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  $("line").setAttribute("points", xy.join(" "));
  $("chart-max").textContent = `(peak ${count(Math.round(max))} packuments/s)`;
}

function grid(cells) {
  const el = $("grid");
  while (el.children.length > cells.length) el.lastChild.remove();
  while (el.children.length < cells.length) el.appendChild(document.createElement("i"));
  cells.forEach((c, i) => {
    const square = el.children[i];
    square.className = "cell " + c.status;
    square.title = `${c.name}: ${c.status}, ${count(c.rows)} rows, ${c.attempts} attempts`;
  });
}

function show(s) {
  const state = $("state");
  state.textContent = s.state;
  state.className = "badge " + s.state;
  $("updated").textContent = "updated " + new Date(s.generated_at_unix_ms).toLocaleTimeString();
  document.body.dataset.generated = String(s.generated_at_unix_ms);
  document.body.dataset.state = s.state;
  document.body.dataset.polls = String((Number(document.body.dataset.polls) || 0) + 1);
  $("logout").hidden = !s.guarded;
  const p = s.packuments;
  $("done").textContent = count(p.done);
  $("total").textContent = count(p.total);
  $("bar").max = Math.max(1, p.total);
  $("bar").value = p.done;
  $("rate").textContent = `${count(Math.round(s.rate.packuments_per_second))} packuments/s`;
  $("throughput").textContent = bytes(s.rate.bytes_per_second) + "/s";
  $("eta").textContent = s.state === "done" ? "done" : duration(s.eta_seconds);
  $("elapsed").textContent = duration(s.elapsed_seconds);
  $("stored").textContent = count(p.stored);
  $("missing").textContent = count(p.missing);
  $("failed").textContent = count(p.failed);
  $("bytes").textContent = bytes(s.bytes_stored);
  $("rows").textContent = count(s.rows_indexed);
  $("leases").textContent = count(s.leases_open);
  $("ratelimit").textContent = s.rate_limit_current > 0 ? `${count(s.rate_limit_current)} requests/s` : "none";
  const parts = s.partitions;
  $("partitions").textContent = `(${count(parts.done)} of ${count(parts.total)} done, ${count(parts.failed)} failed)`;
  chart(s.history);
  grid(s.grid);
  rows($("fetchers"), s.fetchers, (f) => [
    [f.name],
    f.healthy ? ["healthy", "ok"] : [`resting (${f.failures} failures)`, "bad"],
    [f.last_error || "–"],
  ]);
  const failures = s.failures.recent.map((f) => ({
    when: new Date(f.at_unix_ms).toLocaleTimeString(), name: f.name || "(index partition)",
    reason: f.retryable ? `${f.reason} (will be retried)` : f.reason,
  })).concat(s.failures.failed.map((f) => ({
    when: "failed for good", name: `${f.name} (${f.kind})`, reason: `${f.reason} after ${f.attempts} attempts`,
  })));
  $("failures-total").textContent = `(${count(s.failures.total)} failed for good)`;
  rows($("failures"), failures, (f) => [[f.when], [f.name], [f.reason]]);
  const dl = $("settings");
  dl.replaceChildren(...s.settings.flatMap((kv) => [cell("dt", kv.name), cell("dd", kv.value)]));
}

async function poll() {
  try {
    const response = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    show(await response.json());
    $("error").hidden = true;
  } catch (e) {
    $("error").textContent = `Could not reach the coordinator: ${e.message}. Retrying.`;
    $("error").hidden = false;
  }
  setTimeout(poll, POLL_MS);
}

poll();
