// The start-up every data-owning service shares: config, logger, database, metrics, tracing,
// listen, and a stop that drains requests before closing what the service opened.
import type { Express } from 'express';
import type { z } from 'zod';
import { databaseOptions, loadConfig, type serviceShape, type ServiceDatabaseOptions } from './config.js';
import type { SqlDatabase } from './sql.js';
import { createFaultSwitchesFromConfig } from './faults.js';
import { createLogger } from './logger.js';
import { createMetrics } from './metrics.js';
import { serve } from './server.js';
import type { ServiceDeps } from './service-app.js';
import { createTracingFromConfig } from './span-recorder.js';

interface Built {
  app: Express;
  close?: () => Promise<void>;
}

// Every service reads the identity settings too (authShape): INTERNAL_TOKEN guards its /internal/*.
type ServiceConfig = z.output<z.ZodObject<typeof serviceShape>> & { PORT: number; INTERNAL_TOKEN?: string | undefined };

export interface ServiceMain<C extends ServiceConfig> {
  /** `user-service`, ...: the name in logs, metrics, spans and /health. */
  service: string;
  schema: z.ZodType<C>;
  openDatabase: (options: ServiceDatabaseOptions) => Promise<SqlDatabase>;
  /** Builds the app; `close` stops whatever else it started (workers), before the database closes. */
  build: (deps: ServiceDeps, config: C) => Built | Promise<Built>;
}

export async function runService<C extends ServiceConfig>({ service, schema, openDatabase, build }: ServiceMain<C>): Promise<void> {
  const config = loadConfig(schema, service);
  const logger = createLogger({ service, level: config.LOG_LEVEL, pretty: config.LOG_PRETTY });
  let db: SqlDatabase;
  try {
    db = await openDatabase(databaseOptions(config));
  } catch (err) {
    // The URL may hold a password: name the engine and where, never the whole URL.
    const where = config.DATABASE_URL ? { database: 'postgres', schema: config.DATABASE_SCHEMA } : { dataDir: config.DATA_DIR };
    logger.fatal({ err, ...where }, 'cannot open the database');
    logger.flush();
    process.exit(1);
  }
  const tracing = createTracingFromConfig(service, config, logger);
  const { app, close } = await build({ logger, db, metrics: createMetrics(service), tracing, faults: createFaultSwitchesFromConfig(config, logger), internalToken: config.INTERNAL_TOKEN }, config);
  await serve({
    app,
    port: config.PORT,
    host: config.HOST,
    logger,
    timeoutMs: config.STOP_TIMEOUT_MS,
    cleanup: async () => {
      await close?.();
      await tracing?.shutdown();
      await db.close();
    },
  });
}
