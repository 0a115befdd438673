// The processes of `npm run start:scaled` and the environment each one gets: two gateways and two
// instances of every service on one machine, sharing PostgreSQL and Redis. `npm run scaled:check`
// reads the same layout to find them.
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type ScaledService = 'gateway' | 'users' | 'products' | 'orders';

export interface ScaledProcess {
  /** `gateway-1`, `products-2`, ...: the prefix of its output lines and its name in the state file. */
  name: string;
  service: ScaledService;
  /** The entry file, relative to the repository's root. */
  entry: string;
  port: number;
  /** Where the other processes reach it. */
  url: string;
  /** What it gets on top of the inherited environment. */
  env: Record<string, string>;
}

const SERVICES: readonly ScaledService[] = ['gateway', 'users', 'products', 'orders'];
const INSTANCES = 2;
export const DEFAULT_BASE_PORT = 3010;

const ENTRY: Record<ScaledService, string> = {
  gateway: 'gateway.ts',
  users: 'user-service.ts',
  products: 'product-service.ts',
  orders: 'order-service.ts',
};

/**
 * Instance i (0 or 1) of the service at offset k (gateway 0, users 1, products 2, orders 3) listens
 * on base + 10 i + k: 3010-3013 and 3020-3023 by default, so the first gateway is where `npm start`'s is.
 */
export const portOf = (basePort: number, service: ScaledService, instance: number): number =>
  basePort + 10 * instance + SERVICES.indexOf(service);

/** The highest port the layout uses, for the check of SCALED_BASE_PORT. */
export const LAST_PORT_OFFSET = 10 * (INSTANCES - 1) + SERVICES.length - 1;

/** Where start:scaled keeps its run (the services' DATA_DIRs and the state file), per base port. */
export const runDirOf = (basePort: number): string => join(tmpdir(), `microservices-scaled-${basePort}`);
export const stateFileOf = (basePort: number): string => join(runDirOf(basePort), 'state.json');

/** What start:scaled writes once every process answers, and again after each restart. */
export interface ScaledState {
  pid: number;
  processes: { name: string; service: ScaledService; port: number; url: string; pid: number | null }[];
}

export interface LayoutOptions {
  basePort: number;
  /** The address the processes listen on (HOST); a wildcard is reached on loopback. */
  host: string;
  databaseUrl: string;
  redisUrl: string;
  /** The product service's /internal/* credential, shared with the order service. */
  internalToken: string;
  runDir: string;
}

function reachableHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '[::1]';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

export function scaledProcesses({ basePort, host, databaseUrl, redisUrl, internalToken, runDir }: LayoutOptions): ScaledProcess[] {
  const at = reachableHost(host);
  const urlOf = (service: ScaledService, i: number) => `http://${at}:${portOf(basePort, service, i)}`;
  const all = (service: ScaledService) => Array.from({ length: INSTANCES }, (_, i) => urlOf(service, i)).join(',');
  const envOf = (service: ScaledService, i: number, name: string): Record<string, string> => {
    const port = String(portOf(basePort, service, i));
    switch (service) {
      case 'gateway':
        return {
          PORT: port,
          USERS_URL: all('users'),
          PRODUCTS_URL: all('products'),
          ORDERS_URL: all('orders'),
          GATEWAY_PEERS: Array.from({ length: INSTANCES }, (_, j) => j).filter((j) => j !== i).map((j) => urlOf('gateway', j)).join(','),
          REDIS_URL: redisUrl,
          // Shown to the user service when the gateway asks a token's account version, and to
          // every service's fault switch route.
          INTERNAL_TOKEN: internalToken,
        };
      case 'users':
        return { PORT: port, DATABASE_URL: databaseUrl, DATA_DIR: join(runDir, name), INTERNAL_TOKEN: internalToken };
      case 'products':
        // Its USERS_URL only serves the JWKS, asked of each user-service instance in turn.
        return { PORT: port, DATABASE_URL: databaseUrl, DATA_DIR: join(runDir, name), USERS_URL: all('users'), INTERNAL_TOKEN: internalToken };
      case 'orders':
        return { PORT: port, DATABASE_URL: databaseUrl, DATA_DIR: join(runDir, name), USERS_URL: all('users'), PRODUCTS_URL: all('products'), INTERNAL_TOKEN: internalToken };
    }
  };
  const processes: ScaledProcess[] = [];
  for (let i = 0; i < INSTANCES; i++) {
    for (const service of SERVICES) {
      const name = `${service}-${i + 1}`;
      processes.push({ name, service, entry: ENTRY[service], port: portOf(basePort, service, i), url: urlOf(service, i), env: envOf(service, i, name) });
    }
  }
  return processes;
}

/**
 * Variables start:scaled sets itself for some process: taken out of the inherited environment, so
 * a value exported for `npm start` (one DATABASE_SCHEMA for all three, one PORT) cannot leak into
 * every process.
 */
export const CONTROLLED_KEYS = ['PORT', 'USERS_URL', 'PRODUCTS_URL', 'ORDERS_URL', 'GATEWAY_PEERS', 'REDIS_URL', 'DATABASE_URL', 'DATABASE_SCHEMA', 'DATA_DIR', 'INTERNAL_TOKEN'] as const;
