// @ts-check
/** Read one member out of a .tar.gz in the browser: DecompressionStream and a minimal tar walk. */

/**
 * @param {Uint8Array} bytes
 * @param {number} start
 * @param {number} length
 */
function text(bytes, start, length) {
  const slice = bytes.subarray(start, start + length);
  const end = slice.indexOf(0);
  return new TextDecoder().decode(end === -1 ? slice : slice.subarray(0, end));
}

/**
 * The bytes of the first member whose base name is `name`, or null.
 * @param {Blob} archive a gzip-compressed tar
 * @param {string} name
 * @returns {Promise<Uint8Array | null>}
 */
export async function extractFromTarGz(archive, name) {
  const tar = new Uint8Array(
    await new Response(archive.stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer(),
  );
  let offset = 0;
  let longName = "";
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((byte) => byte === 0)) break;  // the end-of-archive blocks
    const size = parseInt(text(header, 124, 12).trim() || "0", 8);
    const type = String.fromCharCode(header[156] || 48);
    const prefix = text(header, 345, 155);
    const body = tar.subarray(offset + 512, offset + 512 + size);
    let path = longName || (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100));
    longName = "";
    if (type === "x") {
      // A PAX header: "<len> path=<name>\n" records; the next member takes that path.
      const match = /\d+ path=([^\n]*)\n/.exec(new TextDecoder().decode(body));
      if (match) longName = match[1];
    } else if (type === "L") {
      longName = text(body, 0, body.length);  // a GNU long name
    } else if ((type === "0" || type === "\0") && path.split("/").pop() === name) {
      return body.slice();
    }
    offset += 512 + Math.ceil(size / 512) * 512;
    path = "";
  }
  return null;
}
