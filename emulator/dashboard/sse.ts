/**
 * Server-Sent Events for the dashboard's pages: `event: array` relays each array event (one
 * WatchEvents subscription per login session, shared by its tabs, made with the session's own
 * client so a tenant's user gets only its tenant's events), and `event: tick` every second so
 * pages refresh progress that no event announces. The tick is the heartbeat too: a proxy or a
 * dead peer shows within a second.
 *
 * Bounded: at most MAX_SUBSCRIBERS open streams in all (the server answers 503 past it), and a
 * subscriber that does not read (its buffer past MAX_BUFFERED bytes) is cut off.
 */
import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import type { ArrayEventView } from '../../proto/views.js';

export const MAX_SUBSCRIBERS = 64;
export const TICK_MS = 1000;
const MAX_BUFFERED = 256 * 1024;
const TICK = 'event: tick\ndata: {}\n\n';

/** The subscribers of one WatchEvents stream: a login session's, or (auth off) everyone's. */
class Feed {
  readonly subscribers = new Set<ServerResponse>();
  private watch: { cancel: () => void } | undefined;

  constructor(
    readonly key: string,
    private readonly client: ArrayClient,
    private readonly broker: SseBroker,
  ) {}

  open(): void {
    // Only what happens from now: the page loads the current state itself.
    const w = this.client.watchEvents({ sinceTime: new Date(), follow: true }, (e: ArrayEventView) => {
      this.broker.send(this.subscribers, `event: array\ndata: ${JSON.stringify(e)}\n\n`);
    });
    this.watch = w;
    w.done.then(
      () => this.broker.endFeed(this, undefined),
      (err: ApiError) => this.broker.endFeed(this, err),
    );
  }

  cancel(): void {
    const w = this.watch;
    this.watch = undefined;
    w?.cancel();
  }
}

export class SseBroker {
  private readonly feeds = new Map<string, Feed>();
  private count = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly max = MAX_SUBSCRIBERS,
  ) {}

  get subscribers(): number {
    return this.count;
  }

  get full(): boolean {
    return this.count >= this.max;
  }

  /**
   * Streams to `res` until the client goes or the feed ends. `key` groups subscribers on one
   * WatchEvents call made with `client` (the first subscriber's).
   */
  subscribe(key: string, client: ArrayClient, res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.socket?.setTimeout(0);
    res.write('retry: 3000\n\n');
    let feed = this.feeds.get(key);
    const fresh = feed === undefined;
    if (feed === undefined) {
      feed = new Feed(key, client, this);
      this.feeds.set(key, feed);
    }
    feed.subscribers.add(res);
    this.count++;
    const f = feed;
    res.on('close', () => this.unsubscribe(f, res));
    if (fresh) f.open();
    this.timer ??= setInterval(() => this.tick(), TICK_MS).unref();
  }

  /** Writes to each subscriber; one that stopped reading is dropped. */
  send(to: Iterable<ServerResponse>, text: string): void {
    for (const res of to) {
      if (res.writableEnded || res.destroyed) continue;
      res.write(text);
      if (res.writableLength > MAX_BUFFERED) {
        this.log.warn({ buffered: res.writableLength }, 'dashboard event stream subscriber is not reading; dropping it');
        res.destroy();
      }
    }
  }

  /** The feed's WatchEvents ended: with the events off, ticks go on; otherwise its streams end. */
  endFeed(feed: Feed, err: ApiError | undefined): void {
    if (this.feeds.get(feed.key) !== feed) return;
    if (err?.code === 'FAILED_PRECONDITION') {
      this.send(feed.subscribers, `event: notice\ndata: ${JSON.stringify({ error: err.message })}\n\n`);
      return;
    }
    if (err !== undefined) this.log.info({ err: err.message }, 'dashboard event feed ended');
    this.feeds.delete(feed.key);
    for (const res of feed.subscribers) {
      if (err !== undefined && !res.writableEnded) res.write(`event: notice\ndata: ${JSON.stringify({ error: err.message })}\n\n`);
      res.end();
    }
  }

  /** Ends the streams of one feed (a logout). */
  drop(key: string): void {
    const feed = this.feeds.get(key);
    if (feed === undefined) return;
    this.feeds.delete(key);
    feed.cancel();
    for (const res of feed.subscribers) res.end();
  }

  closeAll(): void {
    for (const key of [...this.feeds.keys()]) this.drop(key);
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private unsubscribe(feed: Feed, res: ServerResponse): void {
    if (!feed.subscribers.delete(res)) return;
    this.count--;
    if (feed.subscribers.size === 0) {
      if (this.feeds.get(feed.key) === feed) this.feeds.delete(feed.key);
      feed.cancel();
    }
    if (this.count === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  private tick(): void {
    for (const feed of this.feeds.values()) this.send(feed.subscribers, TICK);
  }
}
