// Plate overview behaviour: the inspection selector switches the schematic; the URL hash
// (#drop-<inspection>-<location>) opens a drop view, so a link can point at one drop.
(function () {
  "use strict";
  var select = document.getElementById("inspection-select");
  var sections = document.querySelectorAll("section.inspection");
  var views = document.querySelectorAll("article.drop-view");
  var hint = document.getElementById("drop-hint");
  var courses = document.querySelectorAll("section.course");

  // The time-course strips reuse the drop views' embedded pictures: no picture twice in the file.
  document.querySelectorAll("section.course img[data-from]").forEach(function (img) {
    var source = document.querySelector("#" + img.dataset.from + " svg.drop-image image");
    if (source) img.src = source.getAttribute("href");
  });

  function showCourse(view) {
    courses.forEach(function (course) {
      var shown = view !== null && course.dataset.location === view.dataset.location;
      course.hidden = !shown;
      course.querySelectorAll(".frame").forEach(function (frame) {
        frame.classList.toggle(
          "current", shown && frame.dataset.inspectionId === view.dataset.inspectionId);
      });
    });
  }

  document.querySelectorAll("#view-select input").forEach(function (input) {
    input.addEventListener("change", function () {
      document.body.classList.toggle("view-new-hits", input.value === "new-hits" && input.checked);
    });
  });

  function showInspection(id) {
    sections.forEach(function (section) {
      section.hidden = section.dataset.inspectionId !== String(id);
    });
    if (select) select.value = String(id);
  }

  function currentView() {
    var id = window.location.hash.slice(1);
    return id ? document.getElementById(id) : null;
  }

  function showDrop() {
    var view = currentView();
    if (view && !view.classList.contains("drop-view")) view = null;
    views.forEach(function (article) { article.hidden = article !== view; });
    showCourse(view);
    if (hint) hint.hidden = view !== null;
    document.querySelectorAll("svg.plate .drop.selected").forEach(function (rect) {
      rect.classList.remove("selected");
    });
    if (!view) return;
    showInspection(view.dataset.inspectionId);
    var rect = document.querySelector(
      "#inspection-" + view.dataset.inspectionId + " .drop[data-location=\"" +
      view.dataset.location + "\"]");
    if (rect) rect.classList.add("selected");
  }

  if (select) {
    select.addEventListener("change", function () {
      var view = currentView();
      showInspection(select.value);
      if (view && view.classList.contains("drop-view")) {
        var next = "drop-" + select.value + "-" + view.dataset.location;
        // Set the hash (so the URL names the drop) and show at once: hashchange comes later.
        window.location.hash = document.getElementById(next) ? next : "";
        showDrop();
      }
    });
  }
  window.addEventListener("hashchange", showDrop);
  showDrop();
})();
