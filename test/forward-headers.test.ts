import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connectionNamed, isUpstreamOnly, upstreamRequestHeaders, withholdCredential, type ClientRequestView } from '../lib/gateway/forward-headers.js';

/** A client request as Node would parse it from `raw` (name/value pairs, repeated ones joined). */
function request(raw: string[], { method = 'GET', ips = [] as string[], peer = '10.0.0.9' } = {}): ClientRequestView {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    headers[name] = headers[name] === undefined ? raw[i + 1] : `${headers[name]}, ${raw[i + 1]}`;
  }
  return { method, rawHeaders: raw, headers, ips, protocol: 'http', host: headers.host, socket: { remoteAddress: peer } };
}

const TRACE = { 'x-trace-id': 'abc', traceparent: '00-abc-def-01' };

/** The forwarded headers as a map (a name sent twice keeps both values, joined). */
function forwarded(req: ClientRequestView, trustsProxies = false): Map<string, string> {
  const list = upstreamRequestHeaders(req, trustsProxies, 'users:3011', TRACE);
  const out = new Map<string, string>();
  for (let i = 0; i < list.length; i += 2) out.set(list[i], out.has(list[i]) ? `${out.get(list[i])}, ${list[i + 1]}` : list[i + 1]);
  return out;
}

describe('connection-named headers (RFC 9110 7.6.1)', () => {
  test('when Connection holds only options, then it names no header', () => {
    for (const value of ['keep-alive', 'close', 'Keep-Alive', 'CLOSE', 'upgrade', '', ' , ,', 'keep-alive, Upgrade']) {
      assert.equal(connectionNamed(value), undefined, value);
    }
    assert.equal(connectionNamed(undefined), undefined);
  });

  test('when Connection names headers with odd case, spaces and empty tokens, then each name is read lower-cased and trimmed', () => {
    assert.deepEqual(connectionNamed(' X-Secret ,\tkeep-alive,,X-Other  , close'), new Set(['x-secret', 'x-other']));
    assert.deepEqual(connectionNamed(['x-a', 'X-B, close']), new Set(['x-a', 'x-b']));
  });
});

