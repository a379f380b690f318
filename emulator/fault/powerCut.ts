/**
 * `arraylab power-cut`: the array loses power and comes back.
 *
 * In order: every client connection is dropped (each handle is told to disconnect, so no
 * further write is acknowledged), every volatile write cache loses what no flush covered, as
 * the policy says (WriteCache.powerCut: all, a seeded random subset of whole writes, or a
 * seeded random subset of each write's 512-byte sectors), and what survives is written to the
 * volume and flushed. Flushed and FUA writes were on the volume already and survive; copy
 * sessions stay as the array keeps them (their records are in the journal, and they only ever
 * saw destaged writes). The caller refuses new connections until `downMs` after the cut.
 *
 * Each volume draws from its own generator, seeded from the request's seed (or a fresh one the
 * report shows) and the volume's name, so the same seed and the same unflushed writes of a
 * volume lose the same data, whatever other volumes held.
 */
import type { HandleEvent } from '../block/BlockDevice.js';
import { deriveSeed, freshSeed, SeededRandom } from './random.js';
import { type CacheCutReport, POWER_CUT_POLICIES, type PowerCutPolicy, type WriteCache } from './WriteCache.js';

export interface PowerCutVolume {
  readonly name: string;
  readonly cache: WriteCache | undefined;
  readonly connections: Iterable<{ signal(event: HandleEvent): void }>;
}

export interface PowerCutOptions {
  policy: PowerCutPolicy;
  seed: number;
  downMs: number;
}

export interface PowerCutResult {
  policy: PowerCutPolicy;
  seed: number;
  connectionsDropped: number;
  /** Volumes with a volatile cache, in name order. */
  volumes: Array<{ name: string } & CacheCutReport>;
}

/** The longest refusal of connections after a cut: an hour is already far past any test's patience. */
export const MAX_DOWN_MS = 3_600_000;

/** Validates a request; returns the error message naming the fix, or the options. */
export function parsePowerCut(req: { policy?: string | undefined; seed?: number | undefined; downMs?: number | undefined }): PowerCutOptions | string {
  const policy = req.policy === undefined || req.policy === '' ? 'drop-unflushed' : req.policy;
  if (!(POWER_CUT_POLICIES as readonly string[]).includes(policy)) {
    return `unknown power cut policy ${JSON.stringify(policy)}: use drop-unflushed, keep-random or torn (e.g. arraylab power-cut --policy torn --seed 7)`;
  }
  const seed = req.seed ?? freshSeed();
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > 2 ** 32 - 1) return `power cut seed ${seed} is not a whole number from 0 to 4294967295`;
  const downMs = req.downMs ?? 0;
  if (!Number.isSafeInteger(downMs) || downMs < 0 || downMs > MAX_DOWN_MS)
    return `power cut --down-ms ${downMs} must be a whole number of ms from 0 to ${MAX_DOWN_MS}`;
  return { policy: policy as PowerCutPolicy, seed, downMs };
}

/** Drops the connections, then cuts the caches (see the top of the file). */
export async function cutPower(volumes: readonly PowerCutVolume[], opts: PowerCutOptions): Promise<PowerCutResult> {
  const sorted = [...volumes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let dropped = 0;
  const event: HandleEvent = { kind: 'disconnect', reason: 'power cut: the array lost power' };
  for (const v of sorted) {
    for (const c of [...v.connections]) {
      c.signal(event);
      dropped++;
    }
  }
  const out: PowerCutResult = { policy: opts.policy, seed: opts.seed, connectionsDropped: dropped, volumes: [] };
  for (const v of sorted) {
    if (v.cache === undefined) continue;
    out.volumes.push({ name: v.name, ...(await v.cache.powerCut(opts.policy, new SeededRandom(volumeSeed(opts.seed, v.name)))) });
  }
  return out;
}

/** A volume's generator seed: the cut's seed mixed with an FNV-1a hash of the volume's name. */
export function volumeSeed(seed: number, name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return deriveSeed(seed, h);
}
