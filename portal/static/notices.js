// Live notices (issue 14.4): the header's count and a line per new notice, from the portal's
// Server-Sent Events stream (/notices/stream, with the session cookie). EventSource reconnects
// by itself with Last-Event-ID; the server ends the stream for good (event "end", or 204 on
// reconnecting) when the session has ended or was revoked.
(function () {
  "use strict";
  var link = document.getElementById("notices-link");
  if (!link || !window.EventSource) return;
  var count = document.getElementById("notice-count");
  var live = document.getElementById("live-notices");
  var list = document.getElementById("notice-rows");
  var source = new EventSource("/notices/stream?after=" + encodeURIComponent(link.dataset.through || "0"));

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  }

  source.addEventListener("notice", function (e) {
    var n = JSON.parse(e.data);
    if (count) {
      count.textContent = n.unread > 99 ? "99+" : String(n.unread);
      count.hidden = !n.unread;
      count.setAttribute("aria-label", n.unread + " " + (live ? live.dataset.label : ""));
    }
    if (live) {
      var line = text("p", "", n.urgent ? "urgent" : "");
      line.dataset.kind = n.kind;
      var a = text("a", n.words + (n.patient ? " · " + n.patient : ""));
      a.href = n.link;
      line.appendChild(a);
      line.appendChild(text("time", " " + n.at));
      live.insertBefore(line, live.firstChild);
      while (live.children.length > 5) live.removeChild(live.lastChild);
    }
    if (list) {
      var row = document.createElement("tr");
      row.className = "unread" + (n.urgent ? " urgent" : "");
      var what = document.createElement("td");
      var go = text("a", n.words);
      go.href = n.link;
      what.appendChild(go);
      row.appendChild(what);
      row.appendChild(text("td", n.patient || "—"));
      row.appendChild(text("td", n.at));
      list.insertBefore(row, list.firstChild);
      var empty = document.getElementById("notice-none");
      if (empty) empty.remove();
    }
  });
  // Whether the stream is open, for whoever needs to know (the browser tests wait for it).
  source.addEventListener("open", function () { document.documentElement.dataset.live = "open"; });
  source.addEventListener("end", function () {
    source.close();
    document.documentElement.dataset.live = "ended";
  });
})();
