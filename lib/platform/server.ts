// Listening and stopping, the same way for all four processes.
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { answerClientError, answerConnect, answerExpectation } from './errors.js';
import { expressServerClasses } from './http.js';

export interface Listening {
  server: Server;
  port: number;
  url: string;
}

/** An Express app behind a request listener that takes some requests itself and passes on the rest. */
export interface FrontedApp {
  app: Express;
  front: RequestListener;
}

/** Resolves once bound, with the port actually bound (tests pass 0). */
export function listen(target: Express | FrontedApp, port: number, host = '127.0.0.1'): Promise<Listening> {
  return new Promise((resolve, reject) => {
    // Made with Express's request and response classes, so that the front's requests need no set-up.
    // Node checks headersTimeout and requestTimeout every connectionsCheckingInterval (30 s by
    // default): a slow client would get up to twice its time. Every second keeps it to one more.
    const options = { connectionsCheckingInterval: 1000 };
    // The gateway checks Host itself (front-door.ts), to answer a missing one in the contract's shape.
    const server = 'front' in target
      ? createServer({ ...expressServerClasses(target.app), ...options, requireHostHeader: false }, target.front)
      : createServer(options, target);
    server.on('clientError', answerClientError);
    server.on('connect', answerConnect);
    server.on('checkExpectation', answerExpectation);
    server.listen(port, host);
    // Longer than any client's idle keep-alive (the gateway's agent uses 30 s), so a client
    // never reuses a socket we are about to close (that shows up as ECONNRESET).
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 15_000;
    server.requestTimeout = 60_000;
    trackConnections(server);
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      const { port: bound } = server.address() as AddressInfo;
      resolve({ server, port: bound, url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}` });
    });
  });
}

/** Open connections of the servers made by `listen`, for the drain. */
const connections = new WeakMap<Server, Set<Socket>>();

function trackConnections(server: Server): void {
  const open = new Set<Socket>();
  connections.set(server, open);
  server.on('connection', (socket: Socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
}

/** The response a connection is writing now (Node's own field; what closeIdleConnections reads too). */
const responseOn = (socket: Socket): ServerResponse | null | undefined => (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;

/**
 * Connections on which no request has begun to arrive, as Node's own parser bookkeeping knows them
 * (what closeIdleConnections reads; not public, so undefined if a Node version lacks it).
 */
function parserIdle(server: Server): Set<Socket> | undefined {
  const key = Object.getOwnPropertySymbols(server).find((k) => k.description === 'http.server.connections');
  const list = key === undefined ? undefined : (server as unknown as Record<symbol, { idle?: () => { socket: Socket }[] }>)[key];
  if (typeof list?.idle !== 'function') return undefined;
  return new Set(list.idle().map((parser) => parser.socket));
}

// Shared listener (no closure per request): while draining, every answer closes its connection.
function closeAfterResponse(_req: IncomingMessage, res: ServerResponse): void {
  if (!res.headersSent) res.setHeader('Connection', 'close');
}

/**
 * Drains like Envoy: stops accepting; every response from now on (and every one in progress whose
 * headers are not out yet) says `Connection: close`, so each keep-alive connection closes right
 * after its current response and no client sends another request on it. A connection left idle
 * by an earlier keep-alive answer is closed only once it has stayed idle, with not a byte of a new
 * request read, for `idleGraceMs` (checked every `timeoutMs / 40`, 10..250 ms): closing an idle
 * connection always races a client that is sending on it (its request is lost, and it sees a
 * reset), so a client that is merely slow to send its next request gets it answered (with
 * `close`) instead. A connection on which a request has begun to arrive is never closed here.
 * After `timeoutMs` whatever is left is cut.
 */
export function closeServer(server: Server, timeoutMs = 10_000, idleGraceMs = 0): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    const open = connections.get(server);
    const timer = setTimeout(() => server.closeAllConnections(), timeoutMs);
    timer.unref();
    server.prependListener('request', closeAfterResponse);
    const sweepMs = Math.min(250, Math.max(10, Math.round(timeoutMs / 40)));
    const graceMs = Math.max(sweepMs, idleGraceMs);
    // Each connection found idle: its bytesRead then, and since when it has read nothing more.
    const idleSince = new Map<Socket, { bytesRead: number; at: number }>();
    const sweep = () => {
      if (!open) return server.closeIdleConnections();
      const notParsing = parserIdle(server);
      const now = Date.now();
      for (const socket of open) {
        const res = responseOn(socket);
        if (res) {
          closeAfterResponse(res.req, res);
          idleSince.delete(socket);
          continue;
        }
        if (socket.writableEnded) continue;
        // No request under way (Node counts a connection that never sent a byte as busy: it is
        // not, for us).
        const idle = notParsing === undefined || notParsing.has(socket) || socket.bytesRead === 0;
        const seen = idleSince.get(socket);
        if (!idle || seen?.bytesRead !== socket.bytesRead) {
          idleSince.set(socket, { bytesRead: socket.bytesRead, at: now });
        } else if (now - seen.at >= graceMs - 1) {
          // (- 1: the sweeps are graceMs apart by the timer's clock; Date.now may say 1 ms less.)
          socket.end();
          // A client that never reads our FIN must not hold the drain up.
          socket.setTimeout(sweepMs, () => socket.destroy());
        }
      }
    };
    const sweeper = setInterval(sweep, sweepMs);
    sweeper.unref();
    // http.Server#close also destroys every idle connection at once, racing clients whose next
    // request is already on the wire; net.Server#close (reached through it) only stops accepting.
    server.closeIdleConnections = noop;
    server.close(() => {
      clearTimeout(timer);
      clearInterval(sweeper);
      resolve();
    });
    delete (server as Partial<Server>).closeIdleConnections;
    sweep();
  });
}

function noop(): void {}

const DUPLICATE_SIGNAL_MS = 1000;

interface StopOptions {
  logger: Logger;
  server: Server;
  /** Runs after the server has drained: close breakers, timers, the database. */
  cleanup?: () => void | Promise<void>;
  timeoutMs?: number;
}

/**
 * SIGINT/SIGTERM: drain (closeServer) and exit 0, within `timeoutMs` whatever happens (else exit
 * 1). A second signal exits at once (1). An uncaught error logs and exits 1.
 */
function stopOnSignals({ logger, server, cleanup, timeoutMs = 10_000 }: StopOptions): void {
  // The drain gets most of the stop timeout; the cleanup (workers, database, logs) the rest.
  const drainMs = Math.max(1, timeoutMs - Math.min(1000, Math.round(timeoutMs / 5)));
  // A keep-alive client looping through the stop sends its next request within milliseconds of
  // its last answer, unless its machine is busy: its connection is left that long (a quarter of
  // the drain, at most 1 s) to bring a request, which is answered with `close`.
  const idleGraceMs = Math.min(1000, Math.round(drainMs / 4));
  let stoppingSince = 0;
  const stop = async (signal: string) => {
    if (stoppingSince) {
      // Ctrl+C reaches us more than once: from the terminal's process group and again relayed by
      // tsx and by concurrently. Only a signal sent well after the first means "hurry up".
      if (Date.now() - stoppingSince < DUPLICATE_SIGNAL_MS) return;
      logger.warn({ signal }, 'second signal, exiting now');
      logger.flush();
      process.exit(1);
    }
    stoppingSince = Date.now();
    logger.info({ signal }, 'stopping');
    // Whatever hangs, the process is gone within the stop timeout.
    setTimeout(() => {
      logger.error({ timeoutMs }, 'stop timeout reached, exiting');
      logger.flush();
      process.exit(1);
    }, timeoutMs).unref();
    try {
      await closeServer(server, drainMs, idleGraceMs);
      await cleanup?.();
      logger.info('stopped');
      logger.flush();
      process.exitCode = 0;
      // Give the async log destination a tick to flush, then leave even if a stray handle remains.
      setTimeout(() => process.exit(0), 50).unref();
    } catch (err) {
      logger.error({ err }, 'error while stopping');
      logger.flush();
      process.exit(1);
    }
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    logger.flush();
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err }, 'unhandled rejection');
    logger.flush();
    process.exit(1);
  });
}

/** How often collectWhenIdle looks at the process's CPU time and heap. */
const IDLE_CHECK_MS = 1000;
/** CPU time under this share of a check's interval (about 60 proxied GETs a second) is idle. */
const IDLE_CPU_SHARE = 0.01;
/** Heap committed beyond what it was after the last idle collection that is worth collecting. */
export const IDLE_GROWTH_BYTES = 16 * 2 ** 20;
/**
 * Idle this long, the process compacts its old generation. A minute: a gateway whose traffic only
 * pauses (between bursts, or while a benchmark measures other targets for half a minute) keeps
 * its heap, since regrowing it costs each request of the next busy spell (8 µs of a proxied GET's
 * 100 in the 5 s after such a pause, as measured); one that stays quiet gives it back.
 */
export const IDLE_COMPACT_MS = 60_000;
/**
 * Idle this long, it collects once more: V8 gives the young generation's pages back only at a
 * collection that finds the allocation rate low, and it judges that rate from the allocations
 * between collections: a collection soon after the compaction still counts the busy spell (as
 * measured, at 2 s after it the young generation stayed at 32 MB; at 6 s it went to 1 MB).
 */
export const IDLE_SHRINK_MS = IDLE_COMPACT_MS + 10_000;

export interface IdleCollectionDeps {
  /** A full garbage collection that also evacuates every old-generation page. */
  compact: () => void;
  /** A full garbage collection. */
  collect: () => void;
  /** V8's committed heap, in bytes. */
  heapBytes: () => number;
  /** The process's CPU time so far, in µs. */
  cpuUs: () => number;
}

/**
 * V8's own gc function, taken from a fresh context while --expose-gc is on, so that the process's
 * global gets none; made on first use.
 */
export function heapCollections(): Pick<IdleCollectionDeps, 'compact' | 'collect'> {
  let gc: (() => void) | undefined;
  const collect = () => {
    if (!gc) {
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('gc') as () => void;
      setFlagsFromString('--no-expose-gc');
    }
    gc();
  };
  return {
    collect,
    // An ordinary full collection frees the garbage but evacuates only the emptiest pages: after a
    // burst of load the gateway's old generation kept 50-60 MB of pages for 25 MB of live data.
    compact: () => {
      setFlagsFromString('--compact-on-every-full-gc');
      try {
        collect();
      } finally {
        setFlagsFromString('--no-compact-on-every-full-gc');
      }
    },
  };
}

export const processDeps: IdleCollectionDeps = {
  ...heapCollections(),
  heapBytes: () => getHeapStatistics().total_heap_size,
  cpuUs: () => {
    const { user, system } = process.cpuUsage();
    return user + system;
  },
};

/**
 * Gives the memory of a busy spell back once the process is idle. V8 keeps the heap a burst of
 * load grew (a young generation of 32 MB, an old generation of several times the live data: the
 * gateway went from 100 MB of RSS to 160-190 MB under 200 connections) until a collection that an
 * idle process never reaches; its memory reducer did not start one here either. So once the
 * process has spent under IDLE_CPU_SHARE of its time on the CPU for IDLE_COMPACT_MS with its heap
 * IDLE_GROWTH_BYTES above where the last such collection left it, it compacts (some 20-50 ms), and
 * once it has been idle for IDLE_SHRINK_MS (at once, or in a later quiet spell) it collects once more. A busy process never pays for
 * either, an idle one at most twice per busy spell; a request that arrives during one waits for it.
 * Returns the stop.
 */
export function collectWhenIdle(deps: IdleCollectionDeps = processDeps, checkMs = IDLE_CHECK_MS): () => void {
  let lastCpu = deps.cpuUs();
  let baseline = deps.heapBytes();
  let idleMs = 0;
  // Set by a compaction until the collection after it has run, whatever came between (V8's
  // sweeping after the compaction alone can make the next interval look busy).
  let shrinkDue = false;
  const timer = setInterval(() => {
    idleMs = deps.cpuUs() - lastCpu < checkMs * 1000 * IDLE_CPU_SHARE ? idleMs + checkMs : 0;
    if (idleMs >= IDLE_COMPACT_MS && deps.heapBytes() > baseline + IDLE_GROWTH_BYTES) {
      deps.compact();
      shrinkDue = true;
      baseline = deps.heapBytes();
    } else if (shrinkDue && idleMs >= IDLE_SHRINK_MS) {
      deps.collect();
      shrinkDue = false;
      baseline = deps.heapBytes();
    }
    // A collection's own CPU time is not the next interval's work.
    lastCpu = deps.cpuUs();
  }, checkMs);
  timer.unref();
  return () => clearInterval(timer);
}

export interface ServeOptions extends Omit<StopOptions, 'server'> {
  app: Express | FrontedApp;
  port: number;
  host: string;
  /** Give the heap of a busy spell back once the process turns idle (collectWhenIdle). */
  collectWhenIdle?: boolean;
}

/** For mains: listen (a taken port is one line and exit 1), log the address, wire the stop. */
export async function serve({ app, port, host, logger, cleanup, timeoutMs, collectWhenIdle: collecting = false }: ServeOptions): Promise<Listening> {
  let listening: Listening;
  try {
    listening = await listen(app, port, host);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // A taken port is the operator's to fix, not a bug: one line that names the variable, no stack.
    if (code === 'EADDRINUSE') logger.fatal({ port }, `port ${port} is already in use: set PORT, this process's own port, to a free one (npm start sets the four from GATEWAY_PORT, USERS_PORT, PRODUCTS_PORT and ORDERS_PORT)`);
    else logger.fatal({ err }, 'cannot listen');
    logger.flush();
    await cleanup?.();
    process.exit(1);
  }
  // Signals first: whoever reads "listening" may stop us at once.
  stopOnSignals({ logger, server: listening.server, cleanup, timeoutMs });
  if (collecting) listening.server.once('close', collectWhenIdle());
  logger.info({ url: listening.url }, 'listening');
  return listening;
}
