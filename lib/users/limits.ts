// The bounds against login and sign-up abuse, as the user service's app takes them.
import { defaultHashConcurrency } from './hash-budget.js';

/** The configuration's defaults (config.ts says why each is what it is). */
export const DEFAULT_USER_LIMITS = {
  /** LOGIN_MAX_TRACKED */
  loginMaxTracked: 100_000,
  /** LOGIN_SLOWDOWN_AFTER, LOGIN_SLOWDOWN_STEP_MS, LOGIN_SLOWDOWN_MAX_MS */
  loginSlowdownAfter: 30,
  loginSlowdownStepMs: 100,
  loginSlowdownMaxMs: 2000,
  /** PASSWORD_HASH_CONCURRENCY, PASSWORD_HASH_MAX_QUEUE, PASSWORD_HASH_MAX_WAIT_MS */
  hashConcurrency: defaultHashConcurrency(),
  hashMaxQueue: 8,
  hashMaxWaitMs: 1000,
  /** SIGNUP_RATE_LIMIT, SIGNUP_RATE_WINDOW_MS, SIGNUP_MAX_TRACKED */
  signupLimit: 20,
  signupWindowMs: 3_600_000,
  signupMaxTracked: 10_000,
};
export type UserLimits = typeof DEFAULT_USER_LIMITS;
