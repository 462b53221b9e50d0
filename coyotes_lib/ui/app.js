// Coyotes dashboard: plain JavaScript, no build step, served by the daemon itself.
// Every action goes through the JSON API with the same token a script would send;
// pages refresh once a second while visible, and stop when the tab is hidden.
"use strict";

const REFRESH_MS = 1000;
const PAGE = 50;   // tasks, letters, delayed tasks per page
const MAX_ROWS = 300;   // channels shown at once on the overview (a filter finds the rest)
const TOKEN_KEY = "coyotes-token";

// -- labels --------------------------------------------------------------------------
const LABELS = {
  en: {
    overview: "Overview", failed: "Failed", delayed: "Delayed", schedules: "Schedules",
    dead_letters: "Dead letters", channels: "Channels", channel: "Channel", nodes: "Nodes",
    node: "Node", name: "Name", state: "State", queued: "Queued", running: "Running",
    workers: "Workers", finished_hour: "Finished / min (1 h)",
    pause: "Pause", resume: "Resume", save: "Save", settings: "Settings",
    max_running: "Max running (all nodes, 0: no limit)", worker: "Workers per node",
    queue: "Queue", previous: "Previous", next: "Next", of: "of", task: "Task",
    command: "Command", attempt: "Attempt", output: "Output",
    retry: "Retry", delete: "Delete", retry_all: "Retry all", delete_all: "Delete all",
    cancel: "Cancel", kill: "Kill", due: "Due", enable: "Enable", disable: "Disable",
    run_now: "Run now", cron: "Cron", next_run: "Next run", last_run: "Last run",
    reason: "Reason", when: "When",
    entry: "Entry", view: "View", requeue: "Requeue", close: "Close", host: "Host",
    heartbeat: "Heartbeat", version: "Version",
    since: "Since", pid: "PID", exit: "Exit", error: "Error", none: "Nothing here.",
    filter: "Filter channels", more_rows: "more channels: use the filter",
    token_title: "This API needs a token", token_help: "Paste an API token (read-write to act, read-only to look). It is kept in this tab only, unless you tick the box.",
    token_remember: "Remember on this browser", sign_in: "Use token", sign_out: "Forget token",
    refreshing: "live", stale: "not updating", done: "Done.", confirm: "Are you sure?",
    failed_of: "Failed tasks of", no_failed: "No channel has failed tasks.",
    output_live: "live", output_end: "ended", dropped: "lines dropped (the reader came late)",
    edit_requeue: "Edit the entry, then requeue it: the router checks it again.",
    truncated: "only the start of this entry was kept",
    dead_total: "dead letters", trimmed: "trimmed off so far",
    sampled: "(counted among the soonest)", finished_last: "last minute",
    failures: "not succeeded", go_task: "Open a task by id", open: "Open",
    retries: "Retries", timeout: "Timeout (s)",
    retry_count: "Retried", redeliveries: "Redelivered", queued_at: "Queued",
    execute_at: "Runs at", started_at: "Started", finished_at: "Finished",
    retry_at: "Retry at", duration: "Duration", signal: "Signal",
  },
  zh: {
    overview: "概览", failed: "失败任务", delayed: "延时任务", schedules: "定时任务",
    dead_letters: "死信", channels: "频道", channel: "频道", nodes: "节点", node: "节点",
    name: "名称", state: "状态", queued: "排队", running: "运行中", workers: "并发",
    finished_hour: "每分钟完成数（1 小时）",
    pause: "暂停", resume: "恢复", save: "保存", settings: "设置",
    max_running: "全部节点最多运行数（0：不限）", worker: "每节点并发数", queue: "队列",
    previous: "上一页", next: "下一页", of: "/", task: "任务", command: "命令",
    attempt: "第几次执行", output: "输出", retry: "重试", delete: "删除",
    retry_all: "全部重试", delete_all: "全部删除", cancel: "取消", kill: "终止",
    due: "执行时间", enable: "启用", disable: "停用", run_now: "立即执行", cron: "Cron",
    next_run: "下次执行", last_run: "上次执行",
    reason: "原因", when: "时间", entry: "条目", view: "查看", requeue: "重新入队",
    close: "关闭", host: "主机", heartbeat: "心跳", version: "版本",
    since: "开始于", pid: "PID", exit: "退出码",
    error: "错误", none: "暂无内容。", filter: "筛选频道", more_rows: "个频道未显示：请使用筛选",
    token_title: "此 API 需要令牌", token_help: "粘贴 API 令牌（read-write 可操作，read-only 只读）。默认只保存在当前标签页，勾选后保存在此浏览器。",
    token_remember: "在此浏览器记住", sign_in: "使用令牌", sign_out: "清除令牌",
    refreshing: "实时", stale: "未更新", done: "完成。", confirm: "确定吗？",
    failed_of: "失败任务：", no_failed: "没有频道有失败任务。",
    output_live: "实时", output_end: "已结束", dropped: "行被丢弃（读取者来晚了）",
    edit_requeue: "编辑条目后重新入队：路由器会重新检查。",
    truncated: "此条目只保留了开头部分",
    dead_total: "条死信", trimmed: "条已被截断",
    sampled: "（在最近的任务中统计）", finished_last: "最近一分钟",
    failures: "未成功", go_task: "按 ID 打开任务", open: "打开",
    retries: "重试次数", timeout: "超时（秒）",
    retry_count: "已重试", redeliveries: "重新投递", queued_at: "入队时间",
    execute_at: "计划执行", started_at: "开始时间", finished_at: "结束时间",
    retry_at: "重试时间", duration: "耗时", signal: "信号",
  },
};
// states, as badges show them (English: the API's own words)
const STATES = {
  en: {},
  zh: {
    active: "正常", paused: "已暂停", running: "运行中", queued: "排队中", delayed: "延时",
    succeeded: "成功", failed: "失败", timed_out: "超时", canceled: "已取消", killed: "已终止",
    up: "在线", down: "离线", draining: "排空中", enabled: "已启用", disabled: "已停用",
    high: "高优先级", unknown: "未知",
  },
};
// the browser's first language that we have labels for; English otherwise
const LANG = ((navigator.languages && navigator.languages.length ? navigator.languages
  : [navigator.language || "en"]).map((l) => l.slice(0, 2).toLowerCase())
  .find((l) => l in LABELS)) || "en";
