// npm run -s token -- <email>: logs a demo user in through the gateway and prints its access token.
//   TOKEN=$(npm run -s token -- bob@example.com)
// GATEWAY_URL (default http://127.0.0.1:3010) and DEMO_PASSWORD (default microservices-demo) as the
// processes read them.
export {};

const email = process.argv[2];
if (!email || process.argv.length > 3) {
  process.stderr.write('usage: npm run -s token -- <email>   (e.g. alice@example.com, bob@example.com, carol@example.com)\n');
  process.exit(2);
}
const gateway = (process.env.GATEWAY_URL || 'http://127.0.0.1:3010').replace(/\/+$/, '');
const password = process.env.DEMO_PASSWORD || 'microservices-demo';

try {
  const res = await fetch(`${gateway}/api/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await res.json().catch(() => ({}))) as { accessToken?: string; error?: string; code?: string };
  if (res.status !== 200 || typeof body.accessToken !== 'string') {
    process.stderr.write(`login failed: ${res.status} ${body.code ?? ''} ${body.error ?? ''}\n`);
    process.exit(1);
  }
  process.stdout.write(`${body.accessToken}\n`);
} catch (err) {
  process.stderr.write(`cannot reach the gateway at ${gateway}: ${(err as Error).message}\n`);
  process.exit(1);
}
