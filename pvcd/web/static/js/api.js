// Calls to /api/v1 from the page: the session cookie goes along by itself; every write carries
// the session's CSRF token (X-CSRF-Token) read from /api/v1/auth/session. An answer that is not
// 2xx becomes an ApiError with the API's own `message`.
let csrfToken = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function loadSession() {
  const session = await api("GET", "/auth/session");
  csrfToken = session.csrf_token;
  return session;
}

export async function api(method, path, values = null) {
  const headers = {};
  let url = "/api/v1" + path;
  let body;
  if (values && method === "GET") {
    url += "?" + new URLSearchParams(values);
  } else if (values) {
    body = new URLSearchParams(values);
  }
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(url, { method, headers, body, credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new ApiError(401, "Authentication required");
  }
  const text = await response.text();
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    answer = { message: text };
  }
  if (!response.ok) {
    throw new ApiError(response.status, (answer && answer.message) || `HTTP ${response.status}`);
  }
  return answer;
}

export async function logout() {
  await api("POST", "/auth/logout").catch(() => null);
  window.location.assign("/login");
}
