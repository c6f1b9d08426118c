// jaxserve dashboard: draws the state feed (GET /debug/state/stream, or the frames a replay
// export carries in RECORDED). No libraries: a grid of divs and three canvases.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const FREE = -1, CACHED = -2, SHARED = -3, RESERVED = -4;
  const CELL_CLASS = { [FREE]: "free", [CACHED]: "cached", [SHARED]: "shared", [RESERVED]: "reserved" };
  let picked = null;          // {id, n} of the request clicked last
  let last = null;            // the state drawn last
  const palette = new Map();  // the stylesheet's colours, each read once
  const css = (name) => {
    if (!palette.has(name)) palette.set(name, getComputedStyle(document.body).getPropertyValue(name));
    return palette.get(name);
  };

  const key = (r) => r.id + "#" + r.n;
  function colour(id) {       // one stable colour per request id
    let h = 0;
    for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
    return `hsl(${h % 360}, 62%, ${45 + (h >> 9) % 15}%)`;
  }
  const ms = (s) => s == null ? "-" : s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s";
  const pct = (x) => x == null ? "-" : (100 * x).toFixed(1) + "%";
  function quantile(xs, q) {
    if (!xs.length) return null;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
  }

  function panel(i) {
    const root = $("#engines");
    while (root.children.length <= i) root.appendChild($("#engine-panel").content.firstElementChild.cloneNode(true));
    return root.children[i];
  }

  function drawPool(el, eng) {
    const pool = eng.pool, grid = $(".pool-grid", el);
    const cells = pool.cells;
    if (grid.children.length !== cells.length) {
      grid.replaceChildren(...cells.map((_, i) => {
        const d = document.createElement("div");
        d.className = "cell";
        d.dataset.cell = i;
        d.onclick = () => { const r = (el._requests || [])[+d.dataset.value]; if (r) pick(r); };
        return d;
      }));
    }
    el._requests = eng.requests;
    const pickedKey = picked && key(picked);
    cells.forEach((v, i) => {
      const d = grid.children[i];
      d.dataset.value = v;
      if (v >= 0) {
        const r = eng.requests[v];
        d.className = "cell owned" + (pickedKey === key(r) ? " picked" : "");
        d.style.background = colour(r.id);
        d.dataset.owner = key(r);
      } else {
        d.className = "cell " + CELL_CLASS[v];
        d.style.background = "";
        d.dataset.owner = CELL_CLASS[v];
      }
    });
    const per = pool.pages_per_cell > 1 ? `, ${pool.pages_per_cell} pages per cell` : "";
    $(".pool-numbers", el).textContent =
      `${pool.used} / ${pool.usable} pages used (${pool.counts.cached} cached, ${pool.counts.shared} shared), ` +
      `fragmentation ${pct(pool.fragmentation)}, prefix hits ${pct(pool.prefix_hit_rate)}${per}`;
  }

  function drawQueues(el, eng) {
    $(".queues", el).replaceChildren(...Object.entries(eng.queues).map(([name, n]) => {
      const q = document.createElement("span");
      q.className = "queue";
      q.dataset.queue = name;
      q.innerHTML = `<b>${n}</b>${name}`;
      return q;
    }));
    const rows = eng.requests.slice(0, 64).map((r) => {
      const tr = document.createElement("tr");
      const prefilled = Math.min(r.computed_tokens, r.prompt_tokens);
      const done = prefilled / Math.max(1, r.prompt_tokens);
      tr.innerHTML = `<td><i class="sw" style="background:${colour(r.id)}"></i>${r.id}${r.n ? " #" + r.n : ""}</td>` +
        `<td>${r.state}</td><td><span class="bar"><i style="width:${(100 * done).toFixed(0)}%"></i></span> ` +
        `prompt ${prefilled}/${r.prompt_tokens}, out ${r.output_tokens}</td><td>${r.pages}</td><td>${ms(r.age_s)}</td>`;
      tr.onclick = () => pick(r);
      return tr;
    });
    $(".requests tbody", el).replaceChildren(...rows);
  }

  function drawTimeline(el, eng) {
    const c = $(".timeline", el), g = c.getContext("2d");
    const steps = eng.steps, W = c.width, H = c.height;
    g.clearRect(0, 0, W, H);
    c.dataset.steps = eng.num_steps;
    c.dataset.shown = steps.length;
    const max = Math.max(1e-3, ...steps.map((s) => s.seconds));
    const bw = W / 256;
    steps.forEach((s, i) => {
      const x = W - (steps.length - i) * bw, h = (H - 14) * s.seconds / max;
      const parts = [[s.prefill_tokens, "--prefill"], [s.decode_rows, "--decode"], [s.verify_tokens, "--verify"]];
      const total = Math.max(1, parts.reduce((a, [n]) => a + n, 0));
      let y = H;
      for (const [n, v] of parts) {
        const ph = h * n / total;
        g.fillStyle = css(v);
        g.fillRect(x, y - ph, Math.max(1, bw - 1), ph);
        y -= ph;
      }
      if (s.programs_built > 0) {
        g.fillStyle = css("--compile");
        g.fillRect(x, 0, Math.max(2, bw - 1), 10);
      }
    });
    const recent = steps.slice(-32);
    const mean = recent.length ? recent.reduce((a, s) => a + s.seconds, 0) / recent.length : null;
    $(".timeline-numbers", el).textContent =
      `${eng.num_steps} steps; the last ${steps.length} shown, tallest ${ms(max)}; mean of the last 32 ${ms(mean)}`;
  }

  function drawHistogram(canvas, values, label) {
    const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
    g.clearRect(0, 0, W, H);
    canvas.dataset.count = values.length;
    if (!values.length) { g.fillStyle = "#888"; g.fillText("no data yet", 8, 20); return ""; }
    const hi = Math.max(1e-3, quantile(values, 0.99) * 1.1), bins = new Array(30).fill(0);
    for (const v of values) bins[Math.min(29, Math.floor(30 * v / hi))]++;
    const top = Math.max(...bins);
    g.fillStyle = css("--decode");
    bins.forEach((n, i) => g.fillRect(i * W / 30, H - 14 - (H - 20) * n / top, W / 30 - 1, (H - 20) * n / top));
    g.fillStyle = "#555";
    g.fillText("0", 2, H - 2);
    g.fillText(ms(hi), W - 50, H - 2);
    return `${values.length} ${label}; p50 ${ms(quantile(values, 0.5))}, p99 ${ms(quantile(values, 0.99))}`;
  }

  function drawCounters(el, eng) {
    const s = eng.stats;
    const acc = s.spec_proposed_tokens ? s.spec_accepted_tokens / s.spec_proposed_tokens : null;
    const items = [["running", s.num_running], ["waiting", s.num_waiting], ["prompt tokens", s.prompt_tokens_total],
      ["generated tokens", s.generation_tokens_total], ["preemptions", s.num_preemptions],
      ["programs", s.program_count], ["compiled / loaded", `${s.compile_count} / ${s.programs_loaded}`],
      ["speculative acceptance", pct(acc)], ["requests left out of the view", eng.requests_left_out]];
    $(".counters", el).replaceChildren(...items.flatMap(([k, v]) => {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v;
      return [dt, dd];
    }));
  }

  function pick(r) { picked = { id: r.id, n: r.n }; if (last) render(last); }

  function drawDetail(state) {
    const sec = $("#detail");
    if (!picked) { sec.hidden = true; return; }
    sec.hidden = false;
    $("#detail-id").textContent = picked.id + (picked.n ? " #" + picked.n : "");
    const parts = [];
    state.engines.forEach((eng) => {
      const live = eng.requests.find((r) => key(r) === key(picked));
      const done = eng.finished.find((r) => key(r) === key(picked));
      if (live) {
        const pages = eng.pool.cells.filter((v) => v >= 0 && key(eng.requests[v]) === key(picked)).length;
        parts.push(`<p><b>${eng.role}</b>: <span class="phase">arrived ${ms(live.age_s)} ago</span>` +
          `<span class="phase">${live.state}</span> prompt ${live.prompt_tokens} tokens, ${live.computed_tokens} computed, ` +
          `${live.output_tokens} generated; first token ${ms(live.ttft_s)} after arrival; ${live.pages} pages ` +
          `(${pages} cells of its own, outlined); preempted ${live.preemptions} times</p>`);
      }
      if (done) {
        const t0 = done.arrival_s;
        parts.push(`<p><b>${eng.role}</b>: <span class="phase">arrival 0</span>` +
          `<span class="phase">first token +${ms(done.first_token_s == null ? null : done.first_token_s - t0)}</span>` +
          `<span class="phase">finished +${ms(done.finished_s - t0)} (${done.reason})</span> ` +
          `${done.prompt_tokens} prompt tokens, ${done.output_tokens} generated, mean ITL ${ms(done.itl_mean_s)}, ` +
          `preempted ${done.preemptions} times</p>`);
      }
    });
    $("#detail-body").innerHTML = parts.join("") || "<p>not in view any more</p>";
  }

  function render(state) {
    last = state;
    $("#model").textContent = state.model || "";
    const st = $("#status");
    st.textContent = state.ready ? "ready" : state.healthy ? "warming up" : "engine failed";
    st.className = "badge " + (state.ready ? "ok" : state.healthy ? "" : "bad");
    const missing = (state.workers || []).filter((w) => !w.shown).map((w) => `${w.role} worker ${w.url} not answering`);
    const notes = [state.programs_pending ? `${state.programs_pending} programs still building` : "", ...missing, state.error || ""];
    $("#summary").textContent = notes.filter(Boolean).join("; ");
    (state.engines || []).forEach((eng, i) => {
      const el = panel(i);
      $(".role", el).textContent = eng.role;
      drawPool(el, eng);
      drawQueues(el, eng);
      drawTimeline(el, eng);
      $(".ttft-numbers", el).textContent = drawHistogram($(".ttft", el), eng.finished.map((f) => f.ttft_s).filter((x) => x != null), "requests");
      $(".itl-numbers", el).textContent = drawHistogram($(".itl", el), eng.itl_s, "gaps");
      drawCounters(el, eng);
    });
    const t = state.kv_transfer;
    $("#transfer").hidden = !t;
    if (t) {
      const mean = t.recent_s.length ? t.recent_s.reduce((a, b) => a + b, 0) / t.recent_s.length : null;
      $("#transfer-body").textContent = `${t.transfers} transfers, ${(t.bytes_total / 2 ** 20).toFixed(1)} MiB in all; ` +
        `recent p50 ${ms(quantile(t.recent_s, 0.5))}, p99 ${ms(quantile(t.recent_s, 0.99))}, mean ${ms(mean)}; ` +
        `${t.handoffs_queued} hand-offs queued`;
    }
    drawDetail(state);
    document.body.dataset.frames = (+document.body.dataset.frames || 0) + 1;
  }

  function disconnected() { const st = $("#status"); st.textContent = "disconnected, retrying"; st.className = "badge bad"; }

  function live() {
    const query = new URLSearchParams(location.search);
    const poll = query.get("poll");
    if (poll) {   // ?poll=S: one GET /debug/state every S seconds instead of a held stream
      const tick = () => fetch("/debug/state").then((r) => r.json()).then(render, disconnected)
        .finally(() => setTimeout(tick, 1000 * Math.max(0.25, +poll)));
      tick();
      return;
    }
    const source = new EventSource("/debug/state/stream?interval=" + encodeURIComponent(query.get("interval") || "1"));
    source.onmessage = (e) => render(JSON.parse(e.data));
    source.onerror = disconnected;
  }

  function replay(frames) {
    const controls = $("#replay-controls"), slider = $("#frame"), play = $("#play");
    controls.hidden = false;
    slider.max = frames.length - 1;
    let i = 0, playing = true;
    const show = () => { slider.value = i; $("#frame-label").textContent = `frame ${i + 1} / ${frames.length}`; render(frames[i]); };
    slider.oninput = () => { i = +slider.value; show(); };
    play.onclick = () => { playing = !playing; play.textContent = playing ? "pause" : "play"; };
    setInterval(() => { if (playing && i < frames.length - 1) { i++; show(); } }, 1000);
    show();
  }

  if (RECORDED) replay(RECORDED); else live();
})();
