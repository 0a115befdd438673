import { pino, type Logger } from 'pino';
import { currentTrace } from './trace-context.js';

export type { Logger };

export interface LoggerOptions {
  service: string;
  level?: string;
  /** Human-readable output; defaults to whether stdout is a terminal. */
  pretty?: boolean;
  /** Where JSON lines go; tests pass a stream to read them. */
  destination?: pino.DestinationStream;
}

/**
 * One root logger per process. Every line carries the service name and, inside a request, the
 * trace and span ids, so one trace id finds its lines in all four processes.
 */
/** Measured: a proxied GET cost the gateway some 5% less CPU with 4 kB writes than with a write per few lines. */
const LOG_BATCH_BYTES = 4096;
const LOG_FLUSH_MS = 100;

// Loggers made by createLogger: their options are known, so their request line can be written
// without pino's general path.
const KNOWN_FORMAT = Symbol('msvc.knownFormat');

export function createLogger({ service, level = 'info', pretty, destination }: LoggerOptions): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Nothing logs these on purpose; the redaction catches an object logged by mistake.
    redact: {
      paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'password', '*.password', 'accessToken', '*.accessToken', 'token', '*.token'],
      censor: '[redacted]',
    },
    mixin(obj) {
      // A line that names its own trace and span (the request line) would get nothing from here.
      if ('traceId' in obj && 'spanId' in obj) return {};
      const trace = currentTrace();
      return trace ? { traceId: trace.traceId, spanId: trace.spanId } : {};
    },
  };
  if (destination) return knownFormat(pino(options, destination));
  if (pretty ?? process.stdout.isTTY) {
    return knownFormat(pino({ ...options, transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service', singleLine: true } } }));
  }
  // Asynchronous writes keep logging off the request path; mains flush on exit (and pino flushes
  // what waits when the process exits). Lines go out in writes of at least LOG_BATCH_BYTES (some 15
  // request lines; each write is a trip through libuv's thread pool), and whatever waits is
  // flushed every LOG_FLUSH_MS, so a quiet process's lines are out within that.
  return knownFormat(pino(options, pino.destination({ dest: 1, sync: false, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS })));
}

function knownFormat(logger: Logger): Logger {
  (logger as Logger & { [KNOWN_FORMAT]?: boolean })[KNOWN_FORMAT] = true;
  return logger;
}

/** The one line per request: the request context's own fields only (ids, method, URL, status, time). */
interface RequestLine {
  traceId: string;
  spanId: string;
  method: string;
  url: string;
  status: number;
  durationMs: number;
  /** The client left before the answer was sent in full. */
  aborted?: boolean;
}

/** Writes one request line at info, or at debug when `quiet`. */
export type RequestLineWriter = (line: RequestLine, quiet: boolean) => void;

const { chindingsSym, endSym, hooksSym, lsCacheSym, needsMetadataGsym, streamSym } = pino.symbols;

/** One of pino's own fields of a logger (pino.symbols names them). */
const internal = <T>(from: object, key: symbol): T => (from as Record<symbol, unknown>)[key] as T;

const INFO = 30;
const DEBUG = 20;

/**
 * The request line's writer. No key that redaction looks for can be in the line, so it skips
 * redaction; for a logger of createLogger's it also skips pino's general serializer (mixin,
 * serializers, a Date per line): the same JSON, written as one template, with the time string made
 * once per millisecond (measured: the request line was some 8% of a proxied GET's CPU in the
 * gateway, half of it the serializer).
 */
export function requestLineWriter(logger: Logger): RequestLineWriter {
  const lines = logger.child({}, { redact: [] });
  const fields = (l: RequestLine) => (l.aborted
    ? { traceId: l.traceId, spanId: l.spanId, method: l.method, url: l.url, status: l.status, durationMs: l.durationMs, aborted: true }
    : { traceId: l.traceId, spanId: l.spanId, method: l.method, url: l.url, status: l.status, durationMs: l.durationMs });
  const stream = internal<pino.DestinationStream>(lines, streamSym);
  if (!(logger as Logger & { [KNOWN_FORMAT]?: boolean })[KNOWN_FORMAT] || internal<boolean | undefined>(stream, needsMetadataGsym) === true
    || internal<{ streamWrite?: unknown }>(lines, hooksSym).streamWrite !== undefined) {
    return (line, quiet) => lines[quiet ? 'debug' : 'info'](fields(line), 'request');
  }
  const head = internal<Record<number, string>>(lines, lsCacheSym);
  const infoHead = head[INFO];
  const debugHead = head[DEBUG];
  const bindings = internal<string>(lines, chindingsSym);
  const end = internal<string>(lines, endSym);
  let timeMs = 0;
  let time = '';
  return (line, quiet) => {
    const level = quiet ? DEBUG : INFO;
    if (lines.levelVal > level) return;
    const now = Date.now();
    if (now !== timeMs) {
      timeMs = now;
      time = `,"time":"${new Date(now).toISOString()}"`;
    }
    stream.write(`${quiet ? debugHead : infoHead}${time}${bindings},"traceId":${JSON.stringify(line.traceId)},"spanId":${JSON.stringify(line.spanId)},"method":${JSON.stringify(line.method)},"url":${JSON.stringify(line.url)},"status":${numberJson(line.status)},"durationMs":${numberJson(line.durationMs)}${line.aborted ? ',"aborted":true' : ''},"msg":"request"${end}`);
  };
}

/** A number as pino writes it: null when not finite. */
const numberJson = (n: number): string => (Number.isFinite(n) ? String(n) : 'null');
