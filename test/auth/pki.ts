/**
 * Test certificates made with the real openssl in a temp dir: a CA, a server certificate for
 * 127.0.0.1 and localhost (subjectAltName, as a TLS client checks it), and client certificates
 * signed by that CA or by another one.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

export interface Pem {
  cert: string;
  key: string;
}

export interface Pki {
  dir: string;
  ca: Pem;
  server: Pem;
  /** Makes a client certificate with this CN, signed by this CA (default: the array's). */
  client(cn: string, signer?: Pem): Pem;
  /** A CA of its own, which the array does not trust. */
  otherCa: Pem;
  /** openssl's SHA-256 fingerprint of a certificate, "AB:CD:..." */
  fingerprint(cert: string): string;
}

export function makePki(): Pki {
  const openssl = requireTool('openssl');
  const dir = makeTempDir('arraylab-pki-');
  const run = (args: string[]) => execFileSync(openssl, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  let serial = 1;
  const makeCa = (name: string, cn: string): Pem => {
    const p = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
    run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p.key, '-out', p.cert, '-days', '2', '-subj', `/CN=${cn}`]);
    return p;
  };
  const sign = (name: string, cn: string, signer: Pem, ext: string): Pem => {
    const p = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
    const csr = join(dir, `${name}.csr`);
    const extFile = join(dir, `${name}.ext`);
    writeFileSync(extFile, ext);
    run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p.key, '-out', csr, '-subj', `/CN=${cn}`]);
    run([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      signer.cert,
      '-CAkey',
      signer.key,
      '-set_serial',
      String(serial++),
      '-out',
      p.cert,
      '-days',
      '2',
      '-extfile',
      extFile,
    ]);
    return p;
  };
  const ca = makeCa('ca', 'arraylab test CA');
  const otherCa = makeCa('other-ca', 'another CA');
  const server = sign('server', 'localhost', ca, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  return {
    dir,
    ca,
    otherCa,
    server,
    client: (cn, signer = ca) => sign(`client-${cn}-${serial}`, cn, signer, 'extendedKeyUsage=clientAuth\n'),
    fingerprint: (cert) => run(['x509', '-noout', '-fingerprint', '-sha256', '-in', cert]).trim().replace(/^.*=/, ''),
  };
}
