// Upload DICOM files (or a whole folder) to the service's STOW-RS (PS3.18 10.5), one request
// per file, three at a time, so each file has its own progress bar and its own clear result.
(function () {
  "use strict";
  var list = document.getElementById("uploads"), summary = document.getElementById("upload-summary");
  if (!list) return;
  var done = 0, ok = 0, failed = 0, total = 0;

  var zh = document.documentElement.lang.indexOf("zh") === 0;
  // What each DICOM failure reason (PS3.4 B.2.3, PS3.18 10.5.3) and HTTP status means to the
  // person uploading, and what to do about it.
  var REASONS = {
    0xA700: ["影像库暂时无法保存（空间不足或存储故障），请稍后重试", "the image store cannot take it now (full or down); try again later"],
    0xA900: ["与所选检查不符", "it does not belong to the study chosen"],
    0xC000: ["无法识别：不是有效的DICOM文件，或文件已损坏", "not a valid DICOM file, or damaged"],
    0xC122: ["不支持该文件的传输语法（压缩格式）", "its transfer syntax (compression) is not supported"],
    0x0111: ["同一影像已以不同内容上传过，未覆盖", "the same image was uploaded before with other content; not overwritten"],
    0x0124: ["无权为此医院上传影像", "not allowed to store imaging for this hospital"],
    0x0110: ["服务器处理失败，请联系管理员", "the server failed to process it; tell the administrator"]
  };
  var STATUSES = {
    400: ["上传内容不完整或格式错误", "the upload was incomplete or malformed"],
    401: ["登录已过期，请重新登录", "your session ended; log in again"],
    403: ["无权上传影像", "not allowed to upload imaging"],
    413: ["文件过大", "the file is too large"],
    415: ["不是DICOM文件", "not a DICOM file"],
    503: ["影像库暂时不可用，请稍后重试", "the image store is unavailable; try again later"]
  };
  function words(pair) { return pair[zh ? 0 : 1]; }
  function reasonOf(body, status) {
    var seq = body && body["00081198"] && body["00081198"].Value;
    var code = seq && seq[0] && seq[0]["00081197"] && seq[0]["00081197"].Value;
    if (code && REASONS[code[0]]) return words(REASONS[code[0]]);
    if (STATUSES[status]) return words(STATUSES[status]);
    return (zh ? "上传失败（" : "failed (") + status + (code ? " 0x" + Number(code[0]).toString(16).toUpperCase() : "") + (zh ? "）" : ")");
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
          ok++; li.dataset.result = "ok";
          var held = xhr.getResponseHeader("Warning");
          label.textContent = name + " ✓ " + (zh ? "已保存" : "stored") +
            (held ? (zh ? "，但未匹配到患者，已暂存待关联 " : ", but matched no patient: held to be linked ") : " ");
          if (held) {
            li.dataset.result = "held";
            var go = document.createElement("a");
            go.href = "/imaging/held"; go.textContent = zh ? "去关联患者" : "link it to its patient";
            li.appendChild(go);
          }
        } else {
          failed++; li.dataset.result = "failed";
          label.textContent = name + " ✗ " + reasonOf(answer, xhr.status) + " ";
        }
        resolve();
      };
      xhr.onerror = function () { failed++; li.dataset.result = "failed"; label.textContent = name + " ✗ " + (zh ? "网络中断，请重试" : "network error; try again") + " "; resolve(); };
      xhr.send(body);
    }).then(function () {
      done++;
      summary.textContent = (zh ? "已处理 " : "done ") + done + " / " + total + (zh ? "，成功 " : ", stored ") + ok + (zh ? "，失败 " : ", failed ") + failed;
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
