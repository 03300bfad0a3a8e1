(function () {
  var svg = document.getElementById("net");
  var pinned = null;
  var edges = Array.prototype.slice.call(svg.querySelectorAll(".edge"));
  function downstream(unit, seen) {
    edges.forEach(function (e) {
      if (e.dataset.from === unit && !seen.has(e)) {
        seen.add(e);
        downstream(e.dataset.to, seen);
      }
    });
    return seen;
  }
  function show(name) {
    var rows = document.querySelectorAll("tr[data-param]");
    rows.forEach(function (r) { r.classList.toggle("hl", r.dataset.param === name); });
    edges.forEach(function (e) { e.classList.remove("on", "sel"); });
    if (!name) { svg.classList.remove("focus"); return; }
    var edge = svg.querySelector('.edge[data-param="' + name + '"]');
    var key = "unitOf" + name.charAt(0).toUpperCase() + name.slice(1);
    var start = edge ? edge.dataset.to : svg.dataset[key];
    if (!start) { svg.classList.remove("focus"); return; }
    svg.classList.add("focus");
    if (edge) { edge.classList.add("on", "sel"); }
    downstream(start, new Set()).forEach(function (e) { e.classList.add("on"); });
  }
  edges.forEach(function (e) {
    if (!e.dataset.param) { return; }
    e.addEventListener("mouseenter", function () {
      if (!pinned) { show(e.dataset.param); }
    });
    e.addEventListener("mouseleave", function () { if (!pinned) show(null); });
    e.addEventListener("click", function () {
      pinned = pinned === e.dataset.param ? null : e.dataset.param;
      show(pinned);
    });
  });
  document.querySelectorAll("tr[data-param]").forEach(function (r) {
    r.addEventListener("click", function () {
      pinned = pinned === r.dataset.param ? null : r.dataset.param;
      show(pinned);
    });
  });
  // A link such as page.html#select=W5 opens with W5 and its paths highlighted.
  var match = /^#select=(\w+)$/.exec(location.hash);
  if (match) { pinned = match[1]; show(pinned); }
  document.documentElement.dataset.ready = "1";
})();
