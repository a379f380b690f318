/**
 * The contract between the iSCSI transport (emulator/iscsi/) and the SCSI command layer
 * (emulator/iscsi/scsi/). The SCSI layer knows nothing of PDUs, sessions or sockets; the
 * transport knows nothing of CDBs beyond their length and the data direction the initiator
 * declared. Both know nothing of copy sessions: a LUN is a BlockDevice plus its identity.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';

/** SCSI status codes (SAM-5). */
export const GOOD = 0x00;
export const CHECK_CONDITION = 0x02;
export const CONDITION_MET = 0x04;
export const BUSY = 0x08;
export const RESERVATION_CONFLICT = 0x18;
export const TASK_SET_FULL = 0x28;
export const TASK_ABORTED = 0x40;

/** What the LUN reports about itself in INQUIRY and VPD pages. */
export interface LunIdentity {
  /** NAA-6 WWN as 32 hex digits (VPD 0x83 designator, type 3). */
  wwn: string;
  /** Unit serial number (VPD 0x80), ASCII. */
  serial: string;
  /** Vendor (8 chars), product (16) and revision (4), padded by the SCSI layer. */
  vendor: string;
  product: string;
  revision: string;
}

/** One logical unit as the SCSI layer sees it. */
export interface LunDevice {
  readonly device: BlockDevice;
  readonly identity: LunIdentity;
  /** Read-only for this I_T nexus (policy, or the array's state): writes get DATA PROTECT. */
  readonly readOnly: boolean;
  /** The device has a volatile write cache that SYNCHRONIZE CACHE flushes (MODE page 08h WCE). */
  readonly writeCacheEnabled: boolean;
}

/** The initiator-target nexus a command arrives on: reservations and unit attentions are per nexus. */
export interface Nexus {
  /** Initiator port name: "<initiator IQN>,i,0x<ISID>" (RFC 7143 §4.2.7.1). */
  initiatorPort: string;
  /** Target port name: "<target IQN>,t,0x<TPGT>". */
  targetPort: string;
  /** Relative target port identifier (VPD 0x83 designator type 4). */
  relativePort: number;
}

export interface ScsiCommand {
  readonly cdb: Buffer;
  readonly lun: number;
  readonly nexus: Nexus;
  /** All data the initiator sent (WRITE direction), exactly the expected length; else empty. */
  readonly dataOut: Buffer;
  /** Expected data transfer length for data-in (READ direction) from the command PDU. */
  readonly expectedDataInLength: number;
}

export interface ScsiResult {
  status: number;
  /** Fixed-format sense data when status is CHECK_CONDITION. */
  sense?: Buffer;
  /** Data for the initiator; the transport truncates to the expected length and reports residuals. */
  dataIn?: Buffer;
  /**
   * The buffer dataIn is a view of, when it came from DeviceServer.dataInPool: the transport
   * gives it back once the socket is done with it (or drops it to the GC if unsure).
   */
  dataInBuffer?: Buffer;
}

/** Task attributes and management are the transport's; the SCSI layer executes one command at a time per call. */
export interface ScsiTarget {
  /** Executes a command; never throws for a client's input (bad CDBs become CHECK CONDITION). */
  execute(cmd: ScsiCommand): Promise<ScsiResult>;
}
