// Background work on a timer, the same way in every service: a pass at start and then one
// `intervalMs` after each pass ends, so passes never overlap; the timer never keeps the process up.
import type { Logger } from 'pino';

export interface Periodic {
  /** Stops the timer and waits for a pass in progress to finish. */
  stop(): Promise<void>;
}

/**
 * Runs `pass(shouldStop)` at start and then `intervalMs` after each pass ends. A pass that throws
 * (database unreachable, disk full) is logged as `<name> pass failed` and the next one tries again.
 */
export function startPeriodic(
  logger: Logger,
  name: string,
  intervalMs: number,
  pass: (shouldStop: () => boolean) => Promise<void>,
): Periodic {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> = Promise.resolve();
  const shouldStop = () => stopped;

  const run = async () => {
    try {
      await pass(shouldStop);
    } catch (err) {
      logger.error({ err }, `${name} pass failed`);
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      current = run().then(schedule);
    }, intervalMs);
    // The server keeps the process alive; this timer alone should not.
    timer.unref();
  };
  current = run().then(schedule);

  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
  };
}
