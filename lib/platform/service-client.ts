// The one HTTP client our processes use to call each other: timeout, trace headers, bounded
// bodies, and errors that keep the upstream's status and code.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { RequestHandler } from 'express';
import { Instance, InstanceSet, pinLoopback, type OutlierOptions } from './balancer.js';
import { HttpError } from './errors.js';
import { isIdempotent, mayRetry, RetryBudget } from './retry.js';
import { ATTR_HTTP_REQUEST_METHOD, ATTR_URL_PATH } from '@opentelemetry/semantic-conventions';
import { ATTR_PEER_SERVICE, startClientSpan } from './span-recorder.js';
import { AnswerHeaders, Endpoint, send, SEND_TIMED_OUT, type Answer, type SendFailure } from './http-transport.js';
import { classifyUpstreamError, type UpstreamFailure } from './upstream-errors.js';
import type { Agent } from 'node:http';

export type { UpstreamFailure };

/**
 * Set on a 5xx answer that is a dependency's fault, not the answering service's (its value names
 * the dependency): callers' breakers do not count it against the service.
 */
export const DEPENDENCY_HEADER = 'x-dependency-failure';

/** The callee could not give an answer we can use. Always a 503 to our own clients. */
export class UpstreamUnavailableError extends HttpError {
  constructor(
    readonly service: string,
    readonly failure: UpstreamFailure,
    readonly upstreamStatus?: number,
  ) {
    super(503, 'SERVICE_UNAVAILABLE', `Service ${service} is unavailable`);
    this.name = 'UpstreamUnavailableError';
  }
}

/** The caller's deadline passed while we waited for `service`: answered 504, and not the service's fault. */
export class DeadlineExceededError extends HttpError {
  constructor(readonly service?: string) {
    super(504, 'DEADLINE_EXCEEDED', 'The request could not be completed within its deadline', undefined, service === undefined ? undefined : { dependency: service });
    this.name = 'DeadlineExceededError';
  }
}

/** How long a caller will still wait, in ms: sent on every call between our processes. */
const REQUEST_TIMEOUT_HEADER = 'request-timeout';

/** `at`: Date.now() ms; 0 once the caller hung up. */
const deadlines = new AsyncLocalStorage<{ at: number }>();

/** The current request's deadline (Date.now() ms), when its caller sent Request-Timeout. */
const currentDeadline = (): number | undefined => deadlines.getStore()?.at;

/** True when the current request's caller has stopped waiting (or is about to). */
export function deadlinePassed(): boolean {
  const deadline = deadlines.getStore();
  return deadline !== undefined && Date.now() >= deadline.at;
}

/** Milliseconds left before the current request's deadline; undefined without Request-Timeout. */
export function deadlineLeftMs(): number | undefined {
  const at = currentDeadline();
  return at === undefined ? undefined : at - Date.now();
}

/** Runs `fn` with no deadline: work that must go on after the caller gave up (compensation). */
export const withoutDeadline = <T>(fn: () => T): T => deadlines.exit(fn);

/**
 * Reads `Request-Timeout: <ms>` and runs the rest of the request inside its deadline, a little
 * before the caller's (a tenth of it, at most 100 ms), so that our answer reaches the caller
 * before it gives up, or until the caller hangs up. Every ServiceClient call made meanwhile waits no
 * longer than that. Must run after the body parser (its callbacks leave the async context).
 */
export const requestDeadline: RequestHandler = (req, res, next) => {
  const value = req.headers[REQUEST_TIMEOUT_HEADER];
  const ms = typeof value === 'string' && /^\d{1,9}$/.test(value) ? Number(value) : 0;
  if (ms === 0) return next();
  const deadline = { at: Date.now() + ms - Math.min(100, Math.ceil(ms / 10)) };
  // A caller that closed the connection before our answer gave up on it (its own timeout, on a
  // busy machine perhaps before ours): its deadline has passed.
  res.once('close', () => {
    if (!res.writableFinished) deadline.at = 0;
  });
  deadlines.run(deadline, next);
};