const t = (key) => LABELS[LANG][key] || LABELS.en[key] || key;

// -- DOM helpers: text is always set as text, never parsed as HTML --------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}
// replaceChildren without the empty parts (it would write "null")
const put = (el, ...kids) => el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
const link = (href, text, attrs) => h("a", { href, ...attrs }, text);
const badge = (word, kind) => h("span", { class: `badge ${kind || word}` },
  STATES[LANG][word] || word.replace("_", " "));
const taskLink = (id) => link(`#/tasks/${encodeURIComponent(id)}`, id, { class: "mono" });
const chanLink = (name) => link(`#/channels/${encodeURIComponent(name)}`, name);

function table(headers, rows, numeric) {
  if (!rows.length) return h("div", { class: "scroll" }, h("div", { class: "empty" }, t("none")));
  return h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((text, i) =>
      h("th", { class: numeric && numeric.includes(i) ? "num" : null }, text)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell, i) =>
      h("td", { class: numeric && numeric.includes(i) ? "num" : (typeof cell === "string" && cell.length > 40 ? "wrap" : null) }, cell)))))));
}

function fields(pairs) {
  return h("dl", { class: "fields" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// seconds (unix, Redis's clock) -> "3 s ago" / "in 2 min", against the server's clock
let skew = null;   // server clock - browser clock, seconds (null: not known yet)
function ago(unix) {
  if (!unix) return "";
  const d = Date.now() / 1000 + (skew || 0) - unix;
  const abs = Math.abs(d);
  const text = abs < 90 ? `${Math.round(abs)} s` : abs < 5400 ? `${Math.round(abs / 60)} min`
    : abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  if (LANG === "zh") return d >= 0 ? `${text}前` : `${text}后`;
  return d >= 0 ? `${text} ago` : `in ${text}`;
}
const stamp = (unix) => unix ? h("span", { title: new Date(unix * 1000).toLocaleString() }, ago(unix)) : "";
const commandText = (item) => item.command
  ? [item.command.name, ...(item.command.args || [])].join(" ") : (item.task_name || "");
const lastLine = (text) => (text || "").trimEnd().split("\n").pop();
const argvText = (argv) => Array.isArray(argv) ? argv.join(" ") : (argv || "");

// -- the API ------------------------------------------------------------------------
function token() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";
}
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let reply;
  try {
    reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `${path}: ${err.message}`);
  }
  if (skew === null && reply.headers.get("Date")) skew = Date.parse(reply.headers.get("Date")) / 1000 - Date.now() / 1000;
  let data = null;
  try { data = await reply.json(); } catch (err) { data = null; }
  if (reply.status === 401) { askToken(data && data.message); throw new ApiError(401, data ? data.message : "401"); }
  if (!reply.ok) throw new ApiError(reply.status, data && data.message ? data.message : `HTTP ${reply.status}`);
  return data ? data.data : null;
}
// a state change: say what happened, then refresh the page at once
async function act(method, path, body, ask) {
  if (ask && !window.confirm(ask)) return null;
  try {
    const result = await api(method, path, body);
    notice(t("done"), true);
    refresh();
    return result;
  } catch (err) {
    notice(err.message);
    return null;
  }
}

