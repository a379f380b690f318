/**
 * Numbers from the iSCSI protocol (RFC 7143 §11, with §11.x naming each PDU). Names follow the
 * RFC's field and value names; values are what goes on the wire.
 */

// ---- Basic Header Segment geometry (§11.2.1) ----
export const BHS_LENGTH = 48;
export const DIGEST_LENGTH = 4;
/** Byte 0: the immediate-delivery bit of initiator PDUs; the opcode is the low 6 bits. */
export const IMMEDIATE_BIT = 0x40;
export const OPCODE_MASK = 0x3f;
/** Byte 1 bit 7: Final (F) on most PDUs, Transit (T) on Login. */
export const FINAL_BIT = 0x80;
/** ITT/TTT value that means "none" (§11.1.3 reserved tag). */
export const RESERVED_TAG = 0xffffffff;

// ---- Initiator opcodes (§11.1.1) ----
export const OP_NOP_OUT = 0x00;
export const OP_SCSI_CMD = 0x01;
export const OP_TASK_MGMT_REQ = 0x02;
export const OP_LOGIN_REQ = 0x03;
export const OP_TEXT_REQ = 0x04;
export const OP_SCSI_DATA_OUT = 0x05;
export const OP_LOGOUT_REQ = 0x06;
export const OP_SNACK_REQ = 0x10;

// ---- Target opcodes ----
export const OP_NOP_IN = 0x20;
export const OP_SCSI_RESP = 0x21;
export const OP_TASK_MGMT_RESP = 0x22;
export const OP_LOGIN_RESP = 0x23;
export const OP_TEXT_RESP = 0x24;
export const OP_SCSI_DATA_IN = 0x25;
export const OP_LOGOUT_RESP = 0x26;
export const OP_R2T = 0x31;
export const OP_ASYNC_MSG = 0x32;
export const OP_REJECT = 0x3f;

// ---- SCSI Command flags, byte 1 (§11.3.1) ----
export const CMD_FINAL = 0x80;
export const CMD_READ = 0x40;
export const CMD_WRITE = 0x20;
export const CMD_ATTR_MASK = 0x07;
// Task attributes (§11.3.1 ATTR)
export const ATTR_UNTAGGED = 0;
export const ATTR_SIMPLE = 1;
export const ATTR_ORDERED = 2;
export const ATTR_HEAD_OF_QUEUE = 3;
export const ATTR_ACA = 4;

// ---- SCSI Response flags, byte 1 (§11.4.1) and Response byte (§11.4.3) ----
export const RESP_BIDI_OVERFLOW = 0x10; // o
export const RESP_BIDI_UNDERFLOW = 0x08; // u
export const RESP_OVERFLOW = 0x04; // O
export const RESP_UNDERFLOW = 0x02; // U
export const RESPONSE_COMPLETED = 0x00;
export const RESPONSE_TARGET_FAILURE = 0x01;

// ---- SCSI Data-In flags, byte 1 (§11.7.1) ----
export const DATAIN_FINAL = 0x80;
export const DATAIN_ACK = 0x40; // A: only with ErrorRecoveryLevel > 0
export const DATAIN_OVERFLOW = 0x04; // O
export const DATAIN_UNDERFLOW = 0x02; // U
export const DATAIN_STATUS = 0x01; // S

// ---- Login / Text flags (§11.12.1, §11.10.1) ----
export const LOGIN_TRANSIT = 0x80; // T
export const LOGIN_CONTINUE = 0x40; // C
export const TEXT_FINAL = 0x80;
export const TEXT_CONTINUE = 0x40;
/** Login stages for CSG/NSG (§11.12.3). 2 is reserved. */
export const STAGE_SECURITY = 0;
export const STAGE_OPERATIONAL = 1;
export const STAGE_FULL_FEATURE = 3;
/** The only version (§11.12.4). */
export const ISCSI_VERSION = 0x00;

// ---- Login Response Status-Class / Status-Detail (§11.13.5) ----
export const LOGIN_CLASS_SUCCESS = 0x00;
export const LOGIN_CLASS_REDIRECT = 0x01;
export const LOGIN_CLASS_INITIATOR_ERROR = 0x02;
export const LOGIN_CLASS_TARGET_ERROR = 0x03;
// class 1
export const LOGIN_REDIRECT_TEMPORARY = 0x01;
export const LOGIN_REDIRECT_PERMANENT = 0x02;
// class 2
export const LOGIN_INIT_ERROR = 0x00;
export const LOGIN_AUTH_FAILED = 0x01;
export const LOGIN_AUTHORIZATION_FAILURE = 0x02;
export const LOGIN_NOT_FOUND = 0x03;
export const LOGIN_TARGET_REMOVED = 0x04;
export const LOGIN_UNSUPPORTED_VERSION = 0x05;
export const LOGIN_TOO_MANY_CONNECTIONS = 0x06;
export const LOGIN_MISSING_PARAMETER = 0x07;
export const LOGIN_CANT_INCLUDE_IN_SESSION = 0x08;
export const LOGIN_SESSION_TYPE_NOT_SUPPORTED = 0x09;
export const LOGIN_SESSION_DOES_NOT_EXIST = 0x0a;
export const LOGIN_INVALID_DURING_LOGIN = 0x0b;
// class 3
export const LOGIN_TARGET_ERROR = 0x00;
export const LOGIN_SERVICE_UNAVAILABLE = 0x01;
export const LOGIN_OUT_OF_RESOURCES = 0x02;

