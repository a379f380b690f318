/**
 * The role matrix, over every method of every service the array serves: each role's call is
 * let through (any answer but PERMISSION_DENIED/UNAUTHENTICATED) or refused (PERMISSION_DENIED)
 * exactly as emulator/auth/permissions.ts says, and every call that may change state leaves an
 * audit entry. A method without a row in the table fails the first test.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { METHOD_PERMISSIONS, READ_ONLY, ROLE_PERMISSIONS, ROLES, type Role } from '../../../emulator/auth/permissions.js';
import { parseConfig } from '../../../emulator/config.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import {
  accessServiceDefinition,
  arrayServiceDefinition,
  eventServiceDefinition,
  copyServiceDefinition,
  faultServiceDefinition,
  hostAffinityServiceDefinition,
  remoteCopyServiceDefinition,
  remoteServiceDefinition,
  tapeServiceDefinition,
} from '../../../proto/loader.js';
import { readAdminToken } from '../../../emulator/auth/adminCredential.js';

const SERVICES = {
  ArrayService: arrayServiceDefinition,
  CopyService: copyServiceDefinition,
  HostAffinityService: hostAffinityServiceDefinition,
  TapeService: tapeServiceDefinition,
  FaultService: faultServiceDefinition,
  RemoteService: remoteServiceDefinition,
  RemoteCopyService: remoteCopyServiceDefinition,
  AccessService: accessServiceDefinition,
  EventService: eventServiceDefinition,
};

interface Method {
  path: string;
  def: grpc.MethodDefinition<unknown, unknown>;
}

const methods: Method[] = Object.values(SERVICES).flatMap((d) => Object.values(d()).map((def) => ({ path: def.path, def })));

let server: ArrayServer;
let address: string;
let dataDir: string;
const tokens = new Map<Role, string>();

/** One call with an empty request; resolves with the status code name (OK for a stream that ran). */
function callEmpty(m: Method, token: string | undefined): Promise<{ code: string; details: string }> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  const done = (err: grpc.ServiceError | null) => {
    client.close();
    return { code: err ? grpc.status[err.code] : 'OK', details: err?.details ?? '' };
  };
  return new Promise((resolve) => {
    if (!m.def.responseStream) {
      client.makeUnaryRequest(m.path, m.def.requestSerialize, m.def.responseDeserialize, {}, md, { deadline: Date.now() + 5000 }, (err) => resolve(done(err)));
      return;
    }
    const stream = client.makeServerStreamRequest(m.path, m.def.requestSerialize, m.def.responseDeserialize, {}, md, {});
    // A stream the guard let through runs until cancelled; one it refused ends with the status.
    const timer = setTimeout(() => {
      stream.cancel();
      resolve(done(null));
    }, 400);
    stream.on('data', () => undefined);
    stream.on('error', (err: grpc.ServiceError) => {
      clearTimeout(timer);
      if (err.code !== grpc.status.CANCELLED) resolve(done(err));
    });
    stream.on('end', () => {
      clearTimeout(timer);
      resolve(done(null));
    });
  });
}

beforeAll(async () => {
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  dataDir = mkdtempSync(join(tmpdir(), 'arraylab-roles-'));
  const config = parseConfig(`dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [{name: v1, size: 4MiB}]\n`, 'test', '/tmp');
  server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  const addrs = await server.start();
  address = `127.0.0.1:${addrs.api.port}`;
  const admin = new ArrayClient(address, { token: readAdminToken(dataDir) });
  try {
    for (const role of ROLES) {
      if (role === 'admin') tokens.set(role, readAdminToken(dataDir));
      else tokens.set(role, (await admin.addUser({ name: `u-${role}`, role })).token);
    }
  } finally {
    admin.close();
  }
});

afterAll(async () => {
  await server?.stop();
  const { rmSync } = await import('node:fs');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe('the role matrix', () => {
  it('has exactly one permission for every method the array serves, and no row for a method it does not', () => {
    const served = new Set(methods.map((m) => m.path));
    expect(methods.filter((m) => !METHOD_PERMISSIONS.has(m.path)).map((m) => m.path)).toEqual([]);
    expect([...METHOD_PERMISSIONS.keys()].filter((p) => !served.has(p))).toEqual([]);
  });

  it.each(ROLES.map((r) => [r]))('lets %s call what its role allows and refuses the rest', async (role) => {
    const token = tokens.get(role)!;
    const wrong: string[] = [];
    for (const m of methods) {
      const allowed = ROLE_PERMISSIONS[role].has(METHOD_PERMISSIONS.get(m.path)!);
      const r = await callEmpty(m, token);
      const refused = r.code === 'PERMISSION_DENIED' && /may not call/.test(r.details);
      if (r.code === 'UNAUTHENTICATED' || allowed === refused) wrong.push(`${m.path}: ${allowed ? 'allowed' : 'refused'} but got ${r.code} ${r.details}`);
    }
    expect(wrong).toEqual([]);
  });

  it('has recorded every state-changing method in the audit log, and no read-only one', async () => {
    const admin = new ArrayClient(address, { token: tokens.get('admin')! });
    try {
      const entries = await admin.listAudit({ limit: 10_000 });
      const audited = new Set(entries.map((e) => `/${e.rpc}`));
      const mutating = methods.filter((m) => !READ_ONLY.has(METHOD_PERMISSIONS.get(m.path)!)).map((m) => m.path);
      expect(mutating.filter((p) => !audited.has(p))).toEqual([]);
      expect([...audited].filter((p) => READ_ONLY.has(METHOD_PERMISSIONS.get(p)!))).toEqual([]);
      // A refused call is recorded with who tried and why.
      const refused = entries.find((e) => e.user === 'u-monitor' && e.rpc === 'arraylab.v1.ArrayService/CreateVolume');
      expect(refused).toMatchObject({ result: expect.stringMatching(/^PERMISSION_DENIED: user u-monitor \(role monitor\) may not call CreateVolume/) });
      expect(refused!.peer).toMatch(/127\.0\.0\.1/);
    } finally {
      admin.close();
    }
  });
  // Last: its failures get the peer (127.0.0.1) throttled.
  it('refuses every method without a credential, and with a wrong token, as UNAUTHENTICATED; then throttles the peer', async () => {
    for (const m of methods.slice(0, 5)) {
      const none = await callEmpty(m, undefined);
      expect(none.code, m.path).toBe('UNAUTHENTICATED');
      expect(none.details).toMatch(/needs a credential: pass --token-file FILE or set ARRAYLAB_TOKEN/);
      const wrong = await callEmpty(m, 'alab_not-a-token');
      expect(wrong.code, m.path).toBe('UNAUTHENTICATED');
      expect(wrong.details).toMatch(/not valid on this array/);
    }
    // Ten failures in a minute: the peer waits, even with a good token, and is then let in again.
    const m = methods.find((x) => x.path === '/arraylab.v1.ArrayService/GetStatus')!;
    const blocked = await callEmpty(m, tokens.get('admin'));
    expect(blocked.code).toBe('RESOURCE_EXHAUSTED');
    expect(blocked.details).toMatch(/too many failed authentications from 127\.0\.0\.1; wait 1 s/);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await callEmpty(m, tokens.get('admin'))).code).toBe('OK');
  });
});