function notice(text, good) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = good ? "notice ok" : "notice";
  el.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { el.hidden = true; }, good ? 2000 : 8000);
}

let asking = false;
function askToken(message) {
  if (asking) return;
  asking = true;
  stopTimer();
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "token" });
  const remember = h("input", { type: "checkbox", id: "remember" });
  const main = document.getElementById("main");
  put(main, h("form", {
    class: "token", onsubmit: (ev) => {
      ev.preventDefault();
      sessionStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(TOKEN_KEY);
      (remember.checked ? localStorage : sessionStorage).setItem(TOKEN_KEY, input.value.trim());
      asking = false;
      route();
    },
  }, h("h1", {}, t("token_title")), message ? h("p", { class: "muted" }, message) : null,
  h("p", {}, t("token_help")), h("p", {}, input),
  h("p", {}, h("label", { class: "check" }, h("span", {}, remember, " ", t("token_remember")))),
  h("button", { class: "primary", type: "submit" }, t("sign_in"))));
  input.focus();
}

// -- the pages ----------------------------------------------------------------------
// Each page is {title, nav, build(el, params) -> update()}: build makes what stays
// (forms the user may be typing in), update() reads the API and redraws the rest.
const pages = {};
let current = null;   // {update, name}
let timer = null;
let busy = false;

function spark(done, failed) {
  const top = Math.max(1, ...done);
  const width = 120, height = 24, bar = width / done.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  done.forEach((n, i) => {
    for (const [value, kind] of [[n, ""], [failed[i], "failed"]]) {
      if (!value) continue;
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const tall = Math.max(1, (value / top) * height);
      r.setAttribute("x", (i * bar).toFixed(1));
      r.setAttribute("y", (height - tall).toFixed(1));
      r.setAttribute("width", Math.max(1, bar - 0.5).toFixed(1));
      r.setAttribute("height", tall.toFixed(1));
      if (kind) r.setAttribute("class", kind);
      svg.append(r);
    }
  });
  const total = done.reduce((a, b) => a + b, 0), bad = failed.reduce((a, b) => a + b, 0);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = `${total} / h, ${bad} ${t("failures")}`;
  svg.append(title);
  return h("span", { class: "spark-cell" }, svg, h("span", { class: "muted", title: t("finished_last") }, done[done.length - 1]));
}

function nodeRows(nodes) {
  return nodes.map((n) => [h("span", { class: "mono" }, n.id), n.host || "",
    n.alive ? badge(n.draining ? "draining" : "up") : badge("down"),
    n.heartbeat_age === null || n.heartbeat_age === undefined ? "" : `${n.heartbeat_age.toFixed(1)} s`,
    n.running, n.version || "", stamp(n.started_at)]);
}
const NODE_HEADERS = () => [t("node"), t("host"), t("state"), t("heartbeat"), t("running"), t("version"), t("since")];

