/* Swiftex web form. Paste where the form should appear:
     <script src="…/f/{{ form.slug }}/embed.js" async></script>
   or put the form in an element of your page: add data-target="#css-selector" to that script tag.
   The form opens in an iframe with your page's utm_* parameters and address, and follows its height. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !window.URL || !window.URLSearchParams) return;
  var origin = new URL(script.src).origin;
  var src = new URL("{{ form.path|escapejs }}", origin);
  var here = new URLSearchParams(window.location.search);
  ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"].forEach(function (name) {
    if (here.get(name)) src.searchParams.set(name, here.get(name));
  });
  src.searchParams.set("page_url", window.location.href.split("#")[0]);
  if (document.referrer) src.searchParams.set("referrer", document.referrer);
  src.searchParams.set("embed", "1");

  var frame = document.createElement("iframe");
  frame.src = src.href;
  frame.title = "{{ form.title|escapejs }}";
  frame.setAttribute("data-swiftex-form", "{{ form.slug|escapejs }}");
  frame.style.cssText = "display:block;width:100%;max-width:36rem;height:42rem;border:0;overflow:hidden;";

  var loads = 0;
  window.addEventListener("message", function (event) {
    var data = event.data;
    if (event.origin !== origin || event.source !== frame.contentWindow || !data || data.type !== "swiftex:form-size") return;
    if (typeof data.height === "number" && data.height > 0) frame.style.height = Math.ceil(data.height) + "px";
    // After a submit the new page (errors, thank-you) may start above the fold.
    if (data.loaded && ++loads > 1 && frame.getBoundingClientRect().top < 0) frame.scrollIntoView();
  });

  function place() {
    var selector = script.getAttribute("data-target");
    var target = selector && document.querySelector(selector);
    if (target) target.appendChild(frame);
    else if (script.parentNode && script.parentNode !== document.head) script.parentNode.insertBefore(frame, script.nextSibling);
    else document.body.appendChild(frame);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", place);
  else place();
})();
