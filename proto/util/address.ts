/**
 * HOST:PORT addresses for listeners and for the client. Kept apart from config.ts so the CLI's
 * client commands can parse --api without loading the YAML parser.
 */
export interface HostPort {
  host: string;
  port: number;
}

export const DEFAULT_API_ADDRESS: HostPort = { host: '127.0.0.1', port: 7390 };

/** Parses "HOST:PORT", "[::1]:PORT" or ":PORT" (all interfaces); port 0 asks for any free port. */
export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`${JSON.stringify(text)} is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)`);
  }
  const host = m[1] ?? (m[2] || '0.0.0.0');
  return { host, port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A loopback host: localhost, ::1 or 127.x.y.z (only this machine reaches it). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