pages.overview = {
  nav: "overview",
  build(el) {
    const filter = h("input", { type: "search", placeholder: t("filter"), id: "filter" });
    const cards = h("div", { class: "cards" });
    const chans = h("div"), nodes = h("div");
    el.append(h("h1", {}, t("overview")), cards, h("h2", {}, t("channels")),
      h("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() }, filter), chans,
      h("h2", {}, t("nodes")), nodes,
      h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); const id = ev.target.elements.task.value.trim(); if (id) location.hash = `#/tasks/${encodeURIComponent(id)}`; } },
        h("label", {}, t("go_task"), h("input", { name: "task", class: "mono" })), h("button", { type: "submit" }, t("open"))));
    let last = null;
    const update = async (fresh) => {
      if (fresh !== false) last = await api("GET", "/overview");
      if (!last) return;
      const o = last;
      skew = o.now - Date.now() / 1000;
      const sum = (key) => o.channels.reduce((a, c) => a + c[key], 0);
      put(cards, [
        [o.channels.length, t("channels")], [sum("running"), t("running")], [sum("queued"), t("queued")],
        [o.delayed, t("delayed"), "#/delayed"], [sum("failed"), t("failed"), "#/failed"],
        [o.dead_letters, t("dead_letters"), "#/dead-letters"],
        [o.nodes.filter((n) => n.alive).length, t("nodes")],
      ].map(([n, label, href]) => h("div", { class: "card" }, h("b", {}, href ? link(href, n) : n), h("span", {}, label))));
      const words = filter.value.trim().toLowerCase();
      const shown = o.channels.filter((c) => !words || c.name.toLowerCase().includes(words));
      put(chans, table(
        [t("channel"), t("state"), t("queued"), t("running"), t("delayed"), t("failed"), t("workers"), t("finished_hour")],
        shown.slice(0, MAX_ROWS).map((c) => [chanLink(c.name), badge(c.paused ? "paused" : "active"),
          c.queued, c.running, o.delayed_counted ? c.delayed : h("span", { title: t("sampled") }, `${c.delayed}+`),
          c.failed ? link(`#/failed/${encodeURIComponent(c.name)}`, c.failed) : 0,
          c.max_running ? `${c.worker} (≤ ${c.max_running})` : c.worker,
          spark(c.finished_per_minute, c.failed_per_minute)]), [2, 3, 4, 5, 6]),
      shown.length > MAX_ROWS ? h("p", { class: "muted" }, `${shown.length - MAX_ROWS} ${t("more_rows")}`) : null);
      put(nodes, table(NODE_HEADERS(), nodeRows(o.nodes), [4]));
    };
    filter.addEventListener("input", () => update(false));
    return update;
  },
};

