// OpenPose editor: the body of a gr.HTML `js_on_load` (ui/pose_editor.py reads this file and passes it).
// Gradio gives `element` (the component's root), `props` (the tables and settings ui/pose_editor.py passes:
// prefix, body_limbs, body_colors, body25, hand_edges, hand_colors, default_pose, width, height) and `trigger`.
// The document is kept in its own units (pixels, or 0-1 when the loaded JSON was normalised), so untouched numbers
// are saved exactly as loaded. Every edit writes the JSON into the hidden textbox #<prefix>-json (Python reads it);
// Python puts JSON there (load, detect) and calls window.poseEditors[prefix].load(text).
(() => {
  const P = props;
  const root = element.querySelector(".pe-root");
  const canvas = root.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const $ = (name) => root.querySelector(`[data-pe="${name}"]`);
  const PARTS = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"];
  const HIT = 8; // px on screen

  let doc = { people: [], canvas_width: P.width, canvas_height: P.height };
  let normalised = false;
  let background = null; // an Image
  let selected = { person: -1, part: null, index: -1 };
  let drag = null;
  let undo = [], redo = [];
  let emitted = null;

  // -- the document ------------------------------------------------------------------------------
  const W = () => doc.canvas_width, H = () => doc.canvas_height;
  const sx = () => (normalised ? W() : 1), sy = () => (normalised ? H() : 1);
  const snapshot = () => JSON.stringify({ doc, normalised });
  const text = () => JSON.stringify(doc);

  function flat(values) {
    if (!Array.isArray(values)) return values;
    return values.length && values.every(Array.isArray) ? values.flat() : values;
  }

  function bodyIndex(person, k) { // COCO-18 joint k -> index of its triple in pose_keypoints_2d (-1: none)
    const n = (person.pose_keypoints_2d || []).length / 3;
    const i = n === 25 ? P.body25[k] : k;
    return i < n ? i : -1;
  }

  function point(arr, i) { return [arr[3 * i] * sx(), arr[3 * i + 1] * sy(), arr[3 * i + 2]]; }

  function parse(src) {
    let d = typeof src === "string" ? JSON.parse(src) : src;
    if (Array.isArray(d)) d = d[0];
    if (!d || typeof d !== "object" || !Array.isArray(d.people)) throw new Error("no 'people' list");
    d = JSON.parse(JSON.stringify(d));
    const drawn = [];
    for (const person of d.people) {
      for (const key of PARTS) {
        if (person[key] == null) continue;
        person[key] = flat(person[key]);
        const a = person[key];
        for (let i = 0; i + 2 < a.length; i += 3) if (a[i + 2] > 0) drawn.push([a[i], a[i + 1]]);
      }
    }
    const norm = drawn.every(([x, y]) => x <= 1 && y <= 1);
    const ok = (v) => typeof v === "number" && v >= 1;
    if (!ok(d.canvas_width) || !ok(d.canvas_height)) { // as extensions/openpose_json.py fits the canvas
      let w = 512, h = 512;
      if (!norm && drawn.length) {
        w = Math.max(64, Math.ceil(Math.max(...drawn.map((p) => p[0]))) + 4);
        h = Math.max(64, Math.ceil(Math.max(...drawn.map((p) => p[1]))) + 4);
      }
      if (!ok(d.canvas_width)) d.canvas_width = w;
      if (!ok(d.canvas_height)) d.canvas_height = h;
    }
    return { doc: d, normalised: norm && drawn.length > 0 };
  }

  // -- drawing -----------------------------------------------------------------------------------
  const rgb = (c, f = 1) => `rgb(${Math.round(c[0] * f)},${Math.round(c[1] * f)},${Math.round(c[2] * f)})`;

  function dot(x, y, r, color) { ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fillStyle = color; ctx.fill(); }

  function line(a, b, width, color) {
    ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]);
    ctx.lineWidth = width; ctx.lineCap = "round"; ctx.strokeStyle = color; ctx.stroke();
  }

  function drawHand(arr) {
    if (!arr || !arr.length) return;
    P.hand_edges.forEach(([a, b], i) => {
      const pa = point(arr, a), pb = point(arr, b);
      if (pa[2] > 0 && pb[2] > 0) line(pa, pb, 2, rgb(P.hand_colors[i]));
    });
    for (let i = 0; i < arr.length / 3; i++) { const p = point(arr, i); if (p[2] > 0) dot(p[0], p[1], 4, "rgb(0,0,255)"); }
  }

  function bbox(person) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const key of PARTS) {
      const a = person[key];
      if (!a) continue;
      for (let i = 0; i < a.length / 3; i++) {
        const p = point(a, i);
        if (p[2] > 0) { x0 = Math.min(x0, p[0]); y0 = Math.min(y0, p[1]); x1 = Math.max(x1, p[0]); y1 = Math.max(y1, p[1]); }
      }
    }
    return x0 <= x1 ? [x0, y0, x1, y1] : null;
  }

  function draw() {
    canvas.width = W(); canvas.height = H();
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, W(), H());
    if (background) {
      ctx.globalAlpha = Number($("opacity").value);
      ctx.drawImage(background, 0, 0, W(), H());
      ctx.globalAlpha = 1;
    }
    doc.people.forEach((person, n) => {
      const body = person.pose_keypoints_2d || [];
      const joint = (k) => { const i = bodyIndex(person, k); return i < 0 ? null : point(body, i); };
      P.body_limbs.forEach(([a, b], i) => {
        const pa = joint(a), pb = joint(b);
        if (pa && pb && pa[2] > 0 && pb[2] > 0) line(pa, pb, 8, rgb(P.body_colors[i], 0.6));
      });
      for (let k = 0; k < 18; k++) { const p = joint(k); if (p && p[2] > 0) dot(p[0], p[1], 4, rgb(P.body_colors[k])); }
      drawHand(person.hand_left_keypoints_2d);
      drawHand(person.hand_right_keypoints_2d);
      const face = person.face_keypoints_2d;
      if (face) for (let i = 0; i < face.length / 3; i++) { const p = point(face, i); if (p[2] > 0) dot(p[0], p[1], 3, "#fff"); }
      if (n === selected.person) {
        const b = bbox(person);
        if (b) {
          ctx.setLineDash([6, 4]); ctx.lineWidth = 1; ctx.strokeStyle = "#fff";
          ctx.strokeRect(b[0] - 8, b[1] - 8, b[2] - b[0] + 16, b[3] - b[1] + 16); ctx.setLineDash([]);
        }
        if (selected.part) {
          const a = person[selected.part];
          if (a && selected.index >= 0) {
            const p = point(a, selected.index);
            ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.beginPath(); ctx.arc(p[0], p[1], 8, 0, 2 * Math.PI); ctx.stroke();
          }
        }
      }
    });
    $("width").value = W(); $("height").value = H();
    $("status").textContent = `${doc.people.length} ${doc.people.length === 1 ? "person" : "people"}` +
      (selected.person >= 0 ? ` · person ${selected.person + 1} selected` : "") + (normalised ? " · normalised" : "");
    root.dataset.people = String(doc.people.length);
  }

  // -- sync with Python ----------------------------------------------------------------------------
  function emit() {
    emitted = text();
    root.dataset.json = emitted;
    const box = document.querySelector(`#${P.prefix}-json textarea, #${P.prefix}-json input`);
    if (box) { box.value = emitted; box.dispatchEvent(new Event("input", { bubbles: true })); }
  }

  function record() { undo.push(snapshot()); if (undo.length > 200) undo.shift(); redo = []; }

  function restore(s) { const v = JSON.parse(s); doc = v.doc; normalised = v.normalised; selected = { person: -1, part: null, index: -1 }; }

  function edit(fn) { record(); fn(); draw(); emit(); }

  function load(src) {
    if (src == null || src === "" || src === emitted) return;
    let parsed;
    try { parsed = parse(src); } catch (e) { $("status").textContent = `not OpenPose JSON: ${e.message}`; return; }
    record();
    doc = parsed.doc; normalised = parsed.normalised; selected = { person: -1, part: null, index: -1 };
    draw();
    emitted = typeof src === "string" ? src : JSON.stringify(src); // the textbox already holds it
    root.dataset.json = text();
  }

  // -- geometry edits (document units) -------------------------------------------------------------
  function eachPoint(person, fn) {
    for (const key of PARTS) {
      const a = person[key];
      if (a) for (let i = 0; i + 2 < a.length; i += 3) fn(a, i);
    }
  }

  function movePerson(person, dx, dy) { // dx, dy in canvas pixels
    eachPoint(person, (a, i) => { if (a[i + 2] > 0) { a[i] += dx / sx(); a[i + 1] += dy / sy(); } });
  }

  function transformPerson(person, fn) {
    const b = bbox(person);
    if (!b) return;
    const cx = (b[0] + b[2]) / 2, cy = (b[1] + b[3]) / 2;
    eachPoint(person, (a, i) => {
      if (a[i + 2] <= 0) return;
      const [x, y] = fn(a[i] * sx() - cx, a[i + 1] * sy() - cy);
      a[i] = (x + cx) / sx(); a[i + 1] = (y + cy) / sy();
    });
  }

  const FLIP_PAIRS = [[2, 5], [3, 6], [4, 7], [8, 11], [9, 12], [10, 13], [14, 15], [16, 17]];

  function flipPerson(person) {
    transformPerson(person, (x, y) => [-x, y]);
    const body = person.pose_keypoints_2d;
    if (body) for (const [l, r] of FLIP_PAIRS) {
      const a = bodyIndex(person, l), b = bodyIndex(person, r);
      if (a < 0 || b < 0) continue;
      for (let j = 0; j < 3; j++) { const t = body[3 * a + j]; body[3 * a + j] = body[3 * b + j]; body[3 * b + j] = t; }
    }
    const left = person.hand_left_keypoints_2d;
    person.hand_left_keypoints_2d = person.hand_right_keypoints_2d;
    person.hand_right_keypoints_2d = left;
    for (const key of ["hand_left_keypoints_2d", "hand_right_keypoints_2d"]) if (person[key] === undefined) delete person[key];
  }

  function defaultPerson(n) {
    const shift = ((n * 0.2) % 0.8) - (n ? 0.3 : 0);
    const pose = [];
    for (let k = 0; k < 18; k++) {
      const [x, y] = P.default_pose[k];
      pose.push((x + shift) * W() / sx(), y * H() / sy(), 1);
    }
    return { pose_keypoints_2d: pose };
  }

  function defaultHand(person, side) { // 21 points fanned out from the wrist
    const k = side === "left" ? 7 : 4, elbow = side === "left" ? 6 : 3;
    const body = person.pose_keypoints_2d || [];
    const wi = bodyIndex(person, k), ei = bodyIndex(person, elbow);
    const b = bbox(person) || [0, 0, W(), H()];
    const size = Math.max(12, (b[3] - b[1]) * 0.12);
    let wx = W() / 2, wy = H() / 2, ang = Math.PI / 2;
    if (wi >= 0 && body[3 * wi + 2] > 0) {
      [wx, wy] = point(body, wi);
      if (ei >= 0 && body[3 * ei + 2] > 0) { const e = point(body, ei); ang = Math.atan2(wy - e[1], wx - e[0]); }
    }
    const out = [wx / sx(), wy / sy(), 1];
    for (let f = 0; f < 5; f++) {
      const a = ang + (f - 2) * 0.35;
      for (let j = 1; j <= 4; j++) {
        const r = size * (0.35 + 0.2 * j) * (f === 0 ? 0.8 : 1);
        out.push((wx + Math.cos(a) * r) / sx(), (wy + Math.sin(a) * r) / sy(), 1);
      }
    }
    return out;
  }

  // -- pointer -------------------------------------------------------------------------------------
  function toCanvas(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height, canvas.width / r.width];
  }

  function hit(x, y, scale) {
    const r = HIT * scale;
    let best = null, bestD = r * r;
    const order = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"];
    doc.people.forEach((person, n) => order.forEach((part, rank) => {
      const a = person[part];
      if (!a) return;
      for (let i = 0; i < a.length / 3; i++) {
        const p = point(a, i);
        if (p[2] <= 0) continue;
        const d = (p[0] - x) ** 2 + (p[1] - y) ** 2 + rank * 0.001;
        if (d <= bestD) { bestD = d; best = { person: n, part, index: i }; }
      }
    }));
    return best;
  }

  canvas.addEventListener("pointerdown", (ev) => {
    const [x, y, scale] = toCanvas(ev);
    const h = hit(x, y, scale);
    selected = h || { person: -1, part: null, index: -1 };
    if (h) {
      const person = doc.people[h.person];
      const whole = ev.shiftKey || $("mode").value === "person";
      const group = whole ? PARTS : h.part === "face_keypoints_2d" ? ["face_keypoints_2d"] : null;
      const start = {};
      for (const key of PARTS) if (person[key]) start[key] = person[key].slice();
      drag = { x, y, h, group, start, before: snapshot(), moved: false };
      canvas.setPointerCapture(ev.pointerId);
      ev.preventDefault();
    }
    draw();
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const [x, y] = toCanvas(ev);
    const dx = Math.round((x - drag.x) * 100) / 100, dy = Math.round((y - drag.y) * 100) / 100;
    const person = doc.people[drag.h.person];
    const shift = (key, i) => {
      const s = drag.start[key];
      if (s[i + 2] > 0) { person[key][i] = s[i] + dx / sx(); person[key][i + 1] = s[i + 1] + dy / sy(); }
    };
    if (drag.group) {
      for (const key of drag.group) if (person[key]) for (let i = 0; i + 2 < person[key].length; i += 3) shift(key, i);
    } else {
      shift(drag.h.part, 3 * drag.h.index);
    }
    drag.moved = drag.moved || dx !== 0 || dy !== 0;
    draw();
  });

  const endDrag = () => {
    if (!drag) return;
    if (drag.moved) { undo.push(drag.before); redo = []; emit(); }
    drag = null;
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);

  // -- toolbar -------------------------------------------------------------------------------------
  const current = () => doc.people[selected.person];
  const actions = {
    add: () => edit(() => { doc.people.push(defaultPerson(doc.people.length)); selected = { person: doc.people.length - 1, part: null, index: -1 }; }),
    remove: () => current() && edit(() => { doc.people.splice(selected.person, 1); selected = { person: -1, part: null, index: -1 }; }),
    flip: () => current() && edit(() => flipPerson(current())),
    bigger: () => current() && edit(() => transformPerson(current(), (x, y) => [x * 1.1, y * 1.1])),
    smaller: () => current() && edit(() => transformPerson(current(), (x, y) => [x / 1.1, y / 1.1])),
    left_hand: () => current() && edit(() => { current().hand_left_keypoints_2d = defaultHand(current(), "left"); }),
    right_hand: () => current() && edit(() => { current().hand_right_keypoints_2d = defaultHand(current(), "right"); }),
    hide: () => {
      const p = current();
      if (!p || !selected.part) return;
      if (selected.part === "face_keypoints_2d") edit(() => { delete p.face_keypoints_2d; });
      else edit(() => { p[selected.part][3 * selected.index + 2] = 0; });
      selected.part = null;
      draw();
    },
    restore: () => current() && edit(() => { // hidden body joints back (at the default pose's place when they were 0, 0)
      const p = current(), body = p.pose_keypoints_2d || [], def = defaultPerson(0).pose_keypoints_2d;
      for (let k = 0; k < 18; k++) {
        const i = bodyIndex(p, k);
        if (i < 0 || body[3 * i + 2] > 0) continue;
        if (body[3 * i] === 0 && body[3 * i + 1] === 0) { body[3 * i] = def[3 * k]; body[3 * i + 1] = def[3 * k + 1]; }
        body[3 * i + 2] = 1;
      }
    }),
    undo: () => { if (undo.length) { redo.push(snapshot()); restore(undo.pop()); draw(); emit(); } },
    redo: () => { if (redo.length) { undo.push(snapshot()); restore(redo.pop()); draw(); emit(); } },
  };
  root.querySelectorAll("button[data-pe]").forEach((b) => b.addEventListener("click", () => actions[b.dataset.pe]()));

  const resize = () => {
    const w = Math.round(Number($("width").value)), h = Math.round(Number($("height").value));
    if (w >= 64 && h >= 64 && (w !== W() || h !== H())) edit(() => { doc.canvas_width = w; doc.canvas_height = h; });
  };
  $("width").addEventListener("change", resize);
  $("height").addEventListener("change", resize);
  $("opacity").addEventListener("input", draw);
  root.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    if (ev.key === "Delete" || ev.key === "Backspace") { actions.hide(); ev.preventDefault(); }
    else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { (ev.shiftKey ? actions.redo : actions.undo)(); ev.preventDefault(); }
    else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "y") { actions.redo(); ev.preventDefault(); }
  });

  function setBackground(url) {
    if (!url) { background = null; draw(); return; }
    const img = new Image();
    img.onload = () => {
      background = img;
      if (!doc.people.length) { doc.canvas_width = img.naturalWidth; doc.canvas_height = img.naturalHeight; emit(); }
      draw();
    };
    img.src = url;
  }

  window.poseEditors = window.poseEditors || {};
  window.poseEditors[P.prefix] = {
    load, setBackground, actions,
    json: () => text(),
    state: () => ({ doc: JSON.parse(text()), normalised, selected, undo: undo.length, redo: redo.length }),
    // where joint k (COCO-18) of person n is drawn, in canvas pixels and on the page (tests, scripting)
    joint: (n, k) => {
      const person = doc.people[n], i = bodyIndex(person, k), p = point(person.pose_keypoints_2d, i);
      const r = canvas.getBoundingClientRect();
      return { x: p[0], y: p[1], c: p[2], pageX: r.left + p[0] * r.width / canvas.width, pageY: r.top + p[1] * r.height / canvas.height };
    },
  };
  draw();
  emit();
  root.dataset.ready = "1";
})();
