// The DICOM viewer: reads through the service's own DICOMweb (PS3.18), keeps each frame's
// modality values in memory and applies window/level in the browser, so dragging is instant.
// Frames are fetched on demand with a small cache and neighbour prefetch, so a 2,000-instance
// series opens as fast as a 20-instance one.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) return;
  var base = root.dataset.base, studyUid = root.dataset.study;
  var canvas = document.getElementById("image"), ctx = canvas.getContext("2d");
  var statusEl = document.getElementById("status"), headerEl = document.getElementById("header");
  var PRESETS = { lung: [-600, 1500], mediastinum: [40, 400], bone: [400, 1800], brain: [40, 80] };
  var UNCOMPRESSED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';

  var state = { series: null, images: [], index: 0, frame: 0, wc: 40, ww: 400, zoom: 1, panX: 0, panY: 0,
                measuring: false, line: null, cine: null };
  var cache = new Map(), CACHE_MAX = 64;

  function tag(item, t) { var e = item[t]; return e && e.Value ? e.Value : undefined; }
  function one(item, t, d) { var v = tag(item, t); return v === undefined ? d : v[0]; }
  function setStatus(text) { statusEl.textContent = text; }

  function get(url, accept) {
    return fetch(url, { headers: { Accept: accept }, credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(url + " → " + r.status);
      return r;
    });
  }

  // The first part of a multipart/related body (RFC 2387), as bytes.
  function firstPart(buffer, contentType) {
    var m = /boundary="?([^";]+)"?/i.exec(contentType);
    var bytes = new Uint8Array(buffer);
    if (!m) return bytes;
    var boundary = new TextEncoder().encode("--" + m[1]);
    function find(needle, from) {
      outer: for (var i = from; i <= bytes.length - needle.length; i++) {
        for (var j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
        return i;
      }
      return -1;
    }
    var start = find(boundary, 0);
    var headersEnd = find(new Uint8Array([13, 10, 13, 10]), start) + 4;
    var end = find(boundary, headersEnd);
    return bytes.subarray(headersEnd, end - 2); // drop the CRLF before the boundary
  }

  function loadSeriesList() {
    return get(base + "/studies/" + studyUid + "/series", "application/dicom+json").then(function (r) { return r.json(); })
      .then(function (series) {
        var list = document.getElementById("series");
        series.forEach(function (s, i) {
          var uid = one(s, "0020000E"), li = document.createElement("li"), b = document.createElement("button");
          b.type = "button";
          var img = new Image();
          img.alt = "";
          img.loading = "lazy";
          img.src = base + "/studies/" + studyUid + "/series/" + uid + "/thumbnail";
          b.appendChild(img);
          b.appendChild(document.createTextNode((one(s, "00080060", "") + " " + (one(s, "0008103E", "") || "") + " (" + one(s, "00201209", "?") + ")").trim()));
          b.addEventListener("click", function () { openSeries(uid, b); });
          li.appendChild(b);
          list.appendChild(li);
          if (i === 0) openSeries(uid, b);
        });
        if (!series.length) setStatus("—");
      }).catch(function (e) { setStatus(e.message); });
  }

  function openSeries(uid, button) {
    document.querySelectorAll(".series-list button").forEach(function (b) { b.setAttribute("aria-current", "false"); });
    button.setAttribute("aria-current", "true");
    setStatus("…");
    stopCine();
    cache.clear();
    get(base + "/studies/" + studyUid + "/series/" + uid + "/metadata", "application/dicom+json").then(function (r) { return r.json(); })
      .then(function (items) {
        items.sort(function (a, b) {
          var pa = tag(a, "00200032"), pb = tag(b, "00200032");
          if (pa && pb && pa.length === 3) return pa[2] - pb[2];
          return one(a, "00200013", 0) - one(b, "00200013", 0);
        });
        state.series = uid;
        state.images = items;
        state.index = 0;
        state.frame = 0;
        var first = items[0];
        state.wc = Number(one(first, "00281050", 40));
        state.ww = Number(one(first, "00281051", 400));
        if (!tag(first, "00281050")) { state.wc = null; state.ww = null; }
        state.zoom = 1; state.panX = 0; state.panY = 0; state.line = null; markPreset(null);
        document.getElementById("cine").hidden = !(Number(one(first, "00280008", 1)) > 1);
        show();
      }).catch(function (e) { setStatus(e.message); });
  }

  function frameKey(i, f) { return i + ":" + f; }

  function loadFrame(i, f) {
    var key = frameKey(i, f);
    if (cache.has(key)) return Promise.resolve(cache.get(key));
    var item = state.images[i];
    var url = base + "/studies/" + studyUid + "/series/" + state.series + "/instances/" + one(item, "00080018") + "/frames/" + (f + 1);
    var rows = one(item, "00280010"), cols = one(item, "00280011"), bits = one(item, "00280100", 16);
    var signed = one(item, "00280103", 0) === 1, samples = one(item, "00280002", 1);
    var photometric = one(item, "00280004", "MONOCHROME2");
    var promise;
    if (samples !== 1) {
      promise = new Promise(function (resolve, reject) {   // colour: the server renders it
        var img = new Image();
        img.onload = function () { resolve({ image: img, rows: rows, cols: cols }); };
        img.onerror = function () { reject(new Error("rendered image")); };
        img.src = url + "/rendered?accept=image/png";
      });
    } else {
      promise = get(url, UNCOMPRESSED).then(function (r) {
        var ct = r.headers.get("Content-Type");
        return r.arrayBuffer().then(function (buf) {
          var bytes = firstPart(buf, ct), copy = bytes.slice().buffer, data;
          if (bits === 8) data = signed ? new Int8Array(copy) : new Uint8Array(copy);
          else data = signed ? new Int16Array(copy, 0, rows * cols) : new Uint16Array(copy, 0, rows * cols);
          var slope = Number(one(item, "00281053", 1)), intercept = Number(one(item, "00281052", 0));
          var values = new Float32Array(rows * cols), min = Infinity, max = -Infinity;
          for (var k = 0; k < values.length; k++) {
            var v = data[k] * slope + intercept;
            values[k] = v;
            if (v < min) min = v;
            if (v > max) max = v;
          }
          return { values: values, rows: rows, cols: cols, min: min, max: max, invert: photometric === "MONOCHROME1" };
        });
      });
    }
    return promise.then(function (frame) {
      cache.set(key, frame);
      if (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value);
      return frame;
    });
  }

  var pixels = null; // the ImageData of the current frame at current window/level
  function paint(frame) {
    if (frame.image) { canvas.width = frame.cols; canvas.height = frame.rows; ctx.drawImage(frame.image, 0, 0); overlay(); return; }
    if (state.wc === null) { state.wc = (frame.max + frame.min) / 2; state.ww = Math.max(1, frame.max - frame.min); }
    if (canvas.width !== frame.cols || canvas.height !== frame.rows) { canvas.width = frame.cols; canvas.height = frame.rows; }
    if (!pixels || pixels.width !== frame.cols || pixels.height !== frame.rows) pixels = ctx.createImageData(frame.cols, frame.rows);
    var low = state.wc - state.ww / 2, scale = 255 / Math.max(1, state.ww), out = pixels.data, v = frame.values;
    for (var k = 0, o = 0; k < v.length; k++, o += 4) {
      var g = (v[k] - low) * scale;
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (frame.invert) g = 255 - g;
      out[o] = out[o + 1] = out[o + 2] = g;
      out[o + 3] = 255;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.putImageData(pixels, 0, 0);
    if (state.zoom !== 1 || state.panX || state.panY) {   // zoom and pan by redrawing the bitmap
      var copy = document.createElement("canvas");
      copy.width = canvas.width; copy.height = canvas.height;
      copy.getContext("2d").putImageData(pixels, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.setTransform(state.zoom, 0, 0, state.zoom, state.panX + canvas.width * (1 - state.zoom) / 2, state.panY + canvas.height * (1 - state.zoom) / 2);
      ctx.drawImage(copy, 0, 0);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
    }
    overlay();
  }

  function spacing() {
    var item = state.images[state.index];
    var s = tag(item, "00280030") || tag(item, "00181164");
    return s ? [Number(s[0]), Number(s[1])] : null;
  }

  function measure() {
    if (!state.line) return null;
    var l = state.line, sp = spacing();
    var dx = (l[2] - l[0]) / state.zoom, dy = (l[3] - l[1]) / state.zoom;
    if (!sp) return { px: Math.hypot(dx, dy) };
    return { mm: Math.hypot(dx * sp[1], dy * sp[0]) };
  }

  function overlay() {
    if (!state.line) return;
    var l = state.line, m = measure();
    ctx.strokeStyle = "#ffd400"; ctx.lineWidth = Math.max(1, canvas.width / 400);
    ctx.beginPath(); ctx.moveTo(l[0], l[1]); ctx.lineTo(l[2], l[3]); ctx.stroke();
    ctx.fillStyle = "#ffd400"; ctx.font = Math.max(12, canvas.width / 32) + "px sans-serif";
    ctx.fillText(m.mm !== undefined ? m.mm.toFixed(1) + " mm" : m.px.toFixed(0) + " px", l[2] + 4, l[3] - 4);
  }

  // The four corners, as radiologists expect them: who (top left), which study (top right),
  // where in the series (bottom left), how it is shown (bottom right).
  function corners(item, where, wl) {
    var d = root.dataset;
    document.getElementById("corner-tl").textContent = d.patient + (d.identity ? "\n" + d.identity : "");
    document.getElementById("corner-tr").textContent = (d.studyDate || "") + "\n" + (d.description || "").trim();
    var series = one(item, "00200011", ""), instance = one(item, "00200013", "");
    document.getElementById("corner-bl").textContent =
      (series !== "" ? "序列 " + series + "  " : "") + (instance !== "" ? "图像 " + instance + "\n" : "") + where;
    document.getElementById("corner-br").textContent =
      (wl ? wl + "\n" : "") + "缩放 " + Math.round(state.zoom * 100) + "%";
  }

  // The header as a table: tag, its standard name (PS3.6, asked of the server once per tag),
  // VR and value; sequences and binary values are summarised, not dumped.
  var tagNames = {};
  function showHeader(item) {
    var tags = Object.keys(item).sort();
    var missing = tags.filter(function (t) { return !(t in tagNames); });
    var fill = function () {
      headerEl.textContent = "";
      tags.forEach(function (t) {
        var e = item[t], row = document.createElement("tr"), value;
        if (e.vr === "SQ") value = (e.Value || []).length + " 项";
        else if (e.BulkDataURI || e.InlineBinary) value = "（二进制数据）";
        else if (e.vr === "PN") value = (e.Value || []).map(function (p) { return p.Alphabetic || ""; }).join("\\");
        else value = (e.Value || []).join("\\");
        [t.slice(0, 4) + "," + t.slice(4), tagNames[t] || "", e.vr || "", value].forEach(function (text) {
          var cell = document.createElement("td"); cell.textContent = String(text); row.appendChild(cell);
        });
        headerEl.appendChild(row);
      });
    };
    if (!missing.length) { fill(); return; }
    fetch("/viewer/tag-names?tags=" + missing.join(","), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : {}; })
      .then(function (names) { missing.forEach(function (t) { tagNames[t] = names[t] || ""; }); fill(); })
      .catch(fill);
  }

  function show() {
    var item = state.images[state.index];
    if (!item) return;
    showHeader(item);
    loadFrame(state.index, state.frame).then(function (frame) {
      if (state.images[state.index] !== item) return;
      paint(frame);
      var m = measure();
      var where = "第 " + (state.index + 1) + " / " + state.images.length + " 幅" +
        (state.frame ? "  第 " + (state.frame + 1) + " 帧" : "");
      var wl = state.wc !== null ? "窗宽 " + Math.round(state.ww) + "  窗位 " + Math.round(state.wc) : "";
      setStatus(where + (wl ? "   " + wl : "") +
        (m ? "   长度 " + (m.mm !== undefined ? m.mm.toFixed(1) + " mm" : m.px.toFixed(0) + " px") : ""));
      corners(item, where, wl);
      canvas.dataset.index = String(state.index);
      canvas.dataset.length = m && m.mm !== undefined ? m.mm.toFixed(2) : "";
      [1, -1, 2].forEach(function (d) {  // prefetch neighbours
        var j = state.index + d;
        if (j >= 0 && j < state.images.length) loadFrame(j, 0).catch(function () {});
      });
    }).catch(function (e) { setStatus(e.message); });
  }

  function step(d) {
    if (!state.images.length) return;
    state.index = Math.max(0, Math.min(state.images.length - 1, state.index + d));
    state.frame = 0;
    show();
  }

  function frames() { return Number(one(state.images[state.index] || {}, "00280008", 1)); }

  function stopCine() {
    if (state.cine) { clearInterval(state.cine); state.cine = null; }
    var b = document.getElementById("cine"); if (b) b.textContent = "▶ 播放";
  }

  document.getElementById("cine").addEventListener("click", function () {
    if (state.cine) { stopCine(); return; }
    var item = state.images[state.index], ms = Number(one(item, "00181063", 0)) || 100;
    this.textContent = "❚❚ 暂停";
    state.cine = setInterval(function () { state.frame = (state.frame + 1) % frames(); show(); }, ms);
  });

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    if (e.ctrlKey) { state.zoom = Math.max(0.25, Math.min(8, state.zoom * (e.deltaY < 0 ? 1.1 : 0.9))); show(); }
    else step(e.deltaY > 0 ? 1 : -1);
  }, { passive: false });

  canvas.addEventListener("keydown", function (e) {
    var keys = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 };
    if (e.key in keys) { e.preventDefault(); step(keys[e.key]); }
    if (e.key === "Home") { state.index = 0; show(); }
    if (e.key === "End") { state.index = state.images.length - 1; show(); }
  });

  function point(e) {
    var r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  }
  var drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    canvas.setPointerCapture(e.pointerId);
    canvas.focus();
    var p = point(e);
    drag = { x: e.clientX, y: e.clientY, wc: state.wc, ww: state.ww, panX: state.panX, panY: state.panY, shift: e.shiftKey };
    if (state.measuring) state.line = [p[0], p[1], p[0], p[1]];
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (state.measuring) { var p = point(e); state.line[2] = p[0]; state.line[3] = p[1]; }
    else if (drag.shift) { var r = canvas.getBoundingClientRect(); state.panX = drag.panX + dx * canvas.width / r.width; state.panY = drag.panY + dy * canvas.height / r.height; }
    else if (drag.wc !== null) { state.ww = Math.max(1, drag.ww + dx * 4); state.wc = drag.wc + dy * 2; markPreset(null); }
    show();
  });
  canvas.addEventListener("pointerup", function () { drag = null; });

  function markPreset(name) {
    root.querySelectorAll("[data-preset]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.preset === name));
    });
  }
  root.querySelectorAll("[data-preset]").forEach(function (b) {
    b.addEventListener("click", function () {
      var p = PRESETS[b.dataset.preset]; state.wc = p[0]; state.ww = p[1]; markPreset(b.dataset.preset); show();
    });
  });
  document.getElementById("tool-measure").addEventListener("click", function () {
    state.measuring = !state.measuring;
    this.setAttribute("aria-pressed", String(state.measuring));
    if (!state.measuring) state.line = null;
    show();
  });
  document.getElementById("zoom-in").addEventListener("click", function () { state.zoom = Math.min(8, state.zoom * 1.25); show(); });
  document.getElementById("zoom-out").addEventListener("click", function () { state.zoom = Math.max(0.25, state.zoom / 1.25); show(); });
  document.getElementById("reset").addEventListener("click", function () {
    var item = state.images[state.index];
    state.zoom = 1; state.panX = 0; state.panY = 0; state.line = null; markPreset(null);
    state.wc = tag(item, "00281050") ? Number(one(item, "00281050")) : null;
    state.ww = tag(item, "00281051") ? Number(one(item, "00281051")) : null;
    show();
  });

  loadSeriesList();
})();
