// Starts ReDoc on /redoc (a served file, not an inline script: the page's CSP allows none).
window.addEventListener("load", function () {
  var element = document.getElementById("redoc");
  Redoc.init(element.dataset.openapiUrl, {}, element);
});
