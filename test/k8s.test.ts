// deploy/k8s, checked without a cluster: rendered with `kubectl kustomize` where kubectl is
// installed (CI installs it), else by reading the kustomizations' files and applying their patches
// here. Every variable a Deployment gives its process is one that process reads, with a value its
// config schema takes; every URL names a Service of the render at its port, in front of the
// process that serves it; probes, the drain, disruption budgets and autoscalers are all there.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { assertTakenBy, builtCommand, entryOfCommand } from './support/config-schemas.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const KUBECTL = ['/usr/bin/kubectl', '/usr/local/bin/kubectl'].find((p) => existsSync(p));

interface Meta { name: string; labels?: Record<string, string> }
interface EnvVar { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string } } }
interface Probe { httpGet?: { path: string; port: string | number }; tcpSocket?: { port: string | number }; exec?: { command: string[] } }
interface Container {
  name: string;
  image: string;
  command?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: Probe };
  resources?: { requests?: { cpu?: string } };
}
interface PodSpec { terminationGracePeriodSeconds?: number; containers: Container[] }
interface Resource {
  apiVersion: string;
  kind: string;
  metadata: Meta;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  spec?: {
    replicas?: number;
    selector?: { matchLabels?: Record<string, string> } & Record<string, string>;
    template?: { metadata: { labels: Record<string, string> }; spec: PodSpec };
    ports?: { port: number; targetPort?: string | number }[];
    minAvailable?: number;
    maxUnavailable?: number;
    scaleTargetRef?: { kind: string; name: string };
    minReplicas?: number;
    metrics?: { type: string; resource?: { name: string } }[];
  };
}

/** A JSON patch of the few kinds the kustomizations use: add and replace, at a path of keys. */
function applyPatch(doc: Record<string, unknown>, ops: { op: string; path: string; value: unknown }[]): void {
  for (const { op, path, value } of ops) {
    assert.ok(op === 'add' || op === 'replace', `patch op ${op}: teach this test`);
    const keys = path.split('/').slice(1).map((k) => k.replace(/~1/g, '/').replace(/~0/g, '~'));
    let at = doc;
    for (const k of keys.slice(0, -1)) at = (at[k] ??= {}) as Record<string, unknown>;
    at[keys.at(-1)!] = value;
  }
}

/** What `kubectl kustomize dir` makes, for kustomizations of resources and targeted JSON patches. */
function readKustomization(dir: string): Resource[] {
  const k = parseAllDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'))[0].toJS() as {
    resources?: string[];
    labels?: { pairs: Record<string, string> }[];
    patches?: { target: { kind: string; name: string }; patch: string }[];
    images?: { name: string; newName?: string; newTag?: string }[];
  };
  const out: Resource[] = [];
  for (const r of k.resources ?? []) {
    const path = join(dir, r);
    if (statSync(path).isDirectory()) out.push(...readKustomization(path));
    else for (const d of parseAllDocuments(readFileSync(path, 'utf8'))) if (d.contents) out.push(d.toJS() as Resource);
  }
  for (const res of out) {
    if (!['Secret', 'ConfigMap', 'Service', 'Deployment', 'StatefulSet', 'PodDisruptionBudget', 'HorizontalPodAutoscaler'].includes(res.kind)) continue;
    for (const l of k.labels ?? []) res.metadata.labels = { ...res.metadata.labels, ...l.pairs };
    for (const c of res.spec?.template?.spec.containers ?? []) {
      for (const image of k.images ?? []) {
        if (c.image.split(':')[0] === image.name) c.image = `${image.newName ?? image.name}:${image.newTag ?? 'latest'}`;
      }
    }
  }
  for (const p of k.patches ?? []) {
    const name = new RegExp(`^${p.target.name}$`);
    for (const res of out.filter((x) => x.kind === p.target.kind && name.test(x.metadata.name))) {
      applyPatch(res as unknown as Record<string, unknown>, parseAllDocuments(p.patch)[0].toJS() as { op: string; path: string; value: unknown }[]);
    }
  }
  return out;
}

async function render(dir: string): Promise<Resource[]> {
  if (!KUBECTL) return readKustomization(join(ROOT, dir));
  const { stdout } = await promisify(execFile)(KUBECTL, ['kustomize', dir], { cwd: ROOT, maxBuffer: 16 << 20 });
  return parseAllDocuments(stdout).filter((d) => d.contents).map((d) => d.toJS() as Resource);
}

