/* Inside an embed's iframe: tell the embedding page how tall this page is (webforms/embed.js resizes
   the iframe). The message carries a height and nothing else, so any parent may read it; the
   embed script checks that it comes from this origin and from its own iframe. */
(function () {
  "use strict";
  if (window.parent === window) return;
  function report(loaded) {
    var height = Math.ceil(document.body.getBoundingClientRect().height);
    window.parent.postMessage({ type: "swiftex:form-size", height: height, loaded: loaded }, "*");
  }
  report(true);
  if (window.ResizeObserver) new ResizeObserver(function () { report(false); }).observe(document.body);
  else window.addEventListener("resize", function () { report(false); });
})();