// ---- Reject reasons (§11.17.1) ----
export const REJECT_DATA_DIGEST_ERROR = 0x02;
export const REJECT_SNACK_REJECT = 0x03;
export const REJECT_PROTOCOL_ERROR = 0x04;
export const REJECT_COMMAND_NOT_SUPPORTED = 0x05;
export const REJECT_IMMEDIATE_COMMAND = 0x06;
export const REJECT_TASK_IN_PROGRESS = 0x07;
export const REJECT_INVALID_DATA_ACK = 0x08;
export const REJECT_INVALID_PDU_FIELD = 0x09;
export const REJECT_LONG_OP = 0x0a;
export const REJECT_WAITING_FOR_LOGOUT = 0x0c;

// ---- Task Management functions (§11.5.1) and responses (§11.6.1) ----
export const TMF_FUNCTION_MASK = 0x7f;
export const TMF_ABORT_TASK = 1;
export const TMF_ABORT_TASK_SET = 2;
export const TMF_CLEAR_ACA = 3;
export const TMF_CLEAR_TASK_SET = 4;
export const TMF_LOGICAL_UNIT_RESET = 5;
export const TMF_TARGET_WARM_RESET = 6;
export const TMF_TARGET_COLD_RESET = 7;
export const TMF_TASK_REASSIGN = 8;
export const TMF_RSP_COMPLETE = 0;
export const TMF_RSP_NO_TASK = 1;
export const TMF_RSP_NO_LUN = 2;
export const TMF_RSP_TASK_ALLEGIANT = 3;
export const TMF_RSP_REASSIGN_UNSUPPORTED = 4;
export const TMF_RSP_NOT_SUPPORTED = 5;
export const TMF_RSP_AUTH_FAILED = 6;
export const TMF_RSP_REJECTED = 255;

// ---- Logout reason codes (§11.14.1) and responses (§11.15.1) ----
export const LOGOUT_REASON_MASK = 0x7f;
export const LOGOUT_CLOSE_SESSION = 0;
export const LOGOUT_CLOSE_CONNECTION = 1;
export const LOGOUT_REMOVE_FOR_RECOVERY = 2;
export const LOGOUT_RSP_SUCCESS = 0;
export const LOGOUT_RSP_CID_NOT_FOUND = 1;
export const LOGOUT_RSP_RECOVERY_UNSUPPORTED = 2;
export const LOGOUT_RSP_CLEANUP_FAILED = 3;

// ---- Asynchronous events (§11.9.1) ----
export const ASYNC_SCSI_EVENT = 0;
export const ASYNC_LOGOUT_REQUEST = 1;
export const ASYNC_CONNECTION_DROP = 2;
export const ASYNC_SESSION_DROP = 3;
export const ASYNC_NEGOTIATION_REQUEST = 4;
export const ASYNC_TASK_TERMINATION = 5;
export const ASYNC_VENDOR = 255;

// ---- SNACK types (§11.16.1); we run ErrorRecoveryLevel 0 and reject SNACKs ----
export const SNACK_TYPE_MASK = 0x0f;
export const SNACK_DATA_R2T = 0;
export const SNACK_STATUS = 1;
export const SNACK_DATA_ACK = 2;
export const SNACK_RDATA = 3;

/** Human name of an opcode for logs. */
export function opcodeName(op: number): string {
  return OPCODE_NAMES[op] ?? `opcode 0x${op.toString(16).padStart(2, '0')}`;
}

const OPCODE_NAMES: Record<number, string> = {
  [OP_NOP_OUT]: 'NOP-Out',
  [OP_SCSI_CMD]: 'SCSI Command',
  [OP_TASK_MGMT_REQ]: 'Task Management Request',
  [OP_LOGIN_REQ]: 'Login Request',
  [OP_TEXT_REQ]: 'Text Request',
  [OP_SCSI_DATA_OUT]: 'SCSI Data-Out',
  [OP_LOGOUT_REQ]: 'Logout Request',
  [OP_SNACK_REQ]: 'SNACK Request',
  [OP_NOP_IN]: 'NOP-In',
  [OP_SCSI_RESP]: 'SCSI Response',
  [OP_TASK_MGMT_RESP]: 'Task Management Response',
  [OP_LOGIN_RESP]: 'Login Response',
  [OP_TEXT_RESP]: 'Text Response',
  [OP_SCSI_DATA_IN]: 'SCSI Data-In',
  [OP_LOGOUT_RESP]: 'Logout Response',
  [OP_R2T]: 'R2T',
  [OP_ASYNC_MSG]: 'Async Message',
  [OP_REJECT]: 'Reject',
};
