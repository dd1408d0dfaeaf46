// @ts-check
/** The API client: the key lives in sessionStorage, every call sends it as a header, never in a URL. */

const KEY = "loraq-api-key";

/** @returns {string | null} */
export function apiKey() {
  return sessionStorage.getItem(KEY);
}

/** @param {string | null} key */
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  /** @param {number} status @param {string} message @param {string | null} param */
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

/**
 * A request to the API with the session's key.
 * @param {string} path
 * @param {{method?: string, json?: unknown, body?: BodyInit, headers?: Record<string, string>}} [options]
 * @returns {Promise<Response>}
 */
export async function request(path, options = {}) {
  /** @type {Record<string, string>} */
  const headers = { ...(options.headers || {}) };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let body = options.body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let param = null;
    try {
      const payload = await response.json();
      if (payload && payload.error) ({ message, param } = payload.error);
      else if (payload && payload.detail) message = JSON.stringify(payload.detail);
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message, param);
  }
  return response;
}

/**
 * @template T
 * @param {string} path
 * @param {{method?: string, json?: unknown, body?: BodyInit}} [options]
 * @returns {Promise<T>}
 */
export async function api(path, options) {
  return (await request(path, options)).json();
}

/**
 * @template T
 * @typedef {{data: T[], has_more: boolean}} ListPage
 */

/**
 * Every item of a newest-first list, following `after` while `has_more`.
 * @template T
 * @param {string} path
 * @param {(item: T) => boolean} [stopAt] stop at (and leave out) the first item this is true of
 * @returns {Promise<T[]>}
 */
export async function listAll(path, stopAt) {
  /** @type {T[]} */
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    /** @type {ListPage<T>} */
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    for (const item of page.data) {
      if (stopAt && stopAt(item)) return items;
      items.push(item);
    }
    if (!page.has_more || !page.data.length) return items;
    after = /** @type {{id: string}} */ (/** @type {unknown} */ (page.data[page.data.length - 1])).id;
  }
}

/**
 * Download a file: fetched with the Authorization header into a Blob, saved through an object URL, so the
 * key never appears in a URL that a server or proxy would log.
 * @param {string} fileId
 * @param {string} [filename]
 */
export async function downloadFile(fileId, filename) {
  const response = await request(`/v1/files/${encodeURIComponent(fileId)}/content`);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename || fileId;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * The first bytes of a file's content, read from the stream, which is then cancelled.
 * @param {string} fileId
 * @param {number} maxBytes
 * @returns {Promise<string>}
 */
export async function readHead(fileId, maxBytes) {
  const response = await request(`/v1/files/${encodeURIComponent(fileId)}/content`);
  if (!response.body) return "";
  const reader = response.body.getReader();
  /** @type {Uint8Array[]} */
  const chunks = [];
  let size = 0;
  while (size < maxBytes) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
  }
  await reader.cancel().catch(() => undefined);
  const all = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return new TextDecoder().decode(all.subarray(0, maxBytes));
}
