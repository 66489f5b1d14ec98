// Minimal, deterministic Live2D (Cubism 2) renderer for bench/art/live2d/render.py.
//
// It runs on the Cubism 2 runtime shipped in npm's live2d-widget (src/lib/live2d.core.js and
// src/lib/Live2DFramework.js, served by render.py under /runtime/), loads one model from
// /model-<name>/<model.json>, and exposes window.L2D to the Python driver:
//
//   await L2D.load(spec)   -> {parts, missingPropParts, expressions, idle, canvas, warmFrames}
//   L2D.probe(first, n)    -> pixel boxes of character / props over frames, for framing
//   L2D.setFraming(box, m) -> fit that box (model canvas units) into the canvas, margin m
//   L2D.frame(k, layers)   -> {layer: dataURL PNG, premulViolations} for "char", "props",
//                             "full", "visible"
//   L2D.debug()            -> {live, model, propIdx}, for looking at a model by hand
//
// Time never comes from the clock: every step sets the runtime's user time
// (UtSystem.setUserTimeMSec) to k / fps, and the init script of render.py replaces
// Math.random, Date and performance.now with a seeded generator and a frozen clock, so the
// same spec gives the same pixels however slow the machine is.
//
// live2d.core is a classic script (render.py serves it as one, plus a shim module that
// re-exports window.__L2DCore); both imports name "/runtime/live2d.core" without ".js", exactly
// as Live2DFramework.js does, so both see one module instance (one Live2D core).
import { Live2D, Live2DModelWebGL, Live2DMotion, UtSystem } from "/runtime/live2d.core";
import {
  Live2DFramework, L2DBaseModel, L2DEyeBlink, L2DExpressionMotion, L2DPose, L2DPhysics,
  L2DModelMatrix, L2DMatrix44,
} from "/runtime/Live2DFramework";

const T0 = 10000; // ms; user time 0 means "use the system clock" in the runtime, so never 0

let gl = null;
let canvas = null;
let model = null; // L2DBaseModel
let live = null; // Live2DModelWebGL
let spec = null;
let partIds = [];
let propIdx = []; // part indices that are props (not the character)
let baseOpacity = []; // part opacity before our override, per frame

function fetchBytes(path) {
  return fetch(path).then((r) => {
    if (!r.ok) throw new Error("HTTP " + r.status + " for " + path);
    return r.arrayBuffer();
  });
}

function jsonFromBytes(buf) {
  let bytes = new Uint8Array(buf);
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) bytes = bytes.subarray(3);
  return JSON.parse(new TextDecoder("utf-8").decode(bytes));
}

// The framework's loaders call these through Live2DFramework.getPlatformManager().
const platform = {
  loadBytes(path, callback) {
    fetchBytes(path).then(callback, (e) => console.error(String(e)));
  },
  loadString(path) {},
  loadLive2DModel(path, callback) {
    fetchBytes(path).then((buf) => callback(Live2DModelWebGL.loadModel(buf)));
  },
  loadTexture(mdl, no, path, callback) {
    const img = new Image();
    img.onload = () => {
      const tex = gl.createTexture();
      if (!mdl.isPremultipliedAlpha()) gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, 1);
      gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, 1);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, img);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR_MIPMAP_NEAREST);
      gl.generateMipmap(gl.TEXTURE_2D);
      mdl.setTexture(no, tex);
      callback();
    };
    img.onerror = () => console.error("texture failed: " + path);
    img.src = path;
  },
  jsonParseFromBytes: jsonFromBytes,
  log(txt) { console.log(txt); },
};

function promised(fn) {
  return new Promise((resolve) => fn(resolve));
}

function idString(id) {
  if (id == null) return null;
  if (typeof id === "string") return id;
  return id.id != null ? String(id.id) : String(id);
}

function listParts() {
  const ctx = live.getModelContext();
  const out = [];
  const parts = ctx._$F2 || []; // PartsData list of the model context
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    const draws = (p.getDrawData && p.getDrawData()) || [];
    out.push({
      index: i,
      id: idString(p.getPartsID()),
      drawables: draws.map((d) => idString(d.getDrawDataID())),
    });
  }
  return out;
}

function motionGroup(setting, name) {
  const m = setting.motions || {};
  return Array.isArray(m[name]) ? m[name] : [];
}

