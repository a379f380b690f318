/**
 * One status-error type for the whole contract: every refusal the array, the copy engine, the
 * tape library or the agent makes is a StatusError whose code is a gRPC status name and whose
 * message names the thing and the fix, fit to show to a person as is. Servers send it as that
 * gRPC status with the message as details (grpcStatusOf); clients turn a status back into the
 * same code (statusCodeOf). The narrower error classes (ArrayError, CopyError, TapeError,
 * AgentError) extend it, so a server needs one mapping, here.
 */
import * as grpc from '@grpc/grpc-js';

export const STATUS_CODES = [
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
] as const;
export type StatusCode = (typeof STATUS_CODES)[number];

export class StatusError extends Error {
  readonly code: StatusCode;
  constructor(code: StatusCode, message: string) {
    super(message);
    this.name = 'StatusError';
    this.code = code;
  }
}

/** The gRPC status of a code. */
export function grpcStatusOf(code: StatusCode): grpc.status {
  return grpc.status[code];
}

/** The code of a gRPC status (OK has none: UNKNOWN). */
export function statusCodeOf(status: grpc.status): StatusCode {
  const name = grpc.status[status] as string | undefined;
  return (STATUS_CODES as readonly string[]).includes(name ?? '') ? (name as StatusCode) : 'UNKNOWN';
}

/** A server's answer for a failed call: the error's own status, else INTERNAL (a bug). */
export function grpcStatusOfError(err: unknown): grpc.status {
  return err instanceof StatusError ? grpcStatusOf(err.code) : grpc.status.INTERNAL;
}

export type ApiErrorCode = StatusCode;

/** The error every ArrayClient call fails with. */
export class ApiError extends StatusError {
  constructor(code: ApiErrorCode, message: string) {
    super(code, message);
    this.name = 'ApiError';
  }
}

/** Codes of the agent's refusals (AgentService, the guest protocol). */
export type AgentErrorCode =
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'ABORTED'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'INTERNAL';

/** A refusal of the host agent; the message names the volume and the fix. */
export class AgentError extends StatusError {
  declare readonly code: AgentErrorCode;
  constructor(code: AgentErrorCode, message: string) {
    super(code, message);
    this.name = 'AgentError';
  }
}
