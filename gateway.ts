// The API gateway: routes /api/* to the three services through circuit breakers, rate limits,
// serves stale answers when a service fails, and combines services in aggregate routes.
import { createGateway } from './lib/gateway/app.js';
import { GatewayConfigSchema } from './lib/gateway/config.js';
import { loadConfig } from './lib/platform/config.js';
import { createLogger } from './lib/platform/logger.js';
import { serve } from './lib/platform/server.js';
import { createTracingFromConfig } from './lib/platform/span-recorder.js';

const SERVICE = 'gateway';
const config = loadConfig(GatewayConfigSchema, SERVICE);
const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL, pretty: config.LOG_PRETTY });

const gateway = createGateway({ config, logger, tracing: createTracingFromConfig(SERVICE, config, logger) });
await serve({ app: gateway, port: config.PORT, host: config.HOST, logger, timeoutMs: config.STOP_TIMEOUT_MS, cleanup: () => gateway.close(), collectWhenIdle: true });
