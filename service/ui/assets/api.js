// Calls to this service's API (same origin only; the page's CSP allows nothing else).
// With API keys configured, a 401 asks the learner for a key, kept in sessionStorage
// (this tab only). Errors carry the API's own words: the problem+json detail, or V2's
// "error" member.

const KEY = "cnn-service-api-key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY, key.trim());
}

/** POST ``body`` as JSON to ``path``; the parsed answer, or an ApiError. */
export async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await response.text();
  let doc = null;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = null;
  }
  if (!response.ok) {
    const detail = (doc && (doc.detail || doc.error)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, detail);
  }
  return doc;
}
