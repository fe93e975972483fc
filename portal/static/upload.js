// Upload DICOM files (or a whole folder) to the service's STOW-RS (PS3.18 10.5), one request
// per file, three at a time, so each file has its own progress bar and its own clear result.
(function () {
  "use strict";
  var list = document.getElementById("uploads"), summary = document.getElementById("upload-summary");
  if (!list) return;
  var done = 0, ok = 0, failed = 0, total = 0;

  // The failure reason of the first failed instance (FailedSOPSequence, FailureReason).
  function reasonOf(body) {
    var seq = body && body["00081198"] && body["00081198"].Value;
    var code = seq && seq[0] && seq[0]["00081197"] && seq[0]["00081197"].Value;
    return code ? "0x" + Number(code[0]).toString(16).toUpperCase() : "";
  }

  function upload(file) {
    return new Promise(function (resolve) {
      var name = file.webkitRelativePath || file.name;
      var li = document.createElement("li"), label = document.createElement("span"), bar = document.createElement("progress");
      bar.max = 100; bar.value = 0; bar.className = "progress";
      label.textContent = name + " … ";
      li.appendChild(label); li.appendChild(bar);
      list.appendChild(li);
      var boundary = "alliance-" + Math.random().toString(16).slice(2);
      var body = new Blob(["--" + boundary + "\r\nContent-Type: application/dicom\r\n\r\n", file, "\r\n--" + boundary + "--\r\n"]);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/dicomweb/studies");
      xhr.setRequestHeader("Content-Type", 'multipart/related; type="application/dicom"; boundary=' + boundary);
      xhr.setRequestHeader("Accept", "application/dicom+json");
      xhr.setRequestHeader("X-CSRF-Token", window.allianceCsrf || "");
      xhr.upload.onprogress = function (e) { if (e.lengthComputable) bar.value = Math.round(e.loaded / e.total * 100); };
      xhr.onload = function () {
        bar.value = 100;
        var answer = null;
        try { answer = JSON.parse(xhr.responseText || "null"); } catch (e) { answer = null; }
        if (xhr.status === 200) {
          ok++; li.dataset.result = "ok"; label.textContent = name + " ✓ 已保存 stored ";
        } else {
          failed++; li.dataset.result = "failed";
          label.textContent = name + " ✗ " + xhr.status + " " + reasonOf(answer) + " " + ((answer && answer.message) || "") + " ";
        }
        resolve();
      };
      xhr.onerror = function () { failed++; li.dataset.result = "failed"; label.textContent = name + " ✗ network "; resolve(); };
      xhr.send(body);
    }).then(function () {
      done++;
      summary.textContent = done + " / " + total + "  ✓ " + ok + "  ✗ " + failed;
      summary.dataset.done = String(done === total);
    });
  }

  function start(files) {
    var queue = Array.prototype.slice.call(files);
    total += queue.length;
    summary.dataset.done = "false";
    function worker() { return queue.length ? upload(queue.shift()).then(worker) : Promise.resolve(); }
    for (var i = 0; i < 3; i++) worker();
  }
  document.getElementById("files").addEventListener("change", function () { start(this.files); });
  document.getElementById("folder").addEventListener("change", function () { start(this.files); });
})();