export interface ServiceClientOptions {
  /** Short name used in messages and logs: `users`, `products`. */
  name: string;
  /** The service's one instance; or give `instances`. */
  baseUrl?: string;
  /** The service's instances (shared with other callers of the same service, e.g. the gateway's proxy). */
  instances?: InstanceSet;
  timeoutMs: number;
  /** Largest response body read; a larger one is a bad response. */
  maxResponseBytes?: number;
  /**
   * The keep-alive pool of each instance (the gateway's proxy pools, say); by default one of its
   * own per instance, bounded (see keepAliveAgent), which close() destroys.
   */
  agentOf?: (instance: Instance) => Agent;
  /**
   * The retries its calls may spend (shared with the gateway's proxy to the same service); by
   * default one of its own: a fifth of its calls, up to RETRY_TOKENS_PER_INSTANCE per instance.
   */
  retries?: RetryBudget;
}

export interface ServiceResponse<T> {
  status: number;
  body: T;
  headers: AnswerHeaders;
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Statuses that are answers rather than errors (e.g. 404 when asking whether a row exists). */
  accept?: readonly number[];
}

// A client's own budget: retries per call, and retries a quiet client saves up per instance (losing
// one of several instances fails every call in flight on it, and each must be able to go to another).
const DEFAULT_RETRY_RATIO = 0.2;
export const RETRY_TOKENS_PER_INSTANCE = 10;

/**
 * The instances of a service from its URL list, for a ServiceClient: an instance whose ejection
 * time is over comes back once its GET /health answers 2xx within `probeTimeoutMs`.
 */
export function serviceInstances(urls: string[], outlier: OutlierOptions, probeTimeoutMs: number): InstanceSet {
  return new InstanceSet(urls.map((u) => new Instance(u, pinLoopback(u))), outlier, {
    probe: async (instance) => {
      try {
        const res = await fetch(`${instance.target}/health`, { signal: AbortSignal.timeout(probeTimeoutMs) });
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false;
      }
    },
  });
}

export class ServiceClient {
  readonly name: string;
  /** The first instance's base URL. */
  readonly baseUrl: string;
  readonly instances: InstanceSet;
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;
  private readonly retries: RetryBudget;
  private readonly endpoints = new Map<Instance, Endpoint>();
  private readonly ownAgents: boolean;

  constructor({ name, baseUrl, instances, timeoutMs, maxResponseBytes = 4 * 1024 * 1024, agentOf, retries }: ServiceClientOptions) {
    this.name = name;
    if (instances) this.instances = instances;
    else if (baseUrl !== undefined) {
      const url = baseUrl.replace(/\/+$/, '');
      // One instance is never ejected: the options are not read.
      this.instances = new InstanceSet([new Instance(url, url)], { consecutiveFailures: 1, ejectionMs: 1, maxEjectionMs: 1 });
    } else throw new Error('a ServiceClient needs a baseUrl or instances');
    this.baseUrl = this.instances.list[0].target;
    this.ownAgents = agentOf === undefined;
    for (const i of this.instances.list) this.endpoints.set(i, new Endpoint(i.target, agentOf?.(i)));
    this.timeoutMs = timeoutMs;
    this.maxResponseBytes = maxResponseBytes;
    const cap = RETRY_TOKENS_PER_INSTANCE * this.instances.list.length;
    this.retries = retries ?? new RetryBudget({ ratio: DEFAULT_RETRY_RATIO, cap, initial: cap });
  }

