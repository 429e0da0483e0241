// Shows the sign-in error the server redirected with (/admin?error=1).
if (new URLSearchParams(location.search).has("error")) {
  document.getElementById("error").hidden = false;
}
