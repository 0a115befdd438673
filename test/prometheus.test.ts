// deploy/prometheus.yml, the alerting rules of deploy/rules/ and the Grafana dashboard: every metric
// they name is one the processes export, and promtool (Debian's prometheus package; CI installs it)
// checks the configs and the rules and runs the rules' tests.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { createGatewayMetrics } from '../lib/gateway/metrics.js';
import { createMetrics } from '../lib/platform/metrics.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEPLOY = `${ROOT}deploy/`;
const run = promisify(execFile);
const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => existsSync(p));
const skipPromtool = PROMTOOL ? false : 'promtool is not installed (apt-get install prometheus); the promtool checks are skipped';

/** Every series name a process of ours can export: the gateway's and the platform's, histograms expanded. */
async function exportedNames(): Promise<Set<string>> {
  const metrics = createMetrics('gateway');
  // The store's metrics exist once a gateway has a shared store (REDIS_URL) and reports on it.
  createGatewayMetrics(metrics.registry).rateLimitStoreUp(true);
  const names = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    if (String(m.type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(m.name + suffix);
  }
  return names;
}

/** The metric names a PromQL expression reads: identifiers followed by a selector, a range or nothing, not functions or labels. */
function metricsIn(expr: string): string[] {
  const withoutStrings = expr.replace(/"[^"]*"/g, '""');
  const words = [...withoutStrings.matchAll(/\b([a-z_][a-z0-9_]*)\b(?!\s*\()/g)].map((m) => m[1]);
  const keywords = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'le', 'offset']);
  // Label names inside `by (...)` and `{...}` are not metrics.
  const labels = new Set([...withoutStrings.matchAll(/(?:by|without|on|ignoring)\s*\(([^)]*)\)/g)].flatMap((m) => m[1].split(',').map((l) => l.trim())));
  for (const m of withoutStrings.matchAll(/\{([^}]*)\}/g)) for (const l of m[1].matchAll(/([a-z_]+)\s*[=!]/g)) labels.add(l[1]);
  return words.filter((w) => !keywords.has(w) && !labels.has(w) && /_/.test(w));
}

interface RuleFile { groups: { rules: { alert: string; expr: string; for?: string }[] }[] }
const rules = parse(readFileSync(`${DEPLOY}rules/alerts.yml`, 'utf8')) as RuleFile;
interface Panel { type: string; title: string; datasource?: { uid: string }; targets?: { expr: string; datasource?: { uid: string } }[] }
const dashboard = JSON.parse(readFileSync(`${DEPLOY}grafana/dashboards/microservices.json`, 'utf8')) as { uid: string; panels: Panel[] };

describe('Prometheus, alerts and the Grafana dashboard', () => {
  test('the alerts are the four the system needs, each on metrics the processes export', async () => {
    const names = await exportedNames();
    const alerts = rules.groups.flatMap((g) => g.rules);
    assert.deepEqual(alerts.map((r) => r.alert).sort(), ['CircuitOpen', 'HighErrorRatio', 'HighLatencyP99', 'RateLimitStoreDown']);
    for (const rule of alerts) {
      const used = metricsIn(rule.expr);
      assert.ok(used.length > 0, `${rule.alert} reads a metric`);
      for (const name of used) assert.ok(names.has(name), `${rule.alert}: ${name} is not exported`);
    }
    assert.equal(alerts.find((r) => r.alert === 'CircuitOpen')?.for, '1m', 'a circuit open over a minute');
  });

  test('every panel of the dashboard queries the provisioned Prometheus for metrics the processes export', async () => {
    const names = await exportedNames();
    const datasources = parse(readFileSync(`${DEPLOY}grafana/provisioning/datasources/prometheus.yml`, 'utf8')) as { datasources: { uid: string }[] };
    const uid = datasources.datasources[0].uid;
    const graphs = dashboard.panels.filter((p) => p.type !== 'row');
    assert.ok(graphs.length >= 8, `${graphs.length} panels`);
    const queried = new Set<string>();
    for (const panel of graphs) {
      assert.equal(panel.datasource?.uid, uid, `${panel.title}: datasource`);
      for (const target of panel.targets ?? []) {
        for (const name of metricsIn(target.expr)) {
          assert.ok(names.has(name), `${panel.title}: ${name} is not exported`);
          queried.add(name);
        }
      }
    }
    for (const name of ['gateway_requests_total', 'gateway_request_duration_seconds_bucket', 'gateway_circuit_state', 'gateway_upstream_instance_up', 'http_request_duration_seconds_bucket']) {
      assert.ok(queried.has(name), `the dashboard shows ${name}`);
    }
  });

  test('deploy/prometheus.yml scrapes the four processes of npm start', () => {
    const config = parse(readFileSync(`${DEPLOY}prometheus.yml`, 'utf8')) as { scrape_configs: { static_configs: { targets: string[] }[] }[]; rule_files: string[] };
    const targets = config.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets)).sort();
    assert.deepEqual(targets, ['localhost:3010', 'localhost:3011', 'localhost:3012', 'localhost:3013']);
    assert.deepEqual(config.rule_files, ['rules/alerts.yml']);
  });

  describe('promtool', { skip: skipPromtool }, () => {
    test('check config accepts both Prometheus configs (and the rules they load)', async () => {
      for (const file of ['prometheus.yml', 'prometheus-compose.yml']) {
        const { stdout } = await run(PROMTOOL!, ['check', 'config', file], { cwd: DEPLOY });
        assert.match(stdout, /SUCCESS: .* is valid prometheus config file syntax/, file);
      }
    });

    test('check rules accepts the alerting rules', async () => {
      const { stdout } = await run(PROMTOOL!, ['check', 'rules', 'rules/alerts.yml'], { cwd: DEPLOY });
      assert.match(stdout, /SUCCESS: 4 rules found/);
    });

    test('test rules: each alert fires when it should and not before', async () => {
      const result = await run(PROMTOOL!, ['test', 'rules', 'rules/alerts.test.yml'], { cwd: DEPLOY }).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: `${err.stdout ?? ''}${err.stderr ?? ''}`, failed: true }));
      assert.ok(!('failed' in result), result.stdout);
      assert.match(result.stdout, /SUCCESS/);
    });
  });
});
