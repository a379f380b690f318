/**
 * Backup volumes on a remote array (issue 16): a registered backup volume named REMOTE:VOL is
 * volume VOL of the array the agent's array knows as REMOTE (`arraylab remote add`). It serves
 * synchronized backups only: start-sync mirrors onto it with REC (sync mode) where a local one
 * gets EC, and backup suspends the REC pair as it suspends an EC pair.
 *
 * Local volume names cannot hold ':' (proto VOLUME_NAME_PATTERN), so the name alone tells.
 * The agent talks to its own array for everything but one thing: a remote volume's size and
 * block size at registration, which only the remote array can tell (its API address comes from
 * the agent's array's remote list).
 */
import type { CopySessionView } from '../../proto/views.js';

/** The pair types of a synchronized backup: EC onto a local backup volume, REC onto a remote one. */
export const SYNC_PAIR_TYPES: ReadonlyArray<CopySessionView['type']> = ['ec', 'rec'];

export function isSyncPairType(type: string): boolean {
  return (SYNC_PAIR_TYPES as readonly string[]).includes(type);
}

/** REMOTE and VOL of REMOTE:VOL; undefined for a local volume name. */
export function remoteOf(volume: string): { remote: string; volume: string } | undefined {
  const sep = volume.indexOf(':');
  if (sep < 0) return undefined;
  return { remote: volume.slice(0, sep), volume: volume.slice(sep + 1) };
}

export function isRemoteVolume(volume: string): boolean {
  return volume.includes(':');
}

/** "EC pair" or "REC pair", for messages about the pair of a backup volume. */
export function pairName(backupVolume: string): string {
  return isRemoteVolume(backupVolume) ? 'REC pair' : 'EC pair';
}

/**
 * Why a pair is halted, as the array says (the session's remote.haltReason and haltDetail), or
 * '' when it is not.
 */
export function haltOf(s: CopySessionView): string {
  if (s.state !== 'halt') return '';
  const reason = s.remote?.haltReason || 'no reason given';
  return s.remote?.haltDetail ? `${reason}: ${s.remote.haltDetail}` : reason;
}