pages.channel = {
  nav: "overview",
  build(el, [name]) {
    let offset = 0;
    const head = h("h1", {}, t("channel"), " ", h("span", { class: "mono" }, name));
    const state = h("span"), buttons = h("span", { class: "actions" });
    head.append(state, buttons);
    const worker = h("input", { type: "number", min: 1, name: "worker", id: "worker", "data-shown": "" });
    const limit = h("input", { type: "number", min: 0, name: "max_running", id: "max_running", "data-shown": "" });
    const resize = h("form", {
      class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        // only what was changed here: a field left alone keeps what others set meanwhile
        const body = {};
        for (const input of [worker, limit]) {
          if (input.value !== "" && input.value !== input.dataset.shown) body[input.name] = Number(input.value);
        }
        act("PATCH", `/channels/${encodeURIComponent(name)}`, body);
      },
    }, h("label", {}, t("worker"), worker), h("label", {}, t("max_running"), limit),
    h("button", { type: "submit", class: "primary", id: "resize" }, t("save")));
    const cards = h("div", { class: "cards" }), settings = h("div"), running = h("div"), queue = h("div");
    const pager = h("div", { class: "pager" });
    el.append(head, cards, h("h2", {}, t("settings")), resize, settings, h("h2", {}, t("running")), running,
      h("h2", {}, t("queue")), queue, pager);
    // a field shows the server's value unless the user is editing it
    const sync = (input, value) => {
      const now = String(value);
      if (input.value === input.dataset.shown && document.activeElement !== input) input.value = now;
      if (input.value === now) input.dataset.shown = now;
    };
    return async () => {
      const path = `/channels/${encodeURIComponent(name)}`;
      const c = await api("GET", `${path}?offset=${offset}&limit=${PAGE}`);
      put(state, badge(c.paused ? "paused" : "active"));
      put(buttons, c.paused
        ? h("button", { class: "primary", id: "resume", onclick: () => act("POST", `${path}/resume`) }, t("resume"))
        : h("button", { id: "pause", onclick: () => act("POST", `${path}/pause`) }, t("pause")),
      link(`#/failed/${encodeURIComponent(name)}`, `${t("failed")} (${c.counts.failed})`));
      put(cards, [[c.counts.queued, t("queued")], [c.counts.running, t("running")],
        [c.counts.failed, t("failed")], [c.nodes.length, t("nodes")]]
        .map(([n, label]) => h("div", { class: "card" }, h("b", {}, n), h("span", {}, label))));
      sync(worker, c.settings.worker);
      sync(limit, c.settings.max_running);
      const s = c.settings;
      put(settings, fields([["distinct", String(s.distinct)], [t("timeout"), s.timeout],
        [t("retries"), s.retries], ["retry_on", (s.retry_on || []).join(", ")],
        ["command_policy", s.command_policy ? JSON.stringify(s.command_policy) : ""],
        [t("nodes"), c.nodes.join(", ")]]));
      const run = c.tasks.filter((x) => x.status === "running");
      put(running, table([t("task"), t("command"), t("node"), t("pid"), t("since"), ""],
        run.map((x) => [taskLink(x.task_id), commandText(x), x.node || "", x.pid || "", stamp(x.started_at),
          h("button", { class: "danger", onclick: () => act("DELETE", `/tasks/${encodeURIComponent(x.task_id)}`, undefined, `${t("kill")} ${x.task_id}?`) }, t("kill"))])));
      const waiting = c.tasks.filter((x) => x.status !== "running");
      put(queue, table([t("task"), t("command"), "", ""],
        waiting.map((x) => [taskLink(x.task_id), commandText(x), x.priority === "high" ? badge("high", "running") : "",
          h("button", { onclick: () => act("DELETE", `${path}/tasks/${encodeURIComponent(x.task_id)}`, undefined, `${t("cancel")} ${x.task_id}?`) }, t("cancel"))])));
      put(pager, pagerOf(offset, c.count, (next) => { offset = next; refresh(); }));
    };
  },
};

function pagerOf(offset, count, go) {
  if (count <= PAGE && offset === 0) return [];
  return [h("button", { disabled: offset === 0, onclick: () => go(Math.max(0, offset - PAGE)) }, t("previous")),
    h("span", { class: "muted" }, `${count ? offset + 1 : 0}–${Math.min(offset + PAGE, count)} ${t("of")} ${count}`),
    h("button", { disabled: offset + PAGE >= count, onclick: () => go(offset + PAGE) }, t("next"))];
}

const FINAL = ["succeeded", "failed", "timed_out", "canceled", "killed"];

