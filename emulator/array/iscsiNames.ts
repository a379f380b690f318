/**
 * iSCSI names (RFC 3720 §3.2.6, RFC 3722, RFC 3980): the initiator names hosts are known by and
 * the array's target name. Three forms:
 *
 *   iqn.YYYY-MM.reversed.domain[:anything]   e.g. iqn.1994-05.com.redhat:web1
 *   eui.<16 hex digits>                       e.g. eui.02004567a425678d
 *   naa.<16 or 32 hex digits>                 e.g. naa.52004567ba64678d
 *
 * Names compare case-insensitively (RFC 3722's stringprep maps to lower case), so the canonical
 * form is lower case: "IQN.2026-01.Lab.X:A" and "iqn.2026-01.lab.x:a" are the same initiator.
 * Only ASCII is accepted: letters, digits, '.', '-' and ':' (stringprep's Unicode is not needed
 * in a lab and would make look-alike names possible).
 */

/** RFC 3720: an iSCSI name is at most 223 bytes. */
export const MAX_ISCSI_NAME_LENGTH = 223;

const LABEL = '[a-z0-9](?:[a-z0-9-]*[a-z0-9])?';
const IQN = new RegExp(`^iqn\\.(\\d{4})-(\\d{2})\\.${LABEL}(?:\\.${LABEL})*(?::[a-z0-9.:-]+)?$`);
const EUI = /^eui\.[0-9a-f]{16}$/;
const NAA = /^naa\.(?:[0-9a-f]{16}|[0-9a-f]{32})$/;

/** The fix every refusal ends with. */
export const ISCSI_NAME_FORMS =
  'use iqn.YYYY-MM.reversed.domain[:name] (e.g. iqn.1994-05.com.redhat:web1), eui. and 16 hex digits, or naa. and 16 or 32 hex digits';

export class IscsiNameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IscsiNameError';
  }
}

/** The canonical (lower-case) form of a valid iSCSI name, or undefined. For look-ups. */
export function canonicalIscsiName(name: string): string | undefined {
  if (typeof name !== 'string' || name.length > MAX_ISCSI_NAME_LENGTH) return undefined;
  const lower = name.toLowerCase();
  const iqn = IQN.exec(lower);
  if (iqn) {
    const month = Number(iqn[2]);
    return month >= 1 && month <= 12 ? lower : undefined;
  }
  return EUI.test(lower) || NAA.test(lower) ? lower : undefined;
}

/**
 * The canonical form of `name`, or IscsiNameError saying what is wrong with it (the caller
 * prefixes what the name is for, e.g. "initiator" or "iscsi.targetName").
 */
export function checkIscsiName(name: unknown): string {
  if (typeof name !== 'string' || name === '') throw new IscsiNameError(`${show(name)} is not an iSCSI name; ${ISCSI_NAME_FORMS}`);
  if (Buffer.byteLength(name, 'utf8') > MAX_ISCSI_NAME_LENGTH) {
    throw new IscsiNameError(`${show(`${name.slice(0, 40)}...`)} is longer than the ${MAX_ISCSI_NAME_LENGTH} bytes an iSCSI name may have; use a shorter name`);
  }
  const canonical = canonicalIscsiName(name);
  if (canonical !== undefined) return canonical;
  const lower = name.toLowerCase();
  let why = 'is not an iSCSI name';
  if (lower.startsWith('iqn.')) {
    const date = /^iqn\.(\d{4})-(\d{2})\./.exec(lower);
    if (!date) why = 'is not an iqn. name: it needs a date YYYY-MM after "iqn."';
    else if (Number(date[2]) < 1 || Number(date[2]) > 12) why = `is not an iqn. name: month ${date[2]} is not 01 to 12`;
    else
      why =
        "is not an iqn. name: only letters, digits, '.', '-' and ':' may follow the date, the domain part has no empty labels, and ':' is followed by at least one character";
  } else if (lower.startsWith('eui.')) {
    why = 'is not an eui. name: it needs exactly 16 hex digits after "eui."';
  } else if (lower.startsWith('naa.')) {
    why = 'is not an naa. name: it needs exactly 16 or 32 hex digits after "naa."';
  }
  throw new IscsiNameError(`${show(name)} ${why}; ${ISCSI_NAME_FORMS}`);
}

function show(value: unknown): string {
  return value === undefined ? 'nothing' : JSON.stringify(value);
}
