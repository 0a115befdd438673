// The dashboard in a real browser (Debian's Chromium driven by playwright-core) against the four
// processes' apps on port 0: tiles, the fault switches from the page, a trace's waterfall.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startGatewayFor, type StartedGateway } from '../gateway-helpers.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { http } from '../helpers.js';
import { createProduct, createUser, startServices, type System } from '../system.js';
import { CHROMIUM_PATH, skipUnless } from '../support/services.js';

const CHROMIUM = CHROMIUM_PATH;
/** Where the screenshot goes; CI may point it elsewhere. */
const ARTIFACTS = process.env.TEST_ARTIFACTS_DIR ?? join(import.meta.dirname, 'artifacts');
const skip = skipUnless('chromium');

describe('dashboard in a browser', { skip }, () => {
  let sys: System;
  let gw: StartedGateway;
  /** A second address of the product service: its second instance, as the gateway sees it. */
  let secondProducts: FaultProxy;
  let browser: BrowserContext;
  let page: Page;
  let profile: string;
  const consoleErrors: string[] = [];

  before(async () => {
    sys = await startServices();
    secondProducts = await startFaultProxy(sys.products.url);
    // Open for 2 s: long enough for at least two of the page's once-a-second updates to see it.
    // No slow start: once CLOSED, the next request goes through (the ramp has tests of its own).
    gw = await startGatewayFor(sys, { PRODUCTS_URL: `${sys.products.url},${secondProducts.url}`, OUTLIER_CONSECUTIVE_FAILURES: '1', CB_FAILURE_THRESHOLD: '3', CB_RESET_TIMEOUT_MS: '2000', CB_HALF_OPEN_REQUESTS: '1', CB_SLOW_START_MS: '0', CACHE_MAX_ENTRIES: '0', RATE_LIMIT: '100000' });
    profile = mkdtempSync(join(tmpdir(), 'msvc-chromium-'));
    // A fresh profile each run (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1400, height: 1100 },
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('console', (msg) => {
      if (msg.type() === 'error') consoleErrors.push(msg.text());
    });
    page.on('pageerror', (err) => consoleErrors.push(String(err)));
  });

  after(async () => {
    await browser?.close();
    await gw?.close();
    await secondProducts?.close();
    await sys?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const tile = (service: string) => page.locator(`.tile[data-service="${service}"]`);
  /** Sends `n` proxied requests to each service, in parallel. */
  const traffic = async (n: number) => {
    const calls = [];
    for (let i = 0; i < n; i++) for (const path of ['/api/users', '/api/products', '/api/orders']) calls.push(http(gw.url, 'GET', path));
    await Promise.all(calls);
  };

  test('when the page loads, then it shows three CLOSED tiles, live, with no console error', async () => {
    await traffic(5);
    await page.goto(`${gw.url}/dashboard`);
    await page.locator('.tile[data-state="CLOSED"]').nth(2).waitFor({ timeout: 5000 });
    assert.deepEqual(await page.locator('.tile').evaluateAll((tiles) => tiles.map((t) => [t.getAttribute('data-service'), t.querySelector('.state')?.textContent])), [
      ['users', 'CLOSED'],
      ['products', 'CLOSED'],
      ['orders', 'CLOSED'],
    ]);
    assert.equal(await page.locator('#conn').getAttribute('data-conn'), 'live');
    await page.waitForFunction(() => Number(document.querySelector('.tile[data-service="users"] [data-field="rps"]')?.textContent) > 0, undefined, { timeout: 5000 });
    assert.deepEqual(consoleErrors, []);
  });

  test('when errors are switched on for users from the page, then its tile turns OPEN within 5 s while the others stay CLOSED', async () => {
    const users = tile('users');
    await users.locator('input[name="errorRate"]').fill('1');
    await users.locator('[data-action="faults-apply"]').click();
    await users.locator('.faults-active', { hasText: 'errors 100 %' }).waitFor({ timeout: 7000 });
    const started = Date.now();
    await traffic(4);
    await page.locator('.tile[data-service="users"][data-state="OPEN"]').waitFor({ timeout: 5000 });
    assert.ok(Date.now() - started < 5000);
    assert.equal(await tile('products').getAttribute('data-state'), 'CLOSED');
    assert.equal(await tile('orders').getAttribute('data-state'), 'CLOSED');
    await page.waitForFunction(() => Number(document.querySelector('.tile[data-service="users"] [data-field="errorPct"]')?.textContent) > 0, undefined, { timeout: 3000 });
  });

  test('when the switches are cleared and requests continue, then the users tile comes back CLOSED', async () => {
    const users = tile('users');
    await users.locator('[data-action="faults-clear"]').click();
    await page.waitForFunction(() => !document.querySelector('.tile[data-service="users"]')?.classList.contains('faulted'), undefined, { timeout: 7000 });
    const deadline = Date.now() + 10_000;
    while ((await users.getAttribute('data-state')) !== 'CLOSED') {
      assert.ok(Date.now() < deadline, 'users tile did not come back CLOSED');
      await http(gw.url, 'GET', '/api/users');
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await http(gw.url, 'GET', '/api/users')).status, 200);
  });

  test('when a POST /api/orders trace is opened from the list, then the waterfall has rows from all four processes', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const r = await http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] } });
    assert.equal(r.status, 201, r.text);
    await traffic(3);
    // Choosing a filter reloads the list at once.
    await page.locator('select[name="service"]').selectOption('order-service');
    const row = page.locator('.trace-row', { hasText: 'POST /api/orders' }).first();
    await row.waitFor({ timeout: 5000 });
    await row.click();
    await page.locator('#waterfall .span-row').first().waitFor({ timeout: 5000 });
    const services = new Set(await page.locator('#waterfall .span-row').evaluateAll((rows) => rows.map((e) => e.getAttribute('data-service'))));
    assert.deepEqual(services, new Set(['gateway', 'order-service', 'user-service', 'product-service']));
    const depths = await page.locator('#waterfall .span-row').evaluateAll((rows) => rows.map((e) => Number(e.getAttribute('data-depth'))));
    assert.equal(depths[0], 0);
    assert.ok(Math.max(...depths) >= 3, `nested spans expected, got depths ${depths.join(", ")}`);
    // Every bar sits inside the shared axis.
    const bars = await page.locator('#waterfall .bar').evaluateAll((els) => els.map((b) => [parseFloat((b as HTMLElement).style.left), parseFloat((b as HTMLElement).style.width)]));
    for (const [left, width] of bars) assert.ok(left >= 0 && left + width <= 100.5, `bar at ${left}% + ${width}%`);
    assert.match((await page.locator('#waterfall .span-row').first().getAttribute('title')) ?? '', /http\.request\.method = POST/);
    // The products tile has a row per instance: the second one stopped is ejected, the first serves.
    await secondProducts.stop();
    const products = tile('products');
    for (let i = 0; i < 40 && (await products.locator('tr[data-state="ejected"]').count()) === 0; i++) await traffic(1);
    await products.locator('tr[data-state="ejected"]').waitFor({ timeout: 5000 });
    const rows = await products.locator('table.instances tbody tr').evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-instance'), tr.getAttribute('data-state')]));
    assert.deepEqual(rows, [[new URL(sys.products.url).host, 'up'], [new URL(secondProducts.url).host, 'ejected']]);
    await page.waitForFunction(() => Number(document.querySelector('.tile[data-service="products"] tr[data-state="up"] td:nth-child(4)')?.textContent) > 0, undefined, { timeout: 5000 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    assert.deepEqual(consoleErrors, []);
  });

  test('when the gateway has an admin token, then the page asks for it once and its controls work with it', async () => {
    const token = 'browser-admin-token-0123456789';
    const guarded = await startGatewayFor(sys, { ADMIN_TOKEN: token, CB_RESET_TIMEOUT_MS: '60000' });
    const second = await browser.newPage();
    try {
      await second.goto(`${guarded.url}/dashboard`);
      await second.locator('#auth').waitFor({ state: 'visible', timeout: 5000 });
      assert.equal(await second.locator('.tile').count(), 0, 'nothing is shown without the token');
      await second.fill('#token', token);
      await second.click('#auth button');
      await second.locator('.tile[data-state="CLOSED"]').nth(2).waitFor({ timeout: 5000 });
      await second.locator('.tile[data-service="products"] [data-action="circuit-open"]').click();
      await second.locator('.tile[data-service="products"][data-state="OPEN"]').waitFor({ timeout: 5000 });
      assert.equal((await http(guarded.url, 'GET', '/api/products')).status, 503);
    } finally {
      await second.close();
      await guarded.close();
    }
  });
});
