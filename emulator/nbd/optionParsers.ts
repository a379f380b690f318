/**
 * Parsers for option payloads. Each returns the parsed request or a string saying why the
 * payload is malformed (answered with NBD_REP_ERR_INVALID). Every length is checked against
 * the bytes actually present before it is used.
 */
import { MAX_STRING, META_BASE_ALLOCATION, META_BASE_ALLOCATION_ID } from './constants.js';

/** NBD_OPT_INFO / NBD_OPT_GO: name length, name, count of info requests, the requests. */
export function parseExportRequest(data: Buffer): { name: string; infos: number[] } | string {
  if (data.length < 6) return 'option data shorter than 6 bytes';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return 'export name runs past the option data';
  if (nameLen > MAX_STRING) return 'export name longer than 4096 bytes';
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return 'information request count does not match the option length';
  const infos: number[] = [];
  for (let i = 0, p = 6 + nameLen; i < count; i++, p += 2) infos.push(data.readUInt16BE(p));
  return { name, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then length-prefixed queries. */
export function parseMetaRequest(data: Buffer): { name: string; queries: string[] } | string {
  if (data.length < 8) return 'option data shorter than 8 bytes';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return 'export name runs past the option data';
  if (nameLen > MAX_STRING) return 'export name longer than 4096 bytes';
  const name = data.toString('utf8', 4, 4 + nameLen);
  let p = 4 + nameLen;
  const count = data.readUInt32BE(p);
  p += 4;
  // Each query takes at least its 4-byte length: a count beyond that is a lie.
  if (count > (data.length - p) / 4) return 'query count runs past the option data';
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (p + 4 > data.length) return 'query runs past the option data';
    const qLen = data.readUInt32BE(p);
    p += 4;
    if (qLen > data.length - p) return 'query runs past the option data';
    if (qLen > MAX_STRING) return 'query longer than 4096 bytes';
    queries.push(data.toString('utf8', p, p + qLen));
    p += qLen;
  }
  if (p !== data.length) return 'trailing bytes after the queries';
  return { name, queries };
}

/**
 * The contexts a query list selects. Only base:allocation exists. For LIST, no queries and
 * the "base:" wildcard list it; for SET, only its full name selects it. Queries in unknown
 * namespaces, and unknown base: leaves, are ignored as the spec requires.
 */
export function selectMetaContexts(queries: string[], set: boolean): { id: number; name: string }[] | string {
  let hit = !set && queries.length === 0;
  for (const q of queries) {
    if (!q.includes(':')) return `query "${q}" has no namespace`;
    if (q === META_BASE_ALLOCATION || (!set && q === 'base:')) hit = true;
  }
  return hit ? [{ id: META_BASE_ALLOCATION_ID, name: META_BASE_ALLOCATION }] : [];
}
