// The benchmark's "bare proxy" baseline: Express 5 + http-proxy-middleware 3 with a keep-alive
// agent and nothing else, what one writes in ten lines. The gateway's features cost what it adds to this.
import { Agent } from 'node:http';
import express from 'express';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { z } from 'zod';
import { loadConfig, portVar, urlVar } from '../lib/platform/config.js';

const config = loadConfig(z.object({
  PORT: portVar(3020),
  HOST: z.string().min(1).default('127.0.0.1'),
  PRODUCTS_URL: urlVar('http://127.0.0.1:3012'),
}), 'bare-proxy');

// Without keep-alive every request opens an upstream connection: that measures the kernel, not a proxy.
const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const app = express();
app.disable('x-powered-by');
// Express strips the mount path: /api/products/1 arrives as /1 and goes to <PRODUCTS_URL>/products/1.
app.use('/api/products', createProxyMiddleware({ target: `${config.PRODUCTS_URL}/products`, agent }));

const server = app.listen(config.PORT, config.HOST, () => {
  process.stdout.write(`bare-proxy listening on http://${config.HOST}:${config.PORT}\n`);
});
server.keepAliveTimeout = 65_000;
const stop = () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
