/**
 * A volume's identity: UUID, WWN and serial number, made once at creation and stored, so a
 * host sees the same LUN identity across restarts (multipath and udev key on it).
 *
 * WWN: an NAA IEEE Registered Extended designator (NAA 6, SPC-4 7.8.6.6.5), 128 bits:
 *     NAA (4 bits) = 6 | IEEE company id (24 bits) | vendor specific id (36) | extension (64)
 * The company id is ARRAYLAB_COMPANY_ID = A2-1A-B0 ("ArrayLAB0"). Its first octet has the
 * X ("locally administered") bit set and the M bit clear, the form IEEE reserves for
 * private use: the IEEE assigns no company that id, so an emulated LUN cannot carry a real
 * vendor's WWN. The remaining 100 bits are the UUID's random bits, so WWNs are as unique
 * as the UUIDs.
 *
 * Serial: "ALB" and 12 upper-case base-36 characters from 60 further UUID bits.
 *
 * A rename with a new identity (renewedIdentity) keeps the UUID but takes the WWN and serial
 * of a fresh random UUID, so after it the WWN no longer derives from the volume's own UUID.
 */
import { randomUUID } from 'node:crypto';

/** Locally administered IEEE company id used in every arraylab WWN. */
export const ARRAYLAB_COMPANY_ID = 'a21ab0';
export const SERIAL_PREFIX = 'ALB';

export const WWN_PATTERN = /^6a21ab0[0-9a-f]{25}$/;
export const SERIAL_PATTERN = /^ALB[0-9A-Z]{12}$/;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface VolumeIdentity {
  uuid: string;
  wwn: string;
  serial: string;
}

/** A fresh identity for a new volume. */
export function newVolumeIdentity(): VolumeIdentity {
  return identityFromUuid(randomUUID());
}

/**
 * The same volume under a new identity: a fresh WWN and serial (from a new random UUID's
 * bits), the UUID kept, since it is the array's internal key and names the volume's files.
 * For a volume that must look like a different LUN to hosts, e.g. a split clone.
 */
export function renewedIdentity(uuid: string): VolumeIdentity {
  const { wwn, serial } = newVolumeIdentity();
  return { uuid, wwn, serial };
}

/** The identity a UUID determines (deterministic, for tests and for rebuilding rows). */
export function identityFromUuid(uuid: string): VolumeIdentity {
  if (!UUID_PATTERN.test(uuid)) throw new Error(`not a lower-case RFC 4122 UUID: ${uuid}`);
  const hex = uuid.replace(/-/g, '');
  // Drop the version nibble (index 12) and the variant nibble (index 16, only 2 random bits):
  // 30 hex digits of pure randomness remain in a v4 UUID.
  const random = hex.slice(0, 12) + hex.slice(13, 16) + hex.slice(17);
  const wwn = `6${ARRAYLAB_COMPANY_ID}${random.slice(0, 25)}`;
  const serialNumber = BigInt(`0x${random.slice(15, 30)}`); // 60 bits; overlaps the WWN's, which is fine
  const serial = SERIAL_PREFIX + serialNumber.toString(36).toUpperCase().padStart(12, '0');
  return { uuid, wwn, serial };
}
