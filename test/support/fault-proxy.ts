// A TCP proxy that puts upstream faults between two of our processes, on demand: latency, a
// blackhole, a reset before the response or after its headers, a 5xx storm, flapping, refusal;
// and, between a service and its database, a reset at a given command or of every connection.
// It works on bytes, not HTTP objects, so what the caller sees is what a real network or a dying
// process would show it.
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

export type Fault =
  /** Bytes pass unchanged. */
  | { kind: 'pass' }
  /**
   * Every chunk, both ways, waits this long. With `matching`, only the chunks from callers that
   * hold this text wait (a link, or a server, slow for one kind of command only); what follows
   * them on the same connection waits behind them, so bytes never pass each other.
   */
  | { kind: 'latency'; ms: number; matching?: string }
  /** Connections are accepted and requests read, but nothing ever comes back. */
  | { kind: 'blackhole' }
  /**
   * The connection (a new one, or one already open) is reset as soon as a request starts to
   * arrive: nothing reaches the service. With `times`, only the next that many requests; then bytes pass.
   */
  | { kind: 'reset-before-response'; times?: number }
  /** The service's response headers (and any body bytes in the same chunk) pass, then both sides are reset. */
  | { kind: 'reset-after-headers' }
  /** Every request is answered here with this status (a 5xx storm); the service is not asked. */
  | { kind: 'status'; status: number }
  /** Passes for `upMs`, then for `downMs` resets new connections at once and old ones at their next byte; and again. */
  | { kind: 'flap'; upMs: number; downMs: number }
  /**
   * Resets a connection where a chunk from the caller holds `matching` (a command of a protocol:
   * a database's BEGIN or COMMIT, or the text of a PostgreSQL statement the chunk executes, named
   * or not): `request`, before that chunk passes (the command never
   * arrives); `answer`, once it passed and its answer came back, which is dropped (done, and the
   * caller never hears so); `next`, at the caller's next chunk on that connection, which is
   * dropped (the command and its answer pass; what follows, inside a transaction just begun, is
   * lost). The first `skip` matches pass; then `times` resets (counted down), then bytes pass.
   */
  | { kind: 'reset-on-text'; matching: string; at: 'request' | 'answer' | 'next'; times: number; skip?: number };

export interface FaultProxy {
  url: string;
  port: number;
  /** Where connections are forwarded: `http://host:port`. May change at any time (a restarted service). */
  target: string;
  fault: Fault;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** HTTP/1.1 request lines that arrived from callers so far, whatever the fault then did with them. */
  readonly requestsSeen: number;
  /** Resets every open connection (a failover, a pooler's restart); new ones are taken as before. */
  resetAll(): void;
  /** Stops listening and resets every connection: callers now get connection refused. */
  stop(): Promise<void>;
  /** Listens again on the same port. */
  start(): Promise<void>;
  close(): Promise<void>;
}

const HEADER_END = Buffer.from('\r\n\r\n');
const REQUEST_LINE_END = Buffer.from(' HTTP/1.1\r\n');

