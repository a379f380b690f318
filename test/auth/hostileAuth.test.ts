/**
 * Hostile credentials at the real `arraylab serve`'s control API, sent with a raw HTTP/2
 * client (a gRPC library would refuse to send most of them). What users rely on: whatever a
 * client puts in the authorization header, the array refuses it and goes on serving; a peer
 * that keeps failing is slowed down (RESOURCE_EXHAUSTED, saying how long to wait) and let in
 * again with a good token once the wait is over.
 */
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Arraylab, cliOk, loggedErrors, startArraylab } from '../support/arraylab.js';
import { readAdminToken } from '../../emulator/auth/adminCredential.js';
import { sleep } from '../support/wait.js';

let lab: Arraylab;

beforeAll(async () => {
  lab = await startArraylab();
});
afterAll(async () => {
  await lab?.stop();
});

interface RawResult {
  /** grpc-status as a number, when the server answered the call. */
  status?: number;
  message?: string;
  /** How the stream or session failed instead, when it did. */
  failure?: string;
}

/** One ListVolumes call on a fresh HTTP/2 connection, with this authorization header value (latin1 bytes). */
function rawCall(authorization: string | undefined): Promise<RawResult> {
  return new Promise((resolve) => {
    const session = http2.connect(`http://127.0.0.1:${lab.apiPort}`, { maxSendHeaderBlockLength: 4 * 2 ** 20 });
    const out: RawResult = {};
    session.on('error', (e: NodeJS.ErrnoException) => {
      out.failure ??= e.code ?? e.message;
    });
    const headers: http2.OutgoingHttpHeaders = {
      ':method': 'POST',
      ':path': '/arraylab.v1.ArrayService/ListVolumes',
      'content-type': 'application/grpc',
      te: 'trailers',
    };
    if (authorization !== undefined) headers.authorization = authorization;
    const req = session.request(headers);
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) {
        out.status = Number(h['grpc-status']);
        out.message = decodeURIComponent(String(h['grpc-message'] ?? ''));
      }
    };
    req.on('response', take);
    req.on('trailers', take);
    req.on('data', () => undefined);
    req.on('error', (e: NodeJS.ErrnoException) => {
      out.failure ??= e.code ?? e.message;
    });
    req.on('close', () => {
      session.destroy();
      resolve(out);
    });
    // An empty ListVolumesRequest: no compression, length 0.
    req.end(Buffer.alloc(5));
  });
}

const UNAUTHENTICATED = 16;
const RESOURCE_EXHAUSTED = 8;
const OK = 0;

describe('hostile authorization headers', () => {
  it('are refused, and the array answers a good call afterwards', async () => {
    const token = readAdminToken(lab.dataDir!);
    // A sane call first: the raw client speaks gRPC well enough to be let in.
    expect(await rawCall(`Bearer ${token}`)).toMatchObject({ status: OK });

    // 1 MiB of header: refused one way or another (the HTTP/2 layer drops it), never served.
    const huge = await rawCall(`Bearer ${'A'.repeat(2 ** 20)}`);
    expect(huge.status === OK).toBe(false);
    expect(huge.status ?? huge.failure).toBeDefined();

    // Bytes that are not ASCII: not a credential.
    const binary = await rawCall(Buffer.from([0x42, 0x65, 0x61, 0x72, 0x65, 0x72, 0x20, 0xff, 0xfe, 0xc3, 0xa9, 0x80, 0x00]).toString('latin1'));
    expect(binary.status === OK).toBe(false);
    const notAscii = await rawCall(`Bearer ${token.slice(0, 10)}\u00e9${token.slice(10)}`);
    expect(notAscii.status === OK).toBe(false);

    // "Bearer" and nothing else: told the form.
    expect(await rawCall('Bearer')).toMatchObject({ status: UNAUTHENTICATED, message: expect.stringMatching(/must be "Bearer TOKEN"/) });
    // A scheme it does not know.
    expect(await rawCall(`Basic ${Buffer.from(`admin:${token}`).toString('base64')}`)).toMatchObject({ status: UNAUTHENTICATED });

    // Still serving, for a raw client and for the CLI.
    expect(await rawCall(`Bearer ${token}`)).toMatchObject({ status: OK });
    expect(await cliOk(lab, ['volume', 'list'])).toMatch(/demo/);
    expect(loggedErrors(lab)).toEqual([]);
  });

  it('slows down a peer that keeps failing, then lets a good token in after the wait', async () => {
    const token = readAdminToken(lab.dataDir!);
    const results: RawResult[] = [];
    for (let i = 0; i < 15; i++) results.push(await rawCall(`Bearer alab_not-a-token-${i}`));
    const firstBlocked = results.findIndex((r) => r.status === RESOURCE_EXHAUSTED);
    // At most 10 failures in a minute, then refused outright.
    expect(firstBlocked, JSON.stringify(results.map((r) => r.status))).toBeGreaterThanOrEqual(0);
    expect(firstBlocked).toBeLessThanOrEqual(10);
    // A few typos do not lock a user out.
    expect(firstBlocked).toBeGreaterThanOrEqual(5);
    expect(results.slice(0, firstBlocked).every((r) => r.status === UNAUTHENTICATED)).toBe(true);
    expect(results.slice(firstBlocked).every((r) => r.status === RESOURCE_EXHAUSTED)).toBe(true);
    const blocked = results[firstBlocked]!;
    expect(blocked.message).toMatch(/too many failed authentications from 127\.0\.0\.1; wait \d+ s, then retry with a valid token/);

    // While blocked, even a good token waits (the peer is what is slowed down)...
    const during = await rawCall(`Bearer ${token}`);
    expect(during.status).toBe(RESOURCE_EXHAUSTED);
    // ...and after the wait it names, it is let in, and the slate is clean.
    const wait = Number(/wait (\d+) s/.exec(during.message ?? '')?.[1]);
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(60);
    await sleep(wait * 1000 + 200);
    expect(await rawCall(`Bearer ${token}`)).toMatchObject({ status: OK });
    expect(await rawCall('Bearer alab_still-wrong')).toMatchObject({ status: UNAUTHENTICATED });
    expect(await cliOk(lab, ['volume', 'list'])).toMatch(/demo/);
    expect(loggedErrors(lab)).toEqual([]);
  });
});