// Fit the union box (in model canvas units) into the view, with a margin, keeping the aspect.
function fitMatrix(box, margin) {
  const w = canvas.width, h = canvas.height;
  const bw = box[2] - box[0], bh = box[3] - box[1];
  const viewW = 2.0, viewH = 2.0 * h / w; // the view spans x in [-1, 1], y in [-h/w, h/w]
  const s = Math.min(viewW * (1 - 2 * margin) / bw, viewH * (1 - 2 * margin) / bh);
  const cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
  // model canvas y grows downwards; view y grows upwards
  const m = new L2DModelMatrix(live.getCanvasWidth(), live.getCanvasHeight());
  const tr = [s, 0, 0, 0, 0, -s, 0, 0, 0, 0, 1, 0, -cx * s, cy * s, 0, 1];
  m.setMatrix(tr);
  return m;
}

function unionBox(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
}

// One simulation step at user time tMs: motions, blink, expression, procedural sway, physics,
// pose; then model.update() for the given part visibility.
function step(tMs) {
  UtSystem.setUserTimeMSec(T0 + tMs);
  // undo the last layer's visibility override, so it never leaks into the simulation (pose
  // fades and motions read the part opacities)
  for (let i = 0; i < baseOpacity.length; i++) live.setPartsOpacity(i, baseOpacity[i]);
  const setting = spec.setting;
  if (model.mainMotionManager.isFinished()) {
    const idle = motionGroup(setting, spec.idleGroup);
    if (idle.length) {
      // deterministic cycle through the idle group (seeded order when spec.shuffle)
      const no = spec.idleOrder[spec.idleCursor % spec.idleOrder.length];
      spec.idleCursor++;
      const mtn = spec.idleMotions[no];
      mtn.setFadeIn(idle[no].fade_in != null ? idle[no].fade_in : 1000);
      mtn.setFadeOut(idle[no].fade_out != null ? idle[no].fade_out : 1000);
      model.mainMotionManager.startMotionPrio(mtn, 1);
    }
  }
  live.loadParam();
  const updated = model.mainMotionManager.updateParam(live);
  if (!updated && model.eyeBlink) model.eyeBlink.updateParam(live);
  live.saveParam();
  if (model.expressionManager && !model.expressionManager.isFinished()) {
    model.expressionManager.updateParam(live);
  }
  if (spec.sway) {
    // the same gentle procedural sway and breath as the live2d-widget / Cubism 2 samples
    const t = (tMs / 1000) * 2 * Math.PI;
    live.addToParamFloat("PARAM_ANGLE_X", 15 * Math.sin(t / 6.5345), 0.5);
    live.addToParamFloat("PARAM_ANGLE_Y", 8 * Math.sin(t / 3.5345), 0.5);
    live.addToParamFloat("PARAM_ANGLE_Z", 10 * Math.sin(t / 5.5345), 0.5);
    live.addToParamFloat("PARAM_BODY_ANGLE_X", 4 * Math.sin(t / 15.5345), 0.5);
    live.setParamFloat("PARAM_BREATH", 0.5 + 0.5 * Math.sin(t / 3.2345), 1);
  }
  if (model.physics) model.physics.updateParam(live);
  if (model.pose) model.pose.updateParam(live);
  baseOpacity = partIds.map((_, i) => live.getPartsOpacity(i));
}

// pixels of the drawing buffer (premultiplied) whose colour exceeds their alpha: additive or
// otherwise non-"over" blending, whose colour a straight-alpha PNG cannot hold exactly
let pxBuf = null;
function premulViolations() {
  const n = canvas.width * canvas.height * 4;
  if (!pxBuf || pxBuf.length !== n) pxBuf = new Uint8Array(n);
  gl.readPixels(0, 0, canvas.width, canvas.height, gl.RGBA, gl.UNSIGNED_BYTE, pxBuf);
  let bad = 0;
  for (let q = 0; q < n; q += 4) {
    const a = pxBuf[q + 3];
    if (pxBuf[q] > a || pxBuf[q + 1] > a || pxBuf[q + 2] > a) bad++;
  }
  return bad;
}

// the largest opacity of a prop part in the current step (0: no prop is drawn)
function propsOpacity() {
  let m = 0;
  for (const i of propIdx) m = Math.max(m, baseOpacity[i]);
  return m;
}

function applyVisibility(layer) {
  for (let i = 0; i < partIds.length; i++) {
    let v = baseOpacity[i];
    if (layer === "char" && propIdx.includes(i)) v = 0;
    if (layer === "props" && !propIdx.includes(i)) v = 0;
    live.setPartsOpacity(i, v);
  }
  live.update();
}

