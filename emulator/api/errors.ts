/** The error every ArrayClient call fails with; its message is fit to show to a person as is. */
import type { ArrayErrorCode } from '../array/types.js';

export type ApiErrorCode = ArrayErrorCode | 'UNAVAILABLE' | 'DEADLINE_EXCEEDED' | 'UNKNOWN' | 'DATA_LOSS';

export class ApiError extends Error {
  readonly code: ApiErrorCode;
  constructor(code: ApiErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
  }
}
