/**
 * grpc-js names the TLS server by the address it dials; for an IP address (127.0.0.1) Node warns
 * DEP0123 on every TLS connection, on stderr, where a CLI's output is one line of error or none.
 * The certificate is still checked against the address (its subjectAltName IP), so the warning
 * says nothing to act on: drop that one, keep every other.
 */
export function quietTlsIpWarning(): void {
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: unknown, ...rest: unknown[]) => {
    const opt = rest[0];
    const code = typeof opt === 'object' && opt !== null ? (opt as { code?: unknown }).code : rest[1];
    if (code === 'DEP0123') return;
    emit(warning, ...rest);
  }) as typeof process.emitWarning;
}