  /**
   * Sends one request. 2xx (and `accept`ed statuses) resolve; any other status throws an
   * HttpError with the upstream's status, code and message (5xx become UpstreamUnavailableError);
   * no answer in time, a refused or reset connection, or a body that is not JSON throw
   * UpstreamUnavailableError.
   */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<ServiceResponse<T>> {
    // The smaller of our own timeout and what is left of the caller's deadline.
    const deadline = currentDeadline();
    const left = deadline === undefined ? this.timeoutMs : deadline - Date.now();
    if (left <= 0) throw new DeadlineExceededError(this.name);
    const byDeadline = left < this.timeoutMs;
    const timeoutMs = byDeadline ? left : this.timeoutMs;
    const endAt = performance.now() + timeoutMs;
    const span = startClientSpan(`${method} ${this.name}`, { [ATTR_PEER_SERVICE]: this.name, [ATTR_HTTP_REQUEST_METHOD]: method, [ATTR_URL_PATH]: path.split('?')[0].slice(0, 256) });
    const headers: Record<string, string> = { accept: 'application/json', ...span.headers, ...options.headers, [REQUEST_TIMEOUT_HEADER]: String(timeoutMs) };
    let payload: string | undefined;
    if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    let res: Answer;
    const set = this.instances;
    let instance = set.pick()!;
    let retried = false;
    this.retries.deposit();
    for (;;) {
      set.begin(instance);
      const sentAt = performance.now();
      try {
        res = await send(this.endpoints.get(instance)!, { method, path, headers, body: payload, signal: options.signal, timeoutMs: endAt - sentAt, maxBytes: this.maxResponseBytes });
        const blameless = res.status < 500 || res.headers[DEPENDENCY_HEADER] !== undefined;
        set.observe(instance, performance.now() - sentAt);
        set.end(instance, blameless);
        if (!blameless) set.fail(instance, 'server_error');
        break;
      } catch (thrown) {
        const { error: err, reusedSocket, answered } = thrown as SendFailure;
        set.end(instance, false);
        const timedOut = (err as { code?: unknown }).code === SEND_TIMED_OUT;
        const failure = options.signal?.aborted ? 'aborted' : classifyUpstreamError(err, timedOut);
        if (failure !== 'aborted' && !(failure === 'timeout' && byDeadline)) set.fail(instance, failure);
        // Failed before any answer: another instance (or a fresh connection) takes it when that cannot do harm twice.
        const retry = !retried && failure !== 'aborted' && performance.now() < endAt && mayRetry({
          repeatable: isIdempotent(method) || headers['idempotency-key'] !== undefined,
          failure,
          answered,
          reusedSocket,
          severalInstances: !set.single,
          replayable: true,
        });
        if (retry) {
          // A lone instance is asked again only on a fresh connection, after a pooled one it had closed.
          const next = set.single ? (reusedSocket && failure === 'reset' ? instance : undefined) : set.pick(instance);
          if (next && this.retries.withdraw()) {
            retried = true;
            instance = next;
            continue;
          }
        }
        span.end({ error: failure });
        if (options.signal?.aborted) throw err;
        if (failure === 'timeout' && byDeadline) throw new DeadlineExceededError(this.name);
        throw new UpstreamUnavailableError(this.name, failure as UpstreamFailure);
      }
    }
    span.end({ status: res.status });
    let body: unknown;
    try {
      body = res.body === '' ? undefined : JSON.parse(res.body);
    } catch {
      throw new UpstreamUnavailableError(this.name, 'bad_response', res.status);
    }
    if ((res.status >= 200 && res.status < 300) || options.accept?.includes(res.status)) {
      return { status: res.status, body: body as T, headers: new AnswerHeaders(res.headers) };
    }
    // A dependency's fault is the callee's answer, not its failure: an HttpError keeping its status,
    // and the dependency and retry time it names, so that a caller answering with it blames the same
    // dependency (X-Dependency-Failure) and its own callers' breakers count it neither way.
    const dependency = res.headers[DEPENDENCY_HEADER];
    if (res.status >= 500 && dependency === undefined) throw new UpstreamUnavailableError(this.name, 'server_error', res.status);
    const b = (body ?? {}) as { error?: unknown; code?: unknown; details?: unknown };
    const retryAfter = Number(res.headers['retry-after']);
    throw new HttpError(
      res.status,
      typeof b.code === 'string' ? b.code : 'UPSTREAM_ERROR',
      typeof b.error === 'string' ? b.error : `Service ${this.name} answered ${res.status}`,
      Array.isArray(b.details) ? (b.details as HttpError['details']) : undefined,
      dependency === undefined ? undefined : { ...(Number.isInteger(retryAfter) && retryAfter > 0 ? { retryAfter } : {}), dependency: String(dependency) },
    );
  }

  get<T>(path: string, options?: RequestOptions) {
    return this.request<T>('GET', path, options);
  }

  post<T>(path: string, body: unknown, options?: RequestOptions) {
    return this.request<T>('POST', path, { ...options, body });
  }

  /** Closes the idle connections of the pools it made itself (not those it was given). */
  close(): void {
    if (this.ownAgents) for (const e of this.endpoints.values()) e.agent.destroy();
  }
}