pages.task = {
  nav: "overview",
  build(el, [id]) {
    const path = `/tasks/${encodeURIComponent(id)}`;
    const head = h("h1", {}, t("task"), " ", h("span", { class: "mono" }, id));
    const state = h("span"), buttons = h("span", { class: "actions" });
    head.append(state, buttons);
    const record = h("div"), out = h("pre", { class: "output", id: "output" }), outState = h("span", { class: "muted" });
    el.append(head, record, h("h2", {}, t("output"), " ", outState), out);
    let streaming = false, ended = false;
    const me = current;   // this page, while it is shown
    const stream = async () => {
      if (me !== current) return;   // left meanwhile: nobody would stop it
      streaming = true;
      out.replaceChildren();
      outState.textContent = t("output_live");
      const ctl = new AbortController();
      me.abort = () => ctl.abort();
      try {
        const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
        const reply = await fetch(`${path}/output`, { headers, signal: ctl.signal, cache: "no-store" });
        if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
        const reader = reply.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            onEvent(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
          }
        }
      } catch (err) {
        if (err.name !== "AbortError") outState.textContent = err.message;
      }
      if (!ended) streaming = false;   // cut off (a restart, the network): follow it again
    };
    const onEvent = (block) => {
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      const text = data.join("\n");
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      if (name === "stdout" || name === "stderr") {
        out.append(h("span", { class: name }, JSON.parse(text) + "\n"));
      } else if (name === "dropped") {
        const info = JSON.parse(text);
        out.append(h("span", { class: "marker" }, `… ${info.lines} ${t("dropped")}\n`));
      } else if (name === "end") {
        const info = JSON.parse(text);
        ended = true;
        put(outState, t("output_end"), " ", badge(info.status || "unknown"),
          info.exit_code !== null && info.exit_code !== undefined ? ` ${t("exit")} ${info.exit_code}` : "");
        refresh();
      }
      if (stick) out.scrollTop = out.scrollHeight;
    };
    return async () => {
      const r = await api("GET", path);
      if (me !== current) return;
      put(state, badge(r.status || "unknown"));
      const chan = r.channel || "";
      const acts = [];
      if (["queued", "delayed", "running"].includes(r.status)) {
        acts.push(h("button", { class: "danger", id: "cancel", onclick: () => act("DELETE", path, undefined, `${r.status === "running" ? t("kill") : t("cancel")} ${id}?`) },
          r.status === "running" ? t("kill") : t("cancel")));
      }
      if (r.status === "failed") {
        acts.push(h("button", { class: "primary", id: "retry", onclick: () => act("POST", `/channels/${encodeURIComponent(chan)}/failed-tasks/${encodeURIComponent(id)}`).then(() => { streaming = false; ended = false; }) }, t("retry")));
      }
      put(buttons, acts);
      put(record, fields([
        [t("channel"), chan ? chanLink(chan) : ""], [t("command"), h("span", { class: "mono" }, argvText(r.argv) || r.name || "")],
        [t("attempt"), r.attempt], [t("retry_count"), r.retry_count || ""], [t("redeliveries"), r.redeliveries || ""],
        [t("retries"), r.retries || ""], [t("timeout"), r.timeout || ""], [t("node"), r.node], [t("pid"), r.pid],
        ...["queued_at", "execute_at", "started_at", "finished_at", "retry_at"].map((key) => [t(key), stamp(r[key])]),
        [t("duration"), r.duration !== undefined ? `${r.duration} s` : ""], [t("exit"), r.exit_code], [t("signal"), r.signal],
        [t("error"), r.error]]));
      // a task that runs again (retried) gets a new stream
      if ((!streaming || (ended && !FINAL.includes(r.status))) && r.status !== "queued" && r.status !== "delayed") {
        ended = false;
        if (me.abort) me.abort();
        stream();
      }
    };
  },
};

pages.failed = {
  nav: "failed",
  build(el, [name]) {
    let offset = 0;
    const pick = h("div", { class: "actions" }), head = h("h2"), buttons = h("div", { class: "actions" });
    const list = h("div"), pager = h("div", { class: "pager" });
    el.append(h("h1", {}, t("failed")), pick, head, buttons, list, pager);
    return async () => {
      const o = await api("GET", "/overview");
      const withFailed = o.channels.filter((c) => c.failed);
      const chan = name || (withFailed[0] && withFailed[0].name);
      put(pick, withFailed.map((c) => link(`#/failed/${encodeURIComponent(c.name)}`, `${c.name} (${c.failed})`, { class: c.name === chan ? "badge failed" : "badge" })));
      if (!chan) {
        head.replaceChildren();
        buttons.replaceChildren();
        put(list, h("p", { class: "muted" }, t("no_failed")));
        pager.replaceChildren();
        return;
      }
      const path = `/channels/${encodeURIComponent(chan)}/failed-tasks`;
      const f = await api("GET", `${path}?offset=${offset}&limit=${PAGE}`);
      put(head, t("failed_of"), " ", chanLink(chan));
      put(buttons,
        h("button", { class: "primary", id: "retry-all", disabled: !f.count, onclick: () => act("POST", path, undefined, `${t("retry_all")} (${f.count})?`) }, t("retry_all")),
        h("button", { class: "danger", id: "delete-all", disabled: !f.count, onclick: () => act("DELETE", path, undefined, `${t("delete_all")} (${f.count})?`) }, t("delete_all")));
      put(list, table([t("task"), t("command"), t("exit"), t("error"), t("attempt"), t("when"), ""],
        f.tasks.map((x) => [taskLink(x.task_id), commandText(x), x.exit_code ?? (x.signal ? `signal ${x.signal}` : ""),
          x.error || lastLine(x.stderr), x.attempt || "", stamp(x.failed_at),
          h("span", { class: "actions" },
            h("button", { class: "retry", onclick: () => act("POST", `${path}/${encodeURIComponent(x.task_id)}`) }, t("retry")),
            h("button", { class: "danger", onclick: () => act("DELETE", `${path}/${encodeURIComponent(x.task_id)}`, undefined, `${t("delete")} ${x.task_id}?`) }, t("delete")))])));
      put(pager, pagerOf(offset, f.count, (next) => { offset = next; refresh(); }));
    };
  },
};