describe('request headers to the service', () => {
  test('when the gateway withholds a request\'s credential, then no Authorization reaches the service, in any letter case, while another request\'s does', () => {
    const raw = ['Authorization', 'Bearer expired', 'authorization', 'Bearer again', 'X-Kept', 'yes'];
    const withheld = request(raw);
    withholdCredential(withheld);
    const out = forwarded(withheld);
    assert.equal(out.has('authorization'), false);
    assert.equal(out.get('x-kept'), 'yes');
    assert.equal(forwarded(request(raw)).get('authorization'), 'Bearer expired, Bearer again');
  });

  test('when the client sends hop-by-hop headers, then none reaches the service', () => {
    const out = forwarded(request([
      'Host', 'gw', 'Connection', 'keep-alive, TE', 'Keep-Alive', 'timeout=5', 'Proxy-Connection', 'keep-alive',
      'TE', 'trailers', 'Upgrade', 'h2c', 'HTTP2-Settings', 'AAMAAABkAARAAAAAAAIAAAAA', 'Trailer', 'X-Checksum',
      'Proxy-Authorization', 'Basic eDp5', 'Accept', 'application/json',
    ]));
    for (const name of ['connection', 'keep-alive', 'proxy-connection', 'te', 'upgrade', 'http2-settings', 'trailer', 'proxy-authorization']) {
      assert.equal(out.has(name), false, name);
    }
    assert.equal(out.get('accept'), 'application/json');
    assert.equal(out.get('host'), 'users:3011', 'the instance is the Host');
  });

  test('when Connection names end-to-end headers (repeated, any case, padded), then those are dropped and the rest kept', () => {
    const out = forwarded(request([
      'Connection', 'Authorization', 'connection', ' X-Tenant ,', 'CONNECTION', 'close,,x-empty-ok',
      'authorization', 'Bearer t', 'X-Tenant', 'a', 'x-empty-ok', '1', 'X-Kept', 'yes',
    ]));
    assert.equal(out.has('authorization'), false, 'named by the first Connection header');
    assert.equal(out.has('x-tenant'), false, 'named by the second, with spaces');
    assert.equal(out.has('x-empty-ok'), false, 'named after an empty token');
    assert.equal(out.get('x-kept'), 'yes');
  });

  test('when the client claims an address, a URL or a trace, then only the gateway\'s own values reach the service', () => {
    const out = forwarded(request([
      'X-Forwarded-For', '1.2.3.4', 'X-Real-IP', '1.2.3.4', 'Forwarded', 'for=1.2.3.4', 'X-Forwarded-Host', 'evil',
      'X-Forwarded-Proto', 'https', 'X-Original-URL', '/admin', 'True-Client-IP', '1.2.3.4', 'X-Trace-Id', 'forged',
      'Traceparent', '00-forged-forged-01', 'Request-Timeout', '999999', 'X-Client-Address', '1.2.3.4', 'Via', '1.1 other',
    ]));
    assert.equal(out.get('x-forwarded-for'), '10.0.0.9');
    assert.equal(out.get('x-real-ip'), '10.0.0.9');
    assert.equal(out.get('x-forwarded-proto'), 'http');
    assert.equal(out.get('x-trace-id'), 'abc');
    assert.equal(out.get('traceparent'), '00-abc-def-01');
    for (const name of ['forwarded', 'x-forwarded-host', 'x-original-url', 'true-client-ip', 'request-timeout', 'x-client-address']) {
      assert.equal(out.has(name), false, name);
    }
    assert.equal(out.get('via'), '1.1 other', 'Via passes as it does today: the gateway adds none');
  });

  test('when a header name holds an underscore, then it does not reach the service, since a CGI-style backend would read X_Forwarded_For as X-Forwarded-For', () => {
    const out = forwarded(request(['X_Forwarded_For', '1.2.3.4', 'Transfer_Encoding', 'chunked', 'X_Real_IP', '1.2.3.4', 'X-Custom', 'kept']));
    for (const name of ['x_forwarded_for', 'transfer_encoding', 'x_real_ip']) assert.equal(out.has(name), false, name);
    assert.equal(out.get('x-forwarded-for'), '10.0.0.9');
    assert.equal(out.get('x-custom'), 'kept');
  });

  test('when trust proxy believes the client\'s proxies, then X-Forwarded-For keeps them before the peer', () => {
    const out = forwarded(request(['X-Forwarded-For', '9.9.9.9'], { ips: ['1.1.1.1', '2.2.2.2'] }), true);
    assert.equal(out.get('x-forwarded-for'), '1.1.1.1, 2.2.2.2, 10.0.0.9');
    assert.equal(out.get('x-real-ip'), '1.1.1.1');
  });

  test('when a body is framed by length, by chunks or not at all, then it is framed once, the same way', () => {
    const length = forwarded(request(['Content-Length', '5'], { method: 'POST' }));
    assert.equal(length.get('content-length'), '5');
    assert.equal(length.has('transfer-encoding'), false);
    const chunked = forwarded(request(['Transfer-Encoding', 'chunked'], { method: 'DELETE' }));
    assert.equal(chunked.get('transfer-encoding'), 'chunked');
    assert.equal(chunked.has('content-length'), false);
    assert.equal(forwarded(request([], { method: 'POST' })).get('content-length'), '0', 'a POST without a body says so');
    const get = forwarded(request([]));
    assert.equal(get.has('content-length') || get.has('transfer-encoding'), false, 'a GET without a body is not framed');
  });

  test('when Connection names a header the gateway sets itself, then the gateway still sets it', () => {
    const out = forwarded(request(['Connection', 'host, x-forwarded-for, x-real-ip, content-length', 'Content-Length', '2'], { method: 'POST' }));
    assert.equal(out.get('host'), 'users:3011');
    assert.equal(out.get('x-forwarded-for'), '10.0.0.9');
    assert.equal(out.get('content-length'), '2', 'the framing is never dropped');
  });
});

describe('response headers to the client', () => {
  test('when the service sends hop-by-hop and trace headers, then the client gets none of them', () => {
    for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'proxy-authenticate', 'trailer', 'upgrade', 'te', 'x-trace-id', 'x-span-id', 'x-response-time']) {
      assert.equal(isUpstreamOnly(name, undefined), true, name);
    }
    assert.equal(isUpstreamOnly('content-type', undefined), false);
    assert.equal(isUpstreamOnly('set-cookie', undefined), false);
  });

  test('when the service\'s Connection names a header, then the client does not get it', () => {
    const named = connectionNamed('keep-alive, X-Internal-Node');
    assert.equal(isUpstreamOnly('x-internal-node', named), true);
    assert.equal(isUpstreamOnly('content-type', named), false);
  });
});