const ENTRY_OF: Record<string, string> = { gateway: 'gateway.ts', users: 'user-service.ts', products: 'product-service.ts', orders: 'order-service.ts' };
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string>) =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The environment a Deployment's container starts with, ConfigMaps and Secrets resolved. */
function environmentOf(all: Resource[], c: Container): Record<string, string> {
  const find = (kind: string, name: string) => {
    const r = all.find((x) => x.kind === kind && x.metadata.name === name);
    assert.ok(r, `${c.name}: ${kind} ${name} is not in the render`);
    const values = { ...r.stringData, ...r.data };
    if (kind === 'Secret' && r.data) for (const [k, v] of Object.entries(r.data)) values[k] = Buffer.from(v, 'base64').toString('utf8');
    return values;
  };
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) Object.assign(env, find('ConfigMap', from.configMapRef.name));
    if (from.secretRef) Object.assign(env, find('Secret', from.secretRef.name));
  }
  for (const v of c.env ?? []) {
    const ref = v.valueFrom?.secretKeyRef ?? v.valueFrom?.configMapKeyRef;
    const value = ref ? find(v.valueFrom?.secretKeyRef ? 'Secret' : 'ConfigMap', ref.name)[ref.key] : v.value;
    assert.ok(typeof value === 'string', `${c.name}: ${v.name} has no value`);
    env[v.name] = value;
  }
  return env;
}

