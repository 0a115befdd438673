// An upstream for attack tests: records the exact bytes each connection carried, and answers each
// request it parses with what it saw (or with what the test says), so a test can check both what
// the gateway sent and how the upstream read it.
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { splitMessages, type Message } from './http-messages.js';

export interface EchoRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
}

export interface EchoAnswer {
  status?: number;
  headers?: OutgoingHttpHeaders;
  body?: string;
}

export interface EchoUpstream {
  url: string;
  /** Requests as the upstream's parser read them, GET /health (the gateway's probes) left out. */
  requests: EchoRequest[];
  /** The bytes of every connection since the last reset(), in the order connections were opened. */
  connections(): Buffer[];
  /** Every connection's bytes since the last reset() cut into messages by their framing (probes left out); throws on bytes it cannot frame. */
  messages(): Message[];
  /** Forgets the requests and bytes seen so far (pooled connections stay open). */
  reset(): void;
  /** How to answer requests from now on; by default the echo. A promise holds the answer until it settles. */
  answer: (req: EchoRequest) => EchoAnswer | Promise<EchoAnswer>;
  close(): Promise<void>;
}

const isProbe = (m: { line?: string; method?: string; url?: string }): boolean =>
  m.line !== undefined ? m.line.startsWith('GET /health ') : m.method === 'GET' && m.url === '/health';

export const echo = (req: EchoRequest): EchoAnswer => ({ body: JSON.stringify({ method: req.method, url: req.url, body: req.body }) });

export async function startEchoUpstream(): Promise<EchoUpstream> {
  const connections: Array<{ bytes: Buffer; from: number }> = [];
  const sockets = new Set<Socket>();
  const upstream: EchoUpstream = {
    url: '',
    requests: [],
    connections: () => connections.map((c) => c.bytes.subarray(c.from)),
    reset: () => {
      upstream.requests.length = 0;
      for (const c of connections) c.from = c.bytes.length;
    },
    messages: () =>
      upstream.connections().flatMap((bytes) => {
        const { messages, rest } = splitMessages(bytes);
        if (rest.length) throw new Error(`unframed bytes at the end of a connection: ${JSON.stringify(rest.toString('latin1').slice(0, 200))}`);
        return messages.filter((m) => !isProbe(m));
      }),
    answer: echo,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('end', () => {
      const seen: EchoRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('latin1') };
      if (!isProbe(seen)) upstream.requests.push(seen);
      const write = (answer: EchoAnswer) => {
        const body = answer.body ?? '';
        res.writeHead(answer.status ?? 200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), ...answer.headers });
        res.end(body);
      };
      const answer = isProbe(seen) ? { body: '{"status":"healthy"}' } : upstream.answer(seen);
      if (answer instanceof Promise) void answer.then(write, () => res.destroy());
      else write(answer);
    });
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    const connection = { bytes: Buffer.alloc(0), from: 0 };
    connections.push(connection);
    socket.on('data', (chunk: Buffer) => {
      connection.bytes = Buffer.concat([connection.bytes, chunk]);
    });
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  upstream.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return upstream;
}