export async function startFaultProxy(target = '', fault: Fault = { kind: 'pass' }): Promise<FaultProxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  let accepted = 0;
  let requestsSeen = 0;
  let flapSince = Date.now();

  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // A peer's reset must not throw.
    socket.on('error', () => undefined);
  };
  const reset = (socket: Socket) => {
    if (socket.destroyed) return;
    // A socket still connecting would keep its handle until the connection completes (to send
    // the RST then): destroy it now, so nothing outlives the proxy.
    if (socket.connecting) socket.destroy();
    else socket.resetAndDestroy();
  };

  /** Whether a request arriving now is to be reset (and counts it against `times`). */
  const resetsNow = (): boolean => {
    const f = proxy.fault;
    if (f.kind !== 'reset-before-response') return false;
    if (f.times === undefined) return true;
    if (f.times <= 0) return false;
    f.times--;
    return true;
  };
  const storm = (client: Socket, status: number) => {
    const body = JSON.stringify({ error: 'fault proxy storm', code: 'INTERNAL_ERROR' });
    client.end(`HTTP/1.1 ${status} Storm\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  };
  const flapIsDown = (f: Extract<Fault, { kind: 'flap' }>) => (Date.now() - flapSince) % (f.upMs + f.downMs) >= f.upMs;
  /** The moment a chunk from a caller arms a reset at, if it is one (and counts it). */
  const textReset = (chunk: Buffer, statements: readonly string[]): 'request' | 'answer' | 'next' | undefined => {
    const f = proxy.fault;
    if (f.kind !== 'reset-on-text' || f.times <= 0 || !(chunk.includes(f.matching) || statements.some((t) => t.includes(f.matching)))) return undefined;
    if (f.skip) {
      f.skip--;
      return undefined;
    }
    f.times--;
    return f.at;
  };

  const onConnection = (client: Socket) => {
    accepted++;
    track(client);
    const f = proxy.fault;
    if (f.kind === 'flap' && flapIsDown(f)) return reset(client);
    if (f.kind === 'blackhole') {
      client.resume();
      return;
    }
    if (f.kind === 'status') {
      client.on('data', () => storm(client, f.status));
      return;
    }
    const { hostname, port: targetPort } = new URL(proxy.target);
    const upstream = connect(Number(targetPort), hostname);
    track(upstream);
    const statements = postgresStatements();
    // A reset-on-text armed on this connection, waiting for its moment.
    let armed: 'answer' | 'next' | undefined;
    const cut = () => {
      reset(client);
      reset(upstream);
    };
    // Faults other than the connection's own are read at each chunk: a pooled connection meets
    // the fault of the moment too.
    const relay = (from: Socket, to: Socket, onChunk?: (chunk: Buffer) => boolean) => {
      // Chunks held back, each with the time it may go; in order, so none passes another.
      const held: Array<{ at: number; chunk: Buffer }> = [];
      let timer: NodeJS.Timeout | undefined;
      let ended = false;
      const flush = () => {
        timer = undefined;
        const now = Date.now();
        while (held.length && held[0].at <= now) {
          const { chunk } = held.shift()!;
          if (!to.destroyed) to.write(chunk);
        }
        if (held.length) timer = setTimeout(flush, held[0].at - now);
        else if (ended) to.end();
      };
      const send = (chunk: Buffer, delay: number) => {
        if (!held.length && delay <= 0) {
          if (!to.destroyed) to.write(chunk);
          return;
        }
        held.push({ at: Math.max(Date.now() + delay, held.length ? held[held.length - 1].at : 0), chunk });
        timer ??= setTimeout(flush, Math.max(0, held[0].at - Date.now()));
      };
      from.on('data', (chunk: Buffer) => {
        const now = proxy.fault;
        if ((now.kind === 'flap' && flapIsDown(now)) || (from === client && resetsNow())) return cut();
        if (from === client && armed === 'next') return cut();
        if (from === upstream && armed === 'answer') return cut();
        if (from === client) {
          const at = textReset(chunk, statements.read(chunk));
          if (at === 'request') return cut();
          if (at) armed = at;
        }
        if (from === client && now.kind === 'blackhole') return;
        if (from === client && now.kind === 'status') return storm(client, now.status);
        if (onChunk && !onChunk(chunk)) return;
        const delayed = now.kind === 'latency' && (now.matching === undefined || (from === client && chunk.includes(now.matching)));
        send(chunk, delayed ? now.ms : 0);
      });
      // The end follows the last held chunk, as it would on a slow link.
      from.once('end', () => {
        ended = true;
        if (!held.length) to.end();
      });
      from.once('close', () => setTimeout(() => to.destroyed || to.destroy(), proxy.fault.kind === 'latency' ? proxy.fault.ms : 0));
    };
    client.on('data', (chunk: Buffer) => {
      for (let at = chunk.indexOf(REQUEST_LINE_END); at !== -1; at = chunk.indexOf(REQUEST_LINE_END, at + 1)) requestsSeen++;
    });
    relay(client, upstream);
    if (f.kind === 'reset-after-headers') {
      let seen = Buffer.alloc(0);
      let cut = false;
      relay(upstream, client, (chunk) => {
        if (cut) return false;
        seen = Buffer.concat([seen, chunk]);
        const end = seen.indexOf(HEADER_END);
        if (end === -1) return true;
        // The headers and at most one byte of body, then the line goes dead.
        cut = true;
        client.write(seen.subarray(seen.length - chunk.length, end + HEADER_END.length + 1), () => {
          reset(client);
          reset(upstream);
        });
        return false;
      });
    } else {
      relay(upstream, client);
    }
    upstream.once('error', () => reset(client));
  };

  const proxy: FaultProxy = {
    url: '',
    port: 0,
    target,
    fault,
    get accepted() {
      return accepted;
    },
    get requestsSeen() {
      return requestsSeen;
    },
    resetAll: () => {
      for (const socket of sockets) reset(socket);
    },
    stop: async () => {
      const s = server;
      server = undefined;
      if (!s) return;
      for (const socket of sockets) reset(socket);
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    start: async () => {
      if (server) return;
      const s = createServer(onConnection);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(port, '127.0.0.1', () => resolve());
      });
      server = s;
      port = (s.address() as AddressInfo).port;
      proxy.port = port;
      proxy.url = `http://127.0.0.1:${port}`;
      flapSince = Date.now();
    },
    close: () => proxy.stop(),
  };
  await proxy.start();
  return proxy;
}

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

