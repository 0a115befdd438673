// Reads a process's configuration from the environment once, at start, through one zod schema.
import { z } from 'zod';

/** A port number given as a string in the environment; 0 lets the OS choose (tests). */
export const portVar = (fallback: number) =>
  z.string().regex(/^\d{1,5}$/, 'must be a port number (0-65535)')
    .transform(Number)
    .refine((n) => n <= 65535, 'must be a port number (0-65535)')
    .default(fallback);

/** A whole number within bounds, given as a string. */
export const intVar = (fallback: number, min: number, max: number = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d+$/, `must be a whole number from ${min} to ${max}`)
    .transform(Number)
    .refine((n) => n >= min && n <= max, `must be a whole number from ${min} to ${max}`)
    .default(fallback);

export const boolVar = (fallback: boolean) =>
  z.enum(['true', 'false', '1', '0', 'yes', 'no'], { message: 'must be true or false' })
    .transform((v) => v === 'true' || v === '1' || v === 'yes')
    .default(fallback);

export const urlVar = (fallback: string) =>
  z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' })
    .transform((u) => u.replace(/\/+$/, ''))
    .default(fallback);

/** Most instances a URL list may name: each gets its own pool, outlier state and metric labels. */
const MAX_URL_LIST = 16;

const HTTP_URL = z.url({ protocol: /^https?$/ });

/**
 * One base URL or several, comma-separated (the instances of one service): each an http(s) URL,
 * no two alike, at most MAX_URL_LIST. Read back as the same list, trimmed and without trailing
 * slashes, so one URL reads as urlVar would read it; `urlList` splits it.
 */
export const urlListVar = (fallback: string, { allowEmpty = false } = {}) =>
  z.string()
    .transform((value, ctx) => {
      const urls = value.split(',').map((u) => u.trim()).filter((u) => u !== '');
      if (urls.length === 0 && !allowEmpty) {
        ctx.addIssue({ code: 'custom', message: 'must be an http(s) URL or a comma-separated list of them' });
        return z.NEVER;
      }
      if (urls.length > MAX_URL_LIST) {
        ctx.addIssue({ code: 'custom', message: `must list at most ${MAX_URL_LIST} URLs (got ${urls.length})` });
        return z.NEVER;
      }
      const seen = new Set<string>();
      for (const [i, url] of urls.entries()) {
        if (!HTTP_URL.safeParse(url).success) {
          ctx.addIssue({ code: 'custom', message: urls.length === 1 ? 'must be an http(s) URL' : `entry ${i + 1} must be an http(s) URL` });
          return z.NEVER;
        }
        const parsed = new URL(url);
        if (parsed.username !== '' || parsed.password !== '') {
          // They would show in /health, metric labels and logs; services authenticate with tokens.
          ctx.addIssue({ code: 'custom', message: urls.length === 1 ? 'must not hold a user name or password' : `entry ${i + 1} must not hold a user name or password` });
          return z.NEVER;
        }
        const key = new URL(url).href.replace(/\/+$/, '');
        if (seen.has(key)) {
          ctx.addIssue({ code: 'custom', message: `entry ${i + 1} repeats an earlier URL` });
          return z.NEVER;
        }
        seen.add(key);
      }
      return urls.map((u) => u.replace(/\/+$/, '')).join(',');
    })
    .default(fallback);

/** The URLs of a urlListVar value. */
export const urlList = (value: string): string[] => (value === '' ? [] : value.split(','));

const logLevelVar = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info');

/** The samplers OTEL_TRACES_SAMPLER names, as OpenTelemetry's environment specification spells them. */
export const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;

