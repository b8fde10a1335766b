// Hydra console: the live parts of server-rendered pages (Server-Sent Events).
// Text from the server is always set with textContent, never as HTML.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function when(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) : "";
}

function setState(element, state) {
  element.textContent = state;
  element.className = "state state-" + state;
}

function liveJobsTable(table) {
  const status = document.getElementById("live-status");
  if (table.dataset.live !== "yes") {
    if (status) status.textContent = "not live (an older page)";
    return;
  }
  const body = table.tBodies[0];
  const wanted = { task: table.dataset.task, state: table.dataset.state };
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("ready", () => {
    if (status) { status.textContent = "live"; status.classList.add("on"); }
  });
  source.addEventListener("reload", () => window.location.reload());
  source.onerror = () => { if (status) { status.textContent = "reconnecting…"; status.classList.remove("on"); } };
  source.addEventListener("job", (event) => {
    const change = JSON.parse(event.data);
    let row = body.querySelector('tr[data-job="' + CSS.escape(change.job_id) + '"]');
    const matches = (!wanted.task || wanted.task === change.task) && (!wanted.state || wanted.state === change.state);
    if (row && !matches && wanted.state) { row.remove(); return; }
    if (!row) {
      if (!matches) return;
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.job = change.job_id;
      const link = document.createElement("a");
      link.href = table.dataset.jobUrl + encodeURIComponent(change.job_id);
      link.textContent = change.job_id;
      const first = document.createElement("td");
      first.appendChild(link);
      row.append(first, cell(change.task), cell(String(change.attempt)), cell("", ""),
                 cell("", "reason"), cell(when(change.at)), cell(""), cell(""));
      body.insertBefore(row, body.firstChild);
    }
    setState(row.cells[3], change.state);
    row.cells[4].textContent = change.reason;
    if (change.state === "running") row.cells[6].textContent = when(change.at);
    if (["succeeded", "failed", "cancelled", "timed_out"].includes(change.state)) row.cells[7].textContent = when(change.at);
  });
}

function liveJobPage(section) {
  const log = document.getElementById("log");
  const logStatus = document.getElementById("log-status");
  const maxLines = parseInt(log.dataset.maxLines || "5000", 10);
  let shown = 0;
  const source = new EventSource(section.dataset.stream);
  source.addEventListener("reload", () => window.location.reload());
  source.addEventListener("state", (event) => {
    const change = JSON.parse(event.data);
    setState(document.getElementById("job-state"), change.state);
    const history = document.querySelector("#history tbody");
    if (history) {
      const last = history.lastElementChild;
      const row = document.createElement("tr");
      row.append(cell(when(change.at)), cell(last ? last.cells[2].textContent : ""),
                 cell(change.state, "state state-" + change.state), cell(change.reason));
      history.appendChild(row);
    }
    document.getElementById("job-reason").textContent = change.reason;
    if (["succeeded", "failed", "cancelled", "timed_out"].includes(change.state)) {
      document.getElementById("job-finished").textContent = when(change.at);
      const cancel = document.getElementById("cancel");
      if (cancel) cancel.disabled = true;
    }
  });
  source.addEventListener("stats", (event) => {
    const view = JSON.parse(event.data);
    const body = document.querySelector("#stats tbody");
    body.replaceChildren(...view.stats.map(([key, value]) => {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = key;
      row.append(th, cell(value));
      return row;
    }));
    if (view.items.length) {
      document.getElementById("items").replaceChildren(...view.items.map((text) => {
        const li = document.createElement("li");
        const pre = document.createElement("pre");
        pre.className = "item";
        pre.textContent = text;
        li.appendChild(pre);
        return li;
      }));
      document.getElementById("no-items").hidden = true;
    }
  });
  source.addEventListener("log", (event) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const lines = JSON.parse(event.data);
    const node = document.createTextNode(lines.join("\n") + "\n");
    node.hydraLines = lines.length;
    log.append(node);
    shown += lines.length;
    while (shown > maxLines && log.firstChild && log.firstChild !== node) {
      shown -= log.firstChild.hydraLines || 0;
      log.removeChild(log.firstChild);
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
    if (logStatus) logStatus.textContent = "live";
  });
  source.addEventListener("log-end", () => { if (logStatus) logStatus.textContent = "(complete)"; });
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("jobs");
  if (table && table.dataset.stream) liveJobsTable(table);
  const job = document.getElementById("job");
  if (job && job.dataset.stream) liveJobPage(job);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => { if (!window.confirm(form.dataset.confirm)) event.preventDefault(); });
  });
});
