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

export const logLevelVar = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info');

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
  // Finished spans each process keeps for /traces: at most this many, none older than the age.
  TRACE_BUFFER_SPANS: intVar(10_000, 100, 1_000_000),
  TRACE_BUFFER_MAX_AGE_MS: intVar(15 * 60_000, 1000),
  // On SIGTERM/SIGINT: in-flight requests are answered (Connection: close) and the process exits
  // within this time; what is still open by then is cut.
  STOP_TIMEOUT_MS: intVar(10_000, 100, 600_000),
};

/** Settings every data-owning service has. */
export const serviceShape = {
  ...commonShape,
  DATA_DIR: z.string().min(1).default('./data'),
  SEED_DATA: boolVar(true),
  // Bearer token for the fault switch route the gateway calls; without it the route is open in
  // development and absent in production.
  ADMIN_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  // Fault switches turn themselves off after this long, so a forgotten one cannot break a system for good.
  FAULT_TTL_MS: intVar(10 * 60_000, 1000, 2 ** 31 - 1),
};

export class ConfigError extends Error {}

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
  throw new ConfigError(`${key}: ${issue?.message ?? 'invalid'}${got === undefined ? '' : ` (got ${JSON.stringify(got.slice(0, 60))})`}`);
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