/** Settings every process has. */
export const commonShape = {
  HOST: z.string().min(1).default('127.0.0.1'),
  LOG_LEVEL: logLevelVar,
  // Pretty logs are for people; pipes and files get JSON lines. Unset: pretty only on a terminal.
  LOG_PRETTY: z.enum(['true', 'false', '1', '0']).optional().transform((v) => (v === undefined ? undefined : v === 'true' || v === '1')),
  NODE_ENV: z.string().default('development'),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }).optional(),
  // OpenTelemetry's own switch: true records no spans (trace ids and headers still work).
  OTEL_SDK_DISABLED: boolVar(false),
  // OpenTelemetry's name for how long finished spans wait to be exported in one batch (ours defaults to 1 s, not its 5 s).
  OTEL_BSP_SCHEDULE_DELAY: intVar(1000, 1, 60_000),
  // OpenTelemetry's head sampler: which requests are exported. Every request still gets its ids and
  // headers, and /traces keeps the unsampled ones that fail or are slow (TRACE_SLOW_MS).
  OTEL_TRACES_SAMPLER: z.enum(SAMPLERS, { message: `must be one of ${SAMPLERS.join(', ')}` }).default('parentbased_always_on'),
  // The ratio of the *traceidratio samplers, 0..1 (other samplers ignore it).
  OTEL_TRACES_SAMPLER_ARG: z.string()
    .regex(/^(0(\.\d+)?|1(\.0+)?|\.\d+)$/, 'must be a ratio from 0 to 1')
    .transform(Number)
    .default(1),
  // An unsampled request whose server span lasts this long is still kept for /traces.
  TRACE_SLOW_MS: intVar(500, 0, 3_600_000),
  // Finished spans each process keeps for /traces: at most this many, none older than the age.
  TRACE_BUFFER_SPANS: intVar(10_000, 100, 1_000_000),
  TRACE_BUFFER_MAX_AGE_MS: intVar(15 * 60_000, 1000),
  // On SIGTERM/SIGINT: in-flight requests are answered (Connection: close) and the process exits
  // within this time; what is still open by then is cut.
  STOP_TIMEOUT_MS: intVar(10_000, 100, 600_000),
  // Bearer token that opens the process's admin surface beside an admin's JWT (for scrapers and
  // operators): the gateway's /debug/*, /traces, /metrics and detailed /health; a service's
  // /metrics, /spans and /traces in required mode, and its fault switches. Without it the fault
  // switches and the gateway's debug routes are absent in production; in development they are
  // open (the gateway's to ADMIN_ALLOW_ADDRESSES only).
  ADMIN_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
};

/** Settings every data-owning service has. */
export const serviceShape = {
  ...commonShape,
  DATA_DIR: z.string().min(1).default('./data'),
  SEED_DATA: boolVar(true),
  // PostgreSQL instead of the SQLite file under DATA_DIR. The service keeps its tables in a schema
  // of its own (DATABASE_SCHEMA, default its name: users, products, orders), so the three can
  // share one database.
  DATABASE_URL: z.string().regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// or postgresql:// URL').optional(),
  DATABASE_SCHEMA: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case SQL name (a-z, 0-9, _)').optional(),
  // Most connections one instance opens, and the longest wait for a connection or a statement.
  DATABASE_POOL_MAX: intVar(10, 1, 100),
  DATABASE_TIMEOUT_MS: intVar(5000, 100, 600_000),
  // Fault switches turn themselves off after this long, so a forgotten one cannot break a system for good.
  FAULT_TTL_MS: intVar(10 * 60_000, 1000, 2 ** 31 - 1),
};

/** Largest value setTimeout/setInterval accept; timers and windows above it fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The base URLs of each service's instances, for the processes that call it: one URL or a
 * comma-separated list (at most MAX_URL_LIST, no repeats). Calls are balanced over the instances;
 * a call refused by one (or reset before any answer, when it is safe to repeat) goes to another.
 * Every user-service instance also serves /.well-known/jwks.json, asked in turn when one is down,
 * unless JWKS_URL names other keys.
 */
export const serviceUrlShape = {
  USERS_URL: urlListVar('http://127.0.0.1:3011'),
  PRODUCTS_URL: urlListVar('http://127.0.0.1:3012'),
  ORDERS_URL: urlListVar('http://127.0.0.1:3013'),
};