pages.delayed = {
  nav: "delayed",
  build(el) {
    let offset = 0;
    const list = h("div"), pager = h("div", { class: "pager" });
    el.append(h("h1", {}, t("delayed")), list, pager);
    return async () => {
      const d = await api("GET", `/delay-tasks?offset=${offset}&limit=${PAGE}`);
      put(list, table([t("task"), t("channel"), t("command"), t("due"), ""],
        d.tasks.map((x) => [taskLink(x.task_id), chanLink(x.channel), commandText(x), stamp(x.execute_at),
          h("button", { class: "danger", onclick: () => act("DELETE", `/delay-tasks/${encodeURIComponent(x.task_id)}`, undefined, `${t("cancel")} ${x.task_id}?`) }, t("cancel"))])));
      put(pager, pagerOf(offset, d.count, (next) => { offset = next; refresh(); }));
    };
  },
};

pages.schedules = {
  nav: "schedules",
  build(el) {
    const list = h("div");
    el.append(h("h1", {}, t("schedules")), list);
    return async () => {
      const s = await api("GET", "/schedules");
      put(list, table([t("name"), t("state"), t("cron"), t("channel"), t("command"), t("next_run"), t("last_run"), ""],
        s.schedules.map((x) => {
          const path = `/schedules/${encodeURIComponent(x.name)}`;
          if (x.error) return [x.name, badge("error", "failed"), x.error, "", "", "", "", ""];
          return [h("span", { class: "mono" }, x.name), badge(x.enabled ? "enabled" : "disabled", x.enabled ? "active" : "paused"),
            h("span", { class: "mono" }, `${x.cron}${x.timezone && x.timezone !== "UTC" ? ` (${x.timezone})` : ""}`),
            chanLink(x.channel), h("span", { class: "mono" }, x.command), stamp(x.next_runs[0]),
            x.last && x.last.task_id ? h("span", {}, taskLink(x.last.task_id), " ", x.last.status ? badge(x.last.status) : "") : "",
            h("span", { class: "actions" },
              h("button", { class: "toggle", onclick: () => act("POST", `${path}/${x.enabled ? "disable" : "enable"}`) }, x.enabled ? t("disable") : t("enable")),
              h("button", { class: "run", onclick: () => act("POST", `${path}/run`) }, t("run_now")))];
        })));
    };
  },
};

