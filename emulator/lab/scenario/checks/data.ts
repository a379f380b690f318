/**
 * data: {volume, sameAs | sha256, offset?, length?}: the volume's bytes, read through the array
 * over NBD (the array has no read RPC), equal another volume's or hash to a SHA-256. Read in
 * 1 MiB pieces, hashed as they come: memory stays bounded whatever the volume's size.
 * Under host affinity (an array with hosts) a plain NBD client sees no volume: then the check
 * reads over TLS-PSK with a key of the lab's hosts (lab up keeps them in the lab's secrets).
 */
import { createHash } from 'node:crypto';
import { parseHostPort } from '../../../../proto/util/address.js';
import { formatSize } from '../../../../proto/util/units.js';
import { NbdClient, NbdExportError } from '../../../remote/NbdClient.js';
import type { CheckSpec } from '../schema.js';
import { type Check, type CheckContext, fail, orMissing, pass } from './context.js';
import { openNbdTls } from './nbdTls.js';

const PIECE = 1024 * 1024;

/** What the check reads with: NbdClient (plain NBD) or the TLS-PSK reader. */
interface Source {
  read(offset: number, into: Buffer): Promise<void>;
  close(): Promise<void> | void;
}

/**
 * The volume over plain NBD; on an array with hosts (where a plain client sees nothing), over
 * TLS-PSK with a key of the lab's hosts that maps it. A string says why it cannot be read.
 */
async function open(ctx: CheckContext, array: string | undefined, volume: string): Promise<Source | string> {
  const c = ctx.client(array);
  const { listeners } = await c.getStatus();
  const l = listeners.nbd;
  const host = l.host === '0.0.0.0' || l.host === '::' || l.host === '' ? parseHostPort(c.address).host : l.host;
  try {
    return await NbdClient.connect({ host, port: l.port, exportName: volume, connectTimeoutMs: 10_000, timeoutMs: 30_000 });
  } catch (err) {
    if (!(err instanceof NbdExportError) || (await c.listHosts()).hosts.length === 0)
      return `cannot read volume ${volume} over NBD at ${host}:${l.port}: ${(err as Error).message}`;
  }
  const tried: string[] = [];
  for (const key of ctx.nbdKeys?.(array) ?? []) {
    try {
      return await openNbdTls(host, l.port, volume, key);
    } catch (err) {
      tried.push(`${key.identity}: ${(err as Error).message}`);
    }
  }
  return `cannot read volume ${volume} over NBD: the array has hosts, so a client sees only the volumes of the host its TLS-PSK key is; ${
    tried.length
      ? `none of the lab's host keys shows ${volume} (${tried.join('; ')})`
      : 'the lab holds no host key (lab up gives one to a lab host whose VMs attach via nbd)'
  }; map ${volume} to such a host, or check it with a shell: check`;
}

export const dataCheck: Check<Extract<CheckSpec, { kind: 'data' }>> = async (s, ctx) => {
  const c = ctx.client(s.array);
  const v = await orMissing(c.getVolume(s.volume));
  if (!v) return fail(`volume ${s.volume} does not exist${ctx.where(s.array)}`);
  const other = s.sameAs !== undefined ? await orMissing(c.getVolume(s.sameAs)) : undefined;
  if (s.sameAs !== undefined && !other) return fail(`volume ${s.sameAs} (sameAs) does not exist${ctx.where(s.array)}`);
  // Whole volume: sameAs's size (a backup may be larger than its source), else this volume's.
  const end = s.length !== undefined ? s.offset + s.length : (other ?? v).sizeBytes;
  for (const x of other ? [v, other] : [v])
    if (end > x.sizeBytes)
      return fail(`volume ${x.name} is ${formatSize(x.sizeBytes)}, shorter than the ${formatSize(end - s.offset)} from offset ${s.offset} compared`);
  const a = await open(ctx, s.array, s.volume);
  if (typeof a === 'string') return fail(a);
  const b = other ? await open(ctx, s.array, other.name) : undefined;
  if (typeof b === 'string') {
    await a.close();
    return fail(b);
  }
  try {
    const h = createHash('sha256');
    const bufA = Buffer.alloc(PIECE);
    const bufB = Buffer.alloc(PIECE);
    for (let off = s.offset; off < end; off += PIECE) {
      const n = Math.min(PIECE, end - off);
      const pa = bufA.subarray(0, n);
      const pb = bufB.subarray(0, n);
      await Promise.all([a.read(off, pa), b?.read(off, pb)]);
      if (b && !pa.equals(pb)) {
        let i = 0;
        while (pa[i] === pb[i]) i++;
        return fail(`volume ${s.volume} differs from ${s.sameAs} at byte ${off + i}`);
      }
      if (!b) h.update(pa);
    }
    const range = s.offset === 0 && s.length === undefined ? '' : ` (bytes ${s.offset} to ${end})`;
    if (b) return pass(`volume ${s.volume} holds the same ${formatSize(end - s.offset)} as ${s.sameAs}${range}`);
    const got = h.digest('hex');
    return got === s.sha256 ? pass(`volume ${s.volume}${range} has SHA-256 ${got}`) : fail(`volume ${s.volume}${range} has SHA-256 ${got}, not ${s.sha256}`);
  } finally {
    await Promise.all([Promise.resolve(a.close()).catch(() => {}), Promise.resolve(b?.close()).catch(() => {})]);
  }
};
