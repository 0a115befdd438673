// npm start: the four processes of the original example, each with its own port, output prefixed
// with its name. Every process reads PORT, so a PORT exported for npm start would reach all four
// and three would fail on a taken port: npm start gives each process its own from the variables
// below, and points the gateway and the services at the ports it chose.
// npm run start:prod runs this file as built by npm run build (dist/scripts/start.js): it then
// starts the built entries beside it with node, where npm start starts the .ts files with tsx.
import { fileURLToPath } from 'node:url';
import { concurrently } from 'concurrently';
import { z } from 'zod';
import { ConfigError, intVar, parseConfig } from '../lib/platform/config.js';

const StartSchema = z.object({
  GATEWAY_PORT: intVar(3010, 1, 65_535),
  USERS_PORT: intVar(3011, 1, 65_535),
  PRODUCTS_PORT: intVar(3012, 1, 65_535),
  ORDERS_PORT: intVar(3013, 1, 65_535),
});

let ports: z.output<typeof StartSchema>;
try {
  ports = parseConfig(StartSchema);
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`npm start: invalid configuration: ${err.message}\n`);
    process.exit(1);
  }
  throw err;
}

const { PORT, ...inherited } = process.env;
if (PORT !== undefined) {
  process.stdout.write(
    `npm start: PORT is read by each process on its own, so npm start does not pass it on; it sets the four ports from GATEWAY_PORT, USERS_PORT, PRODUCTS_PORT and ORDERS_PORT (now ${ports.GATEWAY_PORT}, ${ports.USERS_PORT}, ${ports.PRODUCTS_PORT}, ${ports.ORDERS_PORT})\n`,
  );
}

const local = (port: number) => `http://127.0.0.1:${port}`;
// A URL the user set wins (a service elsewhere); otherwise the one npm start runs.
const urls = {
  USERS_URL: inherited.USERS_URL ?? local(ports.USERS_PORT),
  PRODUCTS_URL: inherited.PRODUCTS_URL ?? local(ports.PRODUCTS_PORT),
  ORDERS_URL: inherited.ORDERS_URL ?? local(ports.ORDERS_PORT),
};
// Built, this module is dist/scripts/start.js and the entries are dist/*.js; run by tsx, it is .ts.
const built = import.meta.url.endsWith('.js');
// concurrently hands each command to a shell: the path is quoted for it.
const quoted = (path: string) => `'${path.replaceAll("'", `'\\''`)}'`;
const commandOf = (entry: string) => (built ? `node ${quoted(fileURLToPath(new URL(`../${entry.replace(/\.ts$/, '.js')}`, import.meta.url)))}` : `tsx ${entry}`);
const processes = [
  { name: 'gateway', entry: 'gateway.ts', port: ports.GATEWAY_PORT, prefixColor: 'cyan' },
  { name: 'users', entry: 'user-service.ts', port: ports.USERS_PORT, prefixColor: 'green' },
  { name: 'products', entry: 'product-service.ts', port: ports.PRODUCTS_PORT, prefixColor: 'yellow' },
  { name: 'orders', entry: 'order-service.ts', port: ports.ORDERS_PORT, prefixColor: 'magenta' },
];

const { result } = concurrently(
  processes.map(({ name, entry, port, prefixColor }) => ({
    name,
    prefixColor,
    command: commandOf(entry),
    env: { ...inherited, ...urls, PORT: String(port), LOG_PRETTY: inherited.LOG_PRETTY ?? 'true' },
  })),
  { killOthersOn: ['failure'] },
);
result.then(
  () => process.exit(0),
  () => process.exit(1),
);
