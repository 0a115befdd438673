// deploy/compose.yaml, checked without Docker: every variable it sets on a container of ours is one
// that container's process reads, with a value its config schema takes; every URL names a service
// of the file at the port that service listens on; the layout is npm run start:scaled's.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { scaledProcesses } from '../scripts/scaled-layout.js';
import { assertTakenBy, builtCommand, entryOfCommand, SCHEMAS } from './support/config-schemas.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] };
}
interface ComposeFile { services: Record<string, ComposeService> }

const compose = parse(readFileSync(new URL('../deploy/compose.yaml', import.meta.url), 'utf8'), { merge: true }) as ComposeFile;
const services = compose.services;

/**
 * Compose's interpolation as it reads the file with none of the variables set in the shell (as in
 * CI): `${X:-default}` and `${X-default}` give the default, `${X}` and `$X` nothing, `$$` a `$`.
 */
function interpolate(value: string): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (match, _braced, fallback: string | undefined) => {
    if (match === '$$') return '$';
    return fallback ?? '';
  });
}

/** A container's environment after interpolation, as the process sees it. */
function environmentOf(service: ComposeService): Record<string, string> {
  const env: Record<string, string> = {};
  const raw = service.environment ?? {};
  const entries = Array.isArray(raw) ? raw.map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)] as const) : Object.entries(raw);
  for (const [key, value] of entries) {
    assert.ok(typeof value === 'string', `${key} is given as ${JSON.stringify(value)}: write it as a string, as the process reads it`);
    env[key] = interpolate(value);
  }
  return env;
}

/** Our containers: the ones whose command runs one of the four entry files. */
const ours = Object.entries(services)
  .map(([name, service]) => ({ name, service, entry: entryOfCommand(service.command) }))
  .filter((c): c is { name: string; service: ComposeService; entry: string } => c.entry !== undefined);
const envOf = new Map(ours.map((c) => [c.name, environmentOf(c.service)]));
const runningEntry = (entry: string) => ours.filter((c) => c.entry === entry).map((c) => c.name).sort();

