/**
 * What the agent, running as root, may trust on the filesystem: a hook script (and its
 * directory) that someone else could rewrite would run their code as root, and a run directory
 * someone else controls could hand the agent's socket to them. Each check names the path and
 * the chmod/chown that fixes it.
 */
import { lstatSync, mkdirSync, type Stats } from 'node:fs';

/** The agent's uid (-1 where there is none, i.e. not on POSIX). */
export function agentUid(): number {
  return process.getuid?.() ?? -1;
}

/** The mode bits as chmod takes them, e.g. "0775". */
export function modeString(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/**
 * Why a file or directory the agent runs (or runs from) cannot be trusted, or '' when it can:
 * it must be owned by root or by the agent's own user, and not writable by group or others.
 * Every problem comes with its fix.
 */
export function ownershipProblem(path: string, st: Pick<Stats, 'uid' | 'mode'>, uid: number = agentUid()): string {
  const problems: string[] = [];
  if (st.uid !== 0 && st.uid !== uid)
    problems.push(`${path} is owned by uid ${st.uid}, not by root${uid > 0 ? ` or the agent's uid ${uid}` : ''} (fix: chown root ${path})`);
  if ((st.mode & 0o022) !== 0) {
    const who = (st.mode & 0o020) !== 0 && (st.mode & 0o002) !== 0 ? 'group and others' : (st.mode & 0o020) !== 0 ? 'its group' : 'others';
    problems.push(`${path} is writable by ${who} (mode ${modeString(st.mode)}; fix: chmod go-w ${path})`);
  }
  return problems.join('; ');
}

/**
 * A directory only the agent's user may use (the run directory, a socket's directory): created
 * 0700 when missing; an existing one must be a real directory (not a symlink), owned by the
 * agent's user and not writable by group or others. Throws naming the directory and the fix.
 */
export function ensurePrivateDir(dir: string, what: string, uid: number = agentUid()): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new Error(
      `cannot create the ${what} ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; create it (mkdir -m 700 ${dir}) or choose another`,
    );
  }
  const st = lstatSync(dir);
  if (!st.isDirectory())
    throw new Error(`the ${what} ${dir} is not a directory (a symlink or a file); remove it (the agent makes it, mode 0700) or choose another`);
  if (st.uid !== uid)
    throw new Error(
      `the ${what} ${dir} is owned by uid ${st.uid}, not by the agent's uid ${uid}, who could otherwise be handed another user's socket; chown ${uid} ${dir} (or remove it), or choose another`,
    );
  if ((st.mode & 0o022) !== 0) throw new Error(`the ${what} ${dir} is writable by others (mode ${modeString(st.mode)}); chmod 700 ${dir}`);
}
