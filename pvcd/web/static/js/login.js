// The login page: the token goes to /api/v1/auth/login, which sets the HttpOnly session cookie;
// then the dashboard loads (it reads its CSRF token from /api/v1/auth/session).
const form = document.getElementById("login");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const body = new URLSearchParams({ token: document.getElementById("token").value });
  try {
    const response = await fetch("/api/v1/auth/login", { method: "POST", body, credentials: "same-origin" });
    if (response.ok) {
      window.location.assign("/" + window.location.hash); // back to the view asked for
      return;
    }
    const answer = await response.json().catch(() => ({}));
    error.textContent = answer.message || `Login failed (HTTP ${response.status})`;
  } catch (e) {
    error.textContent = `The API cannot be reached: ${e.message}`;
  }
  error.hidden = false;
});