pages.dead = {
  nav: "dead_letters",
  build(el) {
    let offset = 0, open = null;   // the letter being edited: the page does not redraw it
    const summary = h("p", { class: "muted" }), list = h("div"), pager = h("div", { class: "pager" }), editor = h("div");
    el.append(h("h1", {}, t("dead_letters")), summary, editor, list, pager);
    const edit = (x) => {
      open = x.id;
      const text = h("textarea", { id: "letter-entry", spellcheck: "false" });
      text.value = x.entry || "";
      // as it was, the server queues the letter's own entry (and refuses a cut one)
      const requeue = h("button", { class: "primary", id: "requeue", disabled: !!x.truncated || !x.entry,
        onclick: async () => {
          const body = text.value === (x.entry || "") ? {} : { entry: text.value };
          if (await act("POST", `/dead-letters/${x.id}/requeue?at=${x.at}`, body)) close();
        } }, t("requeue"));
      text.addEventListener("input", () => { requeue.disabled = !text.value.trim() || (!!x.truncated && text.value === x.entry); });
      put(editor, h("div", { class: "card" },
        h("p", {}, h("b", {}, x.reason || ""), " ", stamp(x.ts)),
        h("pre", { class: "letter" }, JSON.stringify({ ...x, at: undefined }, null, 2)),
        x.truncated ? h("p", { class: "muted" }, t("truncated")) : null,
        h("p", { class: "muted" }, t("edit_requeue")), text,
        h("div", { class: "actions" },
          requeue,
          h("button", { class: "danger", onclick: async () => { if (await act("DELETE", `/dead-letters/${x.id}?at=${x.at}`, undefined, t("confirm"))) close(); } }, t("delete")),
          h("button", { onclick: () => close() }, t("close")))));
      text.focus();
    };
    const close = () => { open = null; editor.replaceChildren(); };
    return async () => {
      const d = await api("GET", `/dead-letters?offset=${offset}&limit=${PAGE}`);
      summary.textContent = `${d.count} ${t("dead_total")}${d.trimmed ? `, ${d.trimmed} ${t("trimmed")}` : ""}`;
      put(list, table([t("when"), t("reason"), t("channel"), t("entry"), ""],
        d.entries.map((x, i) => ({ ...x, at: offset + i })).map((x) => [stamp(x.ts), x.reason || "", x.channel || "",
          h("span", { class: "mono" }, (x.entry || "").slice(0, 120)),
          h("span", { class: "actions" },
            h("button", { class: "view", disabled: open === x.id, onclick: () => edit(x) }, t("view")),
            h("button", { class: "danger", onclick: () => act("DELETE", `/dead-letters/${x.id}?at=${x.at}`, undefined, t("confirm")) }, t("delete")))])));
      put(pager, pagerOf(offset, d.count, (next) => { offset = next; refresh(); }));
    };
  },
};

// -- routing and the refresh loop ---------------------------------------------------
const ROUTES = [
  [/^#?\/?$/, "overview"], [/^#\/channels\/(.+)$/, "channel"], [/^#\/tasks\/(.+)$/, "task"],
  [/^#\/failed(?:\/(.+))?$/, "failed"], [/^#\/delayed$/, "delayed"],
  [/^#\/schedules$/, "schedules"], [/^#\/dead-letters$/, "dead"],
];
const NAV = [["#/", "overview"], ["#/failed", "failed"], ["#/delayed", "delayed"],
  ["#/schedules", "schedules"], ["#/dead-letters", "dead_letters"]];

function decoded(part) {
  try { return decodeURIComponent(part); } catch (err) { return part; }   // a stray %
}

function route() {
  if (current && current.abort) current.abort();
  stopTimer();
  asking = false;
  const hash = location.hash || "#/";
  let name = "overview", params = [];
  for (const [pattern, page] of ROUTES) {
    const m = hash.match(pattern);
    if (m) { name = page; params = m.slice(1).filter((p) => p !== undefined).map(decoded); break; }
  }
  const page = pages[name];
  put(document.getElementById("nav"), NAV.map(([href, key]) =>
    link(href, t(key), { class: page.nav === key ? "here" : null })), token() ? h("a", { href: "#/", onclick: (ev) => {
    ev.preventDefault(); sessionStorage.removeItem(TOKEN_KEY); localStorage.removeItem(TOKEN_KEY); route();
  } }, t("sign_out")) : null);
  const main = document.getElementById("main");
  main.replaceChildren();
  current = { name };
  current.update = page.build(main, params);
  document.title = `Coyotes · ${t(page.nav)}`;
  refresh();
}

let again = false;   // a refresh was asked for while one was in flight
async function refresh() {
  stopTimer();
  if (!current || asking) return;
  if (busy) { again = true; return; }
  const mine = current;
  busy = true;
  again = false;
  const live = document.getElementById("live");
  try {
    await mine.update();
    live.textContent = t("refreshing");
    live.className = "live";
  } catch (err) {
    live.textContent = t("stale");
    live.className = "live stale";
    if (err.status !== 401) notice(err.message);
  } finally {
    busy = false;
  }
  if (asking || document.hidden) return;
  if (again || mine !== current) refresh();   // a new page, or an action's result
  else timer = setTimeout(refresh, REFRESH_MS);
}
function stopTimer() { clearTimeout(timer); timer = null; }

document.documentElement.lang = LANG === "zh" ? "zh-CN" : "en";
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); else stopTimer(); });
route();
