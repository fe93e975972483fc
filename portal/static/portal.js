// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  var WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  var CHECK = "10X98765432";

  // GB 11643-1999, as the server checks it: length, digits, birth date, ISO 7064 MOD 11-2.
  function identityProblem(value, zh) {
    var v = value.trim().toUpperCase();
    if (!v) return "";
    if (v.length !== 18) return zh ? "应为18位，当前" + v.length + "位" : "18 characters, not " + v.length;
    if (!/^\d{17}[\dX]$/.test(v)) return zh ? "前17位为数字，末位为数字或X" : "17 digits and a digit or X";
    var y = +v.slice(6, 10), m = +v.slice(10, 12), d = +v.slice(12, 14);
    var date = new Date(Date.UTC(y, m - 1, d));
    if (date.getUTCFullYear() !== y || date.getUTCMonth() !== m - 1 || date.getUTCDate() !== d || y < 1900 || date > new Date())
      return zh ? "出生日期无效" : "the birth date is not valid";
    var sum = 0;
    for (var i = 0; i < 17; i++) sum += (+v[i]) * WEIGHTS[i];
    if (CHECK[sum % 11] !== v[17]) return zh ? "校验码错误，应为" + CHECK[sum % 11] : "wrong check character, expected " + CHECK[sum % 11];
    return "";
  }

  document.querySelectorAll("[data-check-identity]").forEach(function (input) {
    var zh = document.documentElement.lang.indexOf("zh") === 0;
    var out = document.getElementById(input.id + "-error");
    input.addEventListener("input", function () {
      var problem = identityProblem(input.value, zh);
      if (out) out.textContent = problem;
      input.parentElement.classList.toggle("invalid", !!problem);
      input.setAttribute("aria-invalid", problem ? "true" : "false");
      // A valid number states the birth date and sex (the server refuses a contradiction).
      var v = input.value.trim().toUpperCase();
      if (problem || v.length !== 18) return;
      var born = document.getElementById("birth_date"), sex = document.getElementById("gender");
      if (born) born.value = v.slice(6, 10) + "-" + v.slice(10, 12) + "-" + v.slice(12, 14);
      if (sex) sex.value = (+v[16]) % 2 ? "male" : "female";
    });
  });

  // Diagnosis suggestions from the alliance's ICD-10 list as the doctor types: a code's
  // start, any part of the name, or pinyin initials (jxxjgs for 急性心肌梗死).
  document.querySelectorAll("datalist[data-search]").forEach(function (list) {
    var input = document.querySelector('input[list="' + list.id + '"]');
    if (!input) return;
    var asked = "";
    input.addEventListener("input", function () {
      var q = input.value.trim();
      if (!q || q === asked || / /.test(q)) return;
      asked = q;
      fetch(list.dataset.search + "?q=" + encodeURIComponent(q), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (found) {
          if (q !== asked) return;
          list.textContent = "";
          found.forEach(function (d) {
            var option = document.createElement("option");
            option.value = d.code + " " + d.name;
            list.appendChild(option);
          });
        })
        .catch(function () {});
    });
  });

  // Same-origin fetches that change something carry the session's CSRF token.
  var meta = document.querySelector('meta[name="csrf-token"]');
  window.allianceCsrf = meta ? meta.content : "";
})();
