// The classroom features, wired into the page in one place: masthead buttons, the presenter /
// follower bar, and the panels for presenting or joining, the demo gallery, and sharing and
// exporting. Each feature lives in its own module; this one only builds the frame around them.
import { mountExports, shortLinkNow, toggleExports } from "./exports.js";
import { mountGallery, toggleGallery } from "./gallery.js";
import { mountPresenter, togglePanel } from "./presenter.js";
import { h } from "./ui.js";

/** Build the classroom controls into #classroom and the masthead. Call before the socket connects. */
export function startClassroom() {
  const root = document.getElementById("classroom");
  const panel = (testid, label) => h("section", { className: "classroom-panel", hidden: true, "data-testid": testid,
    "aria-label": label });
  const bar = h("div", { className: "classroom-bar", hidden: true, role: "status", "data-testid": "classroom-bar" });
  const presenter = panel("classroom-panel", "Present or join a class");
  const gallery = panel("gallery-panel", "Demo gallery");
  const exports = panel("export-panel", "Share and export");
  root.append(bar, presenter, gallery, exports);

  mountPresenter(bar, presenter);
  mountGallery(gallery);
  mountExports(exports);

  const only = (open) => () => { // one panel at a time: a projected page stays uncluttered
    const opening = open === "presenter" ? presenter.hidden : open === "gallery" ? gallery.hidden : exports.hidden;
    togglePanel(open === "presenter" && opening);
    toggleGallery(open === "gallery" && opening);
    toggleExports(open === "exports" && opening);
  };
  const button = (text, testid, onClick, title) => h("button", { type: "button", className: "quiet", text, title,
    "data-testid": testid, onClick });
  document.querySelector(".masthead-actions").prepend(
    button("Gallery", "open-gallery", only("gallery"), "Prompts worth showing in class, each with what to look for"),
    button("Classroom", "open-classroom", only("presenter"), "Present your view to a class, or join one with a code"),
    button("Short link", "open-short-link", () => {
      togglePanel(false);
      toggleGallery(false);
      shortLinkNow();
    }, "A short permalink to this view"),
    button("Export", "open-export", only("exports"), "PNG, SVG, the raw data, or an offline HTML file of this analysis"),
  );
}