/** Settings of a process that calls other services (the gateway, the order service). */
export const callerShape = {
  // Each call to a service gives up after this long (the gateway: time to the response headers,
  // and to the whole answer for aggregation calls); the service is told how long is left in the
  // Request-Timeout header.
  UPSTREAM_TIMEOUT_MS: intVar(5000, 10, 600_000),
  // With several instances: consecutive failures (refused, reset, timeout, 5xx) that take one out
  // of the rotation. The gateway's circuit opens only when every instance is out.
  OUTLIER_CONSECUTIVE_FAILURES: intVar(5, 1, 1000),
  // How long an ejected instance stays out at first: it is back at its first answered /health
  // probe (the gateway also probes every CB_PROBE_INTERVAL_MS); the time doubles, up to
  // OUTLIER_MAX_EJECTION_MS, each time it ends while the probes still fail.
  OUTLIER_EJECTION_MS: intVar(10_000, 10, MAX_TIMER_MS),
  OUTLIER_MAX_EJECTION_MS: intVar(300_000, 10, MAX_TIMER_MS),
};

/** Settings of a service that deletes rows past their retention (products, orders). */
export const retentionShape = {
  // How often rows past their retention (products: released reservations older than
  // RESERVATION_RETENTION_MS; orders: expired idempotency keys and lapsed claims) are deleted, in
  // small batches.
  RETENTION_INTERVAL_MS: intVar(60_000, 10, 3_600_000),
};

/** Where a service keeps its data, as its open function takes it. */
export interface ServiceDatabaseOptions {
  dataDir: string;
  seed: boolean;
  databaseUrl?: string;
  schema?: string;
  poolMax?: number;
  timeoutMs?: number;
}

export function databaseOptions(config: z.output<z.ZodObject<typeof serviceShape>>): ServiceDatabaseOptions {
  return {
    dataDir: config.DATA_DIR,
    seed: config.SEED_DATA,
    databaseUrl: config.DATABASE_URL,
    schema: config.DATABASE_SCHEMA,
    poolMax: config.DATABASE_POOL_MAX,
    timeoutMs: config.DATABASE_TIMEOUT_MS,
  };
}

export class ConfigError extends Error {}

// The one line a bad value prints goes to terminals and log collectors: never a secret, and never
// the password of a URL (postgres://user:pw@host); the database URLs (*DATABASE_URL, and
// *POSTGRES_URL as the benchmark names one) and Redis URLs not at all, since their passwords also
// come in forms no pattern catches (libpq's key=value, spaces).
const SECRET_KEY = /TOKEN|PASSWORD|SECRET|PRIVATE_KEY|DATABASE_URL|POSTGRES_URL|REDIS_URL/;
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)[^@/\s,]*@/gi;

/**
 * Parses `env` with `schema`. A bad value throws a ConfigError whose message is one line naming
 * the variable, e.g. `PORT: must be a port number (0-65535) (got "abc")`.
 */
export function parseConfig<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv = process.env): z.output<S> {
  // Empty strings mean "unset", as shells make it easy to export VAR= by accident.
  const cleaned: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v !== '') cleaned[k] = v;
  const result = schema.safeParse(cleaned);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = String(issue?.path[0] ?? 'config');
  const got = cleaned[key];
  const shown = got === undefined || SECRET_KEY.test(key) ? undefined : got.replace(URL_CREDENTIALS, '$1***@').slice(0, 60);
  throw new ConfigError(`${key}: ${issue?.message ?? 'invalid'}${shown === undefined ? '' : ` (got ${JSON.stringify(shown)})`}`);
}

/** For mains: parse or print the one line and exit 1. */
export function loadConfig<S extends z.ZodType>(schema: S, processName: string): z.output<S> {
  try {
    return parseConfig(schema, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${processName}: invalid configuration: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}