describe('deploy/compose.yaml', () => {
  test('runs two of each service and two gateways, each from an entry file of the repository, built', () => {
    for (const entry of Object.keys(SCHEMAS)) assert.equal(runningEntry(entry).length, 2, `containers running ${entry}`);
    for (const { name, service, entry } of ours) {
      assert.deepEqual(service.command, builtCommand(entry), name);
      assert.ok(existsSync(`${ROOT}${entry}`), `${name}: ${entry} exists`);
      assert.equal(service.build?.dockerfile, 'deploy/Dockerfile', name);
      assert.ok(existsSync(`${ROOT}deploy/Dockerfile`));
    }
    assert.match(services.postgres?.image ?? '', /^postgres:15/);
    assert.match(services.redis?.image ?? '', /^redis:7/);
    assert.match(services.jaeger?.image ?? '', /^jaegertracing\//);
  });

  for (const { name, entry } of ours) {
    test(`${name}: every variable it sets is one ${entry} reads, with a value it takes`, () => {
      const env = envOf.get(name)!;
      const config = assertTakenBy(entry, env, `${name} (${entry})`);
      assert.equal(config.PORT, Number(env.PORT), `${name} listens on its PORT`);
    });
  }

  test('every URL names a service of the file, at the port that service listens on', () => {
    const postgres = services.postgres.environment as Record<string, string>;
    const checked: string[] = [];
    for (const { name } of ours) {
      for (const [key, value] of Object.entries(envOf.get(name)!)) {
        if (!/_URL$|^GATEWAY_PEERS$|^OTEL_EXPORTER_OTLP_ENDPOINT$/.test(key) || value === '') continue;
        for (const item of value.split(',')) {
          const url = new URL(item);
          const target = url.hostname;
          const where = `${name} ${key}=${item}`;
          assert.ok(target in services, `${where}: no service ${target} in the file`);
          assert.ok(target !== name, `${where}: names itself`);
          checked.push(key);
          if (key === 'DATABASE_URL') {
            assert.deepEqual([url.protocol, target, url.port, url.password, url.pathname], ['postgres:', 'postgres', '5432', postgres.POSTGRES_PASSWORD, `/${postgres.POSTGRES_DB}`], where);
          } else if (key === 'REDIS_URL') {
            assert.deepEqual([url.protocol, target, url.port], ['redis:', 'redis', '6379'], where);
          } else if (key === 'OTEL_EXPORTER_OTLP_ENDPOINT') {
            assert.deepEqual([target, url.port], ['jaeger', '4318'], where);
          } else {
            const wanted = { USERS_URL: 'user-service.ts', PRODUCTS_URL: 'product-service.ts', ORDERS_URL: 'order-service.ts', GATEWAY_PEERS: 'gateway.ts' }[key];
            assert.ok(wanted, `${where}: a URL variable this test does not know`);
            assert.ok(runningEntry(wanted).includes(target), `${where}: ${target} does not run ${wanted}`);
            assert.equal(url.port, envOf.get(target)!.PORT, `${where}: ${target} listens on ${envOf.get(target)!.PORT}`);
          }
        }
      }
    }
    for (const key of ['DATABASE_URL', 'REDIS_URL', 'USERS_URL', 'PRODUCTS_URL', 'ORDERS_URL', 'GATEWAY_PEERS', 'OTEL_EXPORTER_OTLP_ENDPOINT']) assert.ok(checked.includes(key), `some container sets ${key}`);
  });

  test('the gateways and the order services list every instance, and each gateway the other as its peer', () => {
    const instances = (entry: string) => runningEntry(entry).map((target) => `http://${target}:${envOf.get(target)!.PORT}`).sort();
    const listed = (value: string | undefined) => (value ?? '').split(',').filter(Boolean).sort();
    for (const name of runningEntry('gateway.ts')) {
      const env = envOf.get(name)!;
      assert.deepEqual(listed(env.USERS_URL), instances('user-service.ts'), `${name} USERS_URL`);
      assert.deepEqual(listed(env.PRODUCTS_URL), instances('product-service.ts'), `${name} PRODUCTS_URL`);
      assert.deepEqual(listed(env.ORDERS_URL), instances('order-service.ts'), `${name} ORDERS_URL`);
      assert.deepEqual(listed(env.GATEWAY_PEERS), instances('gateway.ts').filter((url) => !url.includes(`//${name}:`)), `${name} GATEWAY_PEERS`);
    }
    for (const name of runningEntry('product-service.ts')) {
      assert.deepEqual(listed(envOf.get(name)!.USERS_URL), instances('user-service.ts'), `${name} USERS_URL`);
    }
    for (const name of runningEntry('order-service.ts')) {
      assert.deepEqual(listed(envOf.get(name)!.USERS_URL), instances('user-service.ts'), `${name} USERS_URL`);
      assert.deepEqual(listed(envOf.get(name)!.PRODUCTS_URL), instances('product-service.ts'), `${name} PRODUCTS_URL`);
    }
  });

  test('the secrets every process must share are the same everywhere', () => {
    const values = (key: string, entries: string[]) => new Set(ours.filter((c) => entries.includes(c.entry)).map((c) => envOf.get(c.name)![key]));
    const internal = values('INTERNAL_TOKEN', Object.keys(SCHEMAS));
    assert.equal(internal.size, 1, 'one INTERNAL_TOKEN for all four');
    assert.ok([...internal][0].length >= 16);
    assert.equal(values('ADMIN_TOKEN', Object.keys(SCHEMAS)).size, 1, 'one ADMIN_TOKEN for all four');
    assert.equal(values('AUTH_MODE', Object.keys(SCHEMAS)).size, 1, 'one AUTH_MODE for all four');
  });

  test('has the layout, ports and variables of npm run start:scaled', () => {
    const layout = scaledProcesses({ basePort: 3010, host: '127.0.0.1', databaseUrl: 'postgres://x', redisUrl: 'redis://x', internalToken: 'x'.repeat(16), runDir: '/tmp/x' });
    assert.deepEqual(ours.map((c) => c.name).sort(), layout.map((p) => p.name).sort());
    // What compose adds for every container (network, Jaeger, settings from your shell); DATA_DIR
    // is the image's own there.
    const composeOnly = new Set(['HOST', 'LOG_PRETTY', 'AUTH_MODE', 'ADMIN_TOKEN', 'OTEL_EXPORTER_OTLP_ENDPOINT', 'RATE_LIMIT', 'RATE_LIMIT_STORE_FAILURE', 'ADMIN_ALLOW_ADDRESSES']);
    for (const p of layout) {
      const env = envOf.get(p.name)!;
      assert.equal(env.PORT, String(p.port), `${p.name} PORT`);
      assert.deepEqual(Object.keys(env).filter((k) => !composeOnly.has(k)).sort(), Object.keys(p.env).filter((k) => k !== 'DATA_DIR').sort(), `${p.name}: the variables start:scaled sets`);
    }
  });

  test('publishes the two gateways and the UIs of Jaeger, Prometheus and Grafana on loopback only; every container of ours has a health check and waits for what it needs', () => {
    const published = Object.entries(services).flatMap(([name, s]) => (s.ports ?? []).map((port) => `${name} ${port}`)).sort();
    assert.deepEqual(published, ['gateway-1 127.0.0.1:3010:3010', 'gateway-2 127.0.0.1:3020:3020', 'grafana 127.0.0.1:3000:3000', 'jaeger 127.0.0.1:16686:16686', 'prometheus 127.0.0.1:9090:9090']);
    for (const [name, s] of Object.entries(services)) {
      for (const dep of Object.keys(s.depends_on ?? {})) assert.ok(dep in services, `${name} depends on ${dep}, which the file does not define`);
    }
    for (const { name, service, entry } of ours) {
      assert.ok(service.healthcheck?.test.join(' ').includes('/health'), `${name} health check`);
      const deps = Object.keys(service.depends_on ?? {});
      assert.ok(deps.includes(entry === 'gateway.ts' ? 'redis' : 'postgres'), `${name} waits for its store`);
      if (entry === 'gateway.ts') for (const other of ours.filter((c) => c.entry !== 'gateway.ts')) assert.ok(deps.includes(other.name), `${name} waits for ${other.name}`);
    }
    for (const name of ['postgres', 'redis']) assert.ok(services[name].healthcheck, `${name} health check`);
  });

  test('Prometheus scrapes every container of ours, and every file or folder mounted from the repository exists', () => {
    const scrape = parse(readFileSync(new URL('../deploy/prometheus-compose.yml', import.meta.url), 'utf8')) as { scrape_configs: { static_configs: { targets: string[] }[] }[] };
    const targets = scrape.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets)).sort();
    assert.deepEqual(targets, ours.map((c) => `${c.name}:${envOf.get(c.name)!.PORT}`).sort());
    const mounts = Object.values(services).flatMap((s) => (s as { volumes?: string[] }).volumes ?? []).map((v) => v.split(':')[0]).filter((source) => source.startsWith('.'));
    assert.ok(mounts.length >= 4, `mounts: ${mounts.join(', ')}`);
    for (const source of mounts) assert.ok(existsSync(new URL(`../deploy/${source}`, import.meta.url)), `deploy/${source} exists`);
  });
});