// "visible": the full model, drawn so that its alpha channel is the character's coverage of
// the full picture: prop drawables keep their RGB blending but add no alpha and erase what lies
// beneath them (alpha factors ZERO, 1 - srcA), character drawables blend as usual, so the
// alpha ends as sum over character drawables of a_i * prod over later drawables of (1 - a_j).
// Prop drawables are marked while they draw onto the picture (their draw method wrapped) and
// the core's blendFuncSeparate is rewritten for them; additive / multiply props (alpha factors
// 0, 1) already leave alpha alone.
let matte = false;
let inProp = false;
function wrapProps() {
  const ctx = live.getModelContext();
  const parts = ctx._$F2 || [];
  for (const pi of propIdx) {
    for (const d of parts[pi].getDrawData() || []) {
      const orig = d.draw;
      d.draw = function (...args) {
        // not while it draws into a clipping-mask buffer (Cubism 2.1 masks): the mask must stay
        const dp = args[0];
        inProp = !(dp && dp.getClipBufPre_clipContextMask && dp.getClipBufPre_clipContextMask());
        try { return orig.apply(this, args); } finally { inProp = false; }
      };
    }
  }
  const bfs = gl.blendFuncSeparate.bind(gl);
  gl.blendFuncSeparate = (sRGB, dRGB, sA, dA) =>
    bfs(sRGB, dRGB, matte && inProp ? gl.ZERO : sA, matte && inProp && sA !== gl.ZERO ? gl.ONE_MINUS_SRC_ALPHA : dA);
}

function drawLayer(layer) {
  applyVisibility(layer === "visible" ? "full" : layer);
  matte = layer === "visible";
  gl.viewport(0, 0, canvas.width, canvas.height);
  gl.clearColor(0, 0, 0, 0);
  gl.clear(gl.COLOR_BUFFER_BIT);
  const m = new L2DMatrix44();
  m.multScale(1, canvas.width / canvas.height); // projection: view y range -> clip space
  const mm = m.getArray();
  const model4 = model.modelMatrix.getArray();
  // clip = P * M (column-major 4x4)
  const out = new Array(16).fill(0);
  for (let i = 0; i < 4; i++)
    for (let j = 0; j < 4; j++)
      for (let k = 0; k < 4; k++) out[i + j * 4] += mm[i + k * 4] * model4[k + j * 4];
  live.setMatrix(out);
  live.draw();
  matte = false;
  gl.flush();
  return canvas.toDataURL("image/png");
}

async function load(s) {
  spec = s;
  UtSystem.setUserTimeMSec(T0);
  canvas = document.getElementById("c");
  canvas.width = s.width;
  canvas.height = s.height;
  gl = canvas.getContext("webgl", {
    alpha: true, premultipliedAlpha: true, preserveDrawingBuffer: true, antialias: false,
  });
  if (!gl) throw new Error("no WebGL context");
  Live2D.init();
  Live2D.setGL(gl);
  Live2DFramework.setPlatformManager(platform);

  const dir = s.modelJson.substring(0, s.modelJson.lastIndexOf("/") + 1);
  const setting = jsonFromBytes(await fetchBytes(s.modelJson));
  s.setting = setting;
  model = new L2DBaseModel();
  await promised((res) => model.loadModelData(dir + setting.model, res));
  live = model.live2DModel;
  const textures = setting.textures || [];
  await Promise.all(textures.map((t, i) => promised((res) => platform.loadTexture(live, i, dir + t, res))));

  // expressions: [{name, file}]
  const exps = Array.isArray(setting.expressions) ? setting.expressions : [];
  const expNames = [];
  for (const e of exps) {
    const buf = await fetchBytes(dir + e.file);
    model.expressions[e.name] = L2DExpressionMotion.loadJson(buf);
    const json = jsonFromBytes(buf);
    expNames.push({ name: e.name, params: Array.isArray(json.params) ? json.params.length : 0 });
  }
  if (setting.physics) model.physics = L2DPhysics.load(await fetchBytes(dir + setting.physics));
  if (setting.pose) model.pose = L2DPose.load(await fetchBytes(dir + setting.pose));
  model.eyeBlink = new L2DEyeBlink();

  for (const p of setting.init_param || []) live.setParamFloat(p.id, p.value);
  for (const p of setting.init_parts_visible || []) live.setPartsOpacity(p.id, p.value);
  live.saveParam();

  const idle = motionGroup(setting, s.idleGroup);
  s.idleMotions = [];
  for (const m of idle) s.idleMotions.push(Live2DMotion.loadMotion(await fetchBytes(dir + m.file)));
  s.idleOrder = s.idleOrderOverride || idle.map((_, i) => i);
  s.idleCursor = 0;

  const parts = listParts();
  partIds = parts.map((p) => p.id);
  const propSet = new Set(s.propParts || []);
  propIdx = parts.filter((p) => propSet.has(p.id)).map((p) => p.index);
  const missing = (s.propParts || []).filter((id) => !partIds.includes(id));
  if (propIdx.length) wrapProps();

  if (s.expression) {
    model.expressionManager.startMotion(model.expressions[s.expression], false);
  }

  // warm-up: let the first idle fade-in and the physics settle before anything is captured
  const dt = 1000 / s.fps;
  const warm = Math.round(s.warmupMs / dt);
  for (let k = 0; k < warm; k++) step(k * dt);
  return {
    parts, missingPropParts: missing, expressions: expNames, idle: idle.map((m) => m.file),
    canvas: [live.getCanvasWidth(), live.getCanvasHeight()], warmFrames: warm,
  };
}