/**
 * PostgreSQL's messages from a client, framed, for a reset-on-text: a named statement is parsed
 * once per connection and later executed by its name alone, so its text is not in those chunks.
 * `read` gives the texts a chunk parses, binds or sends as a simple query. On bytes that are not
 * PostgreSQL's (an HTTP connection) it stops at the first message that cannot be one.
 */
function postgresStatements(): { read(chunk: Buffer): string[] } {
  const texts = new Map<string, string>();
  let pending: Buffer = Buffer.alloc(0);
  let started = false;
  let off = false;
  const cString = (body: Buffer, from: number): [string, number] => {
    const end = body.indexOf(0, from);
    return end === -1 ? ['', body.length] : [body.toString('utf8', from, end), end + 1];
  };
  return {
    read(chunk) {
      if (off) return [];
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      const seen: string[] = [];
      let at = 0;
      while (!off) {
        if (!started) {
          if (pending.length - at < 8) break;
          const len = pending.readInt32BE(at);
          if (len < 8 || len > 10_000) off = true;
          else if (pending.length - at < len) break;
          else {
            const code = pending.readInt32BE(at + 4);
            // An SSL or GSS request is answered with one byte; the startup message follows it.
            if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) started = true;
            at += len;
          }
          continue;
        }
        if (pending.length - at < 5) break;
        const type = pending[at];
        const len = pending.readInt32BE(at + 1);
        if (len < 4 || len > 64 * 1024 * 1024) {
          off = true;
          break;
        }
        if (pending.length - at < 1 + len) break;
        const body = pending.subarray(at + 5, at + 1 + len);
        if (type === 0x50 /* Parse */) {
          const [name, next] = cString(body, 0);
          const [text] = cString(body, next);
          if (name) texts.set(name, text);
          seen.push(text);
        } else if (type === 0x42 /* Bind */) {
          const [, next] = cString(body, 0);
          const text = texts.get(cString(body, next)[0]);
          if (text !== undefined) seen.push(text);
        } else if (type === 0x51 /* Query */) seen.push(cString(body, 0)[0]);
        at += 1 + len;
      }
      pending = off ? Buffer.alloc(0) : pending.subarray(at);
      return seen;
    },
  };
}
