// Listening and stopping, the same way for all four processes.
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { answerClientError } from './errors.js';
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
    const server = 'front' in target ? createServer(expressServerClasses(target.app), target.front) : createServer(target);
    server.on('clientError', answerClientError);
    server.listen(port, host);
    // Longer than any client's idle keep-alive (the gateway's agent uses 30 s), so a client
    // never reuses a socket we are about to close (that shows up as ECONNRESET).
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 15_000;
    server.requestTimeout = 60_000;
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      const { port: bound } = server.address() as AddressInfo;
      resolve({ server, port: bound, url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}` });
    });
  });
}

/**
 * Stops accepting, lets in-flight requests finish, closes idle keep-alive sockets; after
 * `timeoutMs` cuts whatever is left.
 */
export function closeServer(server: Server, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    const timer = setTimeout(() => server.closeAllConnections(), timeoutMs);
    timer.unref();
    // A keep-alive connection busy now turns idle when its request ends; close those as they do.
    const sweep = setInterval(() => server.closeIdleConnections(), 100);
    sweep.unref();
    server.close(() => {
      clearTimeout(timer);
      clearInterval(sweep);
      resolve();
    });
    server.closeIdleConnections();
  });
}

const DUPLICATE_SIGNAL_MS = 1000;

export interface StopOptions {
  logger: Logger;
  server: Server;
  /** Runs after the server has drained: close breakers, timers, the database. */
  cleanup?: () => void | Promise<void>;
  timeoutMs?: number;
}

/**
 * SIGINT/SIGTERM: drain and exit 0. A second signal exits at once (1). An uncaught error logs and
 * exits 1.
 */
export function stopOnSignals({ logger, server, cleanup, timeoutMs = 10_000 }: StopOptions): void {
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
    try {
      await closeServer(server, timeoutMs);
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

export interface ServeOptions extends Omit<StopOptions, 'server'> {
  app: Express | FrontedApp;
  port: number;
  host: string;
}

/** For mains: listen (a taken port is one line and exit 1), log the address, wire the stop. */
export async function serve({ app, port, host, logger, cleanup, timeoutMs }: ServeOptions): Promise<Listening> {
  let listening: Listening;
  try {
    listening = await listen(app, port, host);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    logger.fatal({ err }, code === 'EADDRINUSE' ? `port ${port} is already in use` : 'cannot listen');
    logger.flush();
    await cleanup?.();
    process.exit(1);
  }
  // Signals first: whoever reads "listening" may stop us at once.
  stopOnSignals({ logger, server: listening.server, cleanup, timeoutMs });
  logger.info({ url: listening.url }, 'listening');
  return listening;
}