function checkRender(all: Resource[], { demo }: { demo: boolean }): void {
  const deployments = all.filter((r) => r.kind === 'Deployment');
  assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), Object.keys(ENTRY_OF).sort());
  const services = all.filter((r) => r.kind === 'Service');
  const envs = new Map<string, Record<string, string>>();

  for (const d of deployments) {
    const name = d.metadata.name;
    const spec = d.spec!;
    assert.equal(spec.replicas, 2, `${name} replicas`);
    const pod = spec.template!;
    assert.ok(selects(spec.selector?.matchLabels, pod.metadata.labels), `${name}: its selector matches its pods`);
    assert.equal(pod.spec.containers.length, 1, name);
    const c = pod.spec.containers[0];
    const entry = entryOfCommand(c.command);
    assert.equal(entry, ENTRY_OF[name], `${name} runs ${ENTRY_OF[name]}`);
    assert.deepEqual(c.command, builtCommand(entry), `${name}: the image's way to start a process`);
    assert.match(c.image, /^microservices-gateway:/, `${name}: the image of deploy/Dockerfile`);

    // Its variables: each read by the process, all taken by its schema.
    const env = environmentOf(all, c);
    envs.set(name, env);
    assertTakenBy(entry, env, `${name} (${entry})`);
    const port = c.ports?.find((p) => p.name === 'http')?.containerPort;
    assert.equal(String(port), env.PORT, `${name}: the container port is its PORT`);

    // Ready on /health, alive on something that does not depend on the database.
    assert.equal(c.readinessProbe?.httpGet?.path, '/health', `${name} readiness`);
    assert.ok([port, 'http'].includes(c.readinessProbe.httpGet.port), `${name} readiness port`);
    assert.ok(c.livenessProbe?.tcpSocket ?? c.livenessProbe?.httpGet, `${name} liveness`);
    assert.notEqual(c.livenessProbe?.httpGet?.path, '/health', `${name}: a database outage must not restart it`);

    // The drain: preStop, then the process's STOP_TIMEOUT_MS, both within the grace period.
    const sleep = c.lifecycle?.preStop?.exec?.command;
    assert.equal(sleep?.[0], 'sleep', `${name} preStop`);
    const preStopS = Number(sleep[1]);
    const stopS = Number(env.STOP_TIMEOUT_MS ?? 10_000) / 1000;
    assert.ok(preStopS >= 1 && preStopS <= 10, `${name}: preStop ${preStopS} s`);
    const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
    assert.ok(grace >= preStopS + stopS + 1, `${name}: terminationGracePeriodSeconds ${grace} >= preStop ${preStopS} + STOP_TIMEOUT_MS ${stopS} + 1`);
    assert.ok(grace <= preStopS + stopS + 15, `${name}: terminationGracePeriodSeconds ${grace} is not far beyond the drain`);

    // A Service in front, a disruption budget, an autoscaler on CPU (which needs a CPU request).
    const svc = services.find((s) => selects(s.spec?.selector, pod.metadata.labels));
    assert.ok(svc, `${name}: a Service selects its pods`);
    assert.ok(svc.spec!.ports!.some((p) => String(p.port) === env.PORT), `${name}: its Service serves ${env.PORT}`);
    const pdb = all.find((r) => r.kind === 'PodDisruptionBudget' && selects(r.spec?.selector?.matchLabels, pod.metadata.labels));
    assert.ok(pdb, `${name}: a PodDisruptionBudget`);
    assert.ok((pdb.spec!.minAvailable ?? 0) >= 1 || pdb.spec!.maxUnavailable === 1, `${name}: the budget keeps one pod`);
    assert.ok((pdb.spec!.minAvailable ?? 0) < spec.replicas, `${name}: the budget lets a node drain`);
    const hpa = all.find((r) => r.kind === 'HorizontalPodAutoscaler' && r.spec?.scaleTargetRef?.kind === 'Deployment' && r.spec.scaleTargetRef.name === name);
    assert.ok(hpa, `${name}: a HorizontalPodAutoscaler`);
    assert.ok(hpa.spec!.metrics!.some((m) => m.type === 'Resource' && m.resource?.name === 'cpu'), `${name}: scaled on CPU`);
    assert.ok((hpa.spec!.minReplicas ?? 1) >= 2, `${name}: never below two replicas`);
    assert.ok(c.resources?.requests?.cpu, `${name}: a CPU request, which utilization is counted against`);
  }

  // Every URL between our processes names the Service in front of the process that serves it.
  const wanted: Record<string, string> = { USERS_URL: 'users', PRODUCTS_URL: 'products', ORDERS_URL: 'orders', JWKS_URL: 'users' };
  const checked = new Set<string>();
  for (const [name, env] of envs) {
    for (const [key, value] of Object.entries(env)) {
      if (!(key in wanted)) continue;
      for (const item of value.split(',')) {
        const url = new URL(item);
        const svc = services.find((s) => s.metadata.name === url.hostname);
        assert.ok(svc, `${name} ${key}=${item}: no Service ${url.hostname}`);
        const target = deployments.find((d) => selects(svc.spec?.selector, d.spec!.template!.metadata.labels));
        assert.equal(target?.metadata.name, wanted[key], `${name} ${key}=${item}: the Service is in front of ${target?.metadata.name}`);
        assert.ok(svc.spec!.ports!.some((p) => String(p.port) === url.port), `${name} ${key}=${item}: its Service serves ${url.port}`);
        checked.add(key);
      }
    }
  }
  for (const key of ['USERS_URL', 'PRODUCTS_URL', 'ORDERS_URL']) assert.ok(checked.has(key), `some process is given ${key}`);

  // The datastores: outside the cluster in the base, the demo's StatefulSets in the overlay.
  for (const [key, protocol, port, user] of [['DATABASE_URL', 'postgres:', '5432', 'POSTGRES_USER'], ['REDIS_URL', 'redis:', '6379', '']] as const) {
    const urls = new Set([...envs.values()].map((e) => e[key]).filter(Boolean));
    assert.equal(urls.size, 1, `one ${key} for every process that reads it`);
    const url = new URL([...urls][0]);
    assert.equal(url.protocol, protocol, key);
    if (!demo) continue;
    const svc = services.find((s) => s.metadata.name === url.hostname);
    assert.ok(svc, `${key}: no Service ${url.hostname}`);
    const set = all.find((r) => r.kind === 'StatefulSet' && selects(svc.spec?.selector, r.spec!.template!.metadata.labels));
    assert.ok(set, `${key}: the Service ${url.hostname} is in front of a StatefulSet`);
    assert.equal(url.port || port, port, key);
    if (user) {
      const c = set.spec!.template!.spec.containers[0];
      const env = environmentOf(all, c);
      assert.deepEqual([decodeURIComponent(url.username), decodeURIComponent(url.password), url.pathname.slice(1)], [env[user], env.POSTGRES_PASSWORD, env.POSTGRES_DB], `${key}: the StatefulSet's user, password and database`);
    }
  }
  if (demo) assert.deepEqual(all.filter((r) => r.kind === 'StatefulSet').map((r) => r.metadata.name).sort(), ['postgres', 'redis']);
  else assert.equal(all.filter((r) => r.kind === 'StatefulSet').length, 0, 'the base runs no datastore');
}

describe(`deploy/k8s (rendered by ${KUBECTL ? 'kubectl kustomize' : 'this test, kubectl not being installed'})`, () => {
  test('the base: the four processes, two replicas each, every variable one they read, probes, drain, budgets and autoscalers; PostgreSQL and Redis outside', async () => {
    checkRender(await render('deploy/k8s'), { demo: false });
  });

  test('the demo overlay: the same, with PostgreSQL and Redis as StatefulSets the Secret points at', async () => {
    checkRender(await render('deploy/k8s/overlays/demo'), { demo: true });
  });
});