// Step through frames [first, first + n) and return the union box (model canvas units) of the
// pixels the character covers and of those the props cover: used to frame a character once,
// on a throw-away page, so every sequence of it shares one framing. Pixels, not mesh points:
// models carry invisible meshes (effects, items, hit areas) that would inflate a point box, and
// a prop part can be "visible" (opacity 1) while all its drawables are transparent (items only
// other motions show). The probe draws with the model canvas (plus a quarter on each side) in view.
function probe(first, n) {
  const dt = 1000 / spec.fps;
  const cw = live.getCanvasWidth(), ch = live.getCanvasHeight();
  const pbox = [-0.25 * cw, -0.25 * ch, 1.25 * cw, 1.25 * ch];
  const saved = model.modelMatrix;
  model.modelMatrix = fitMatrix(pbox, 0);
  const W = canvas.width, H = canvas.height;
  const s = Math.min(2.0 / (pbox[2] - pbox[0]), (2.0 * H / W) / (pbox[3] - pbox[1]));
  const cx = (pbox[0] + pbox[2]) / 2, cy = (pbox[1] + pbox[3]) / 2;
  const toModel = (px, py) => [(px * 2 / W - 1) / s + cx, cy - (H / W - py * 2 / W) / s];
  const px = new Uint8Array(W * H * 4);
  function pixelBox(layer) {
    drawLayer(layer);
    gl.readPixels(0, 0, W, H, gl.RGBA, gl.UNSIGNED_BYTE, px);
    let x0 = W, y0 = H, x1 = -1, y1 = -1, count = 0;
    for (let r = 0; r < H; r++) {
      const py = H - 1 - r; // readPixels rows run bottom-up
      for (let x = 0; x < W; x++) {
        if (px[(r * W + x) * 4 + 3] > 0) {
          count++;
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (py < y0) y0 = py;
          if (py > y1) y1 = py;
        }
      }
    }
    if (!count) return { count, box: [Infinity, Infinity, -Infinity, -Infinity] };
    const a = toModel(x0, y0), b = toModel(x1 + 1, y1 + 1);
    return { count, box: [a[0], a[1], b[0], b[1]] };
  }
  let box = [Infinity, Infinity, -Infinity, -Infinity];
  let propBox = [Infinity, Infinity, -Infinity, -Infinity];
  let propPixels = 0, edge = false;
  for (let k = first; k < first + n; k++) {
    step(k * dt);
    const c = pixelBox("char");
    box = unionBox(box, c.box);
    if (propIdx.length) {
      const p = pixelBox("props");
      if (p.count) propBox = unionBox(propBox, p.box);
      propPixels = Math.max(propPixels, p.count);
    }
  }
  model.modelMatrix = saved;
  edge = box[0] <= pbox[0] || box[1] <= pbox[1] || box[2] >= pbox[2] || box[3] >= pbox[3];
  return { charBox: box, propBox: propPixels > 0 ? propBox : null, propPixels, probeClipped: edge };
}

function setFraming(box, margin) {
  model.modelMatrix = fitMatrix(box, margin);
}

// Frame k is the model at user time k / fps seconds (k counts from the start of the warm-up).
function frame(k, layers) {
  step(k * 1000 / spec.fps);
  const out = {};
  for (const layer of layers) {
    out[layer] = drawLayer(layer);
    if (layer === "char") out.premulViolations = premulViolations();
  }
  return out;
}

window.L2D = { load, probe, frame, setFraming, debug: () => ({ live, model, propIdx }), ready: true };
