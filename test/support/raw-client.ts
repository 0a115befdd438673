// A client that writes exact bytes on one socket and reads the answers back as the bytes arrived.
import { connect, type Socket } from 'node:net';
import { header, splitMessages, type Message } from './http-messages.js';

export interface RawAnswers {
  /** The responses, cut by their framing. */
  responses: Message[];
  /** Whether the server closed the connection. */
  closed: boolean;
  bytes: Buffer;
}

export const statusOf = (m: Message): number => Number(m.line.split(' ')[1]);
export const jsonOf = <T = Record<string, unknown>>(m: Message): T => JSON.parse(m.body.toString('utf8')) as T;
export { header };

export interface RawConnection {
  socket: Socket;
  send(bytes: string | Buffer): void;
  /** Waits until `count` responses arrived or the server closed (at most `timeoutMs`). */
  read(count: number, timeoutMs?: number): Promise<RawAnswers>;
  close(): void;
}

/** `headRequests`: indexes of the requests sent with HEAD, whose responses carry no body. */
export function openRaw(base: string, headRequests: ReadonlySet<number> = new Set()): Promise<RawConnection> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let bytes = Buffer.alloc(0);
    let closed = false;
    let wake = (): void => {};
    socket.on('data', (c: Buffer) => {
      bytes = Buffer.concat([bytes, c]);
      wake();
    });
    socket.on('error', () => {});
    socket.once('close', () => {
      closed = true;
      wake();
    });
    const parse = (): Message[] =>
      splitMessages(bytes, (i, m) => headRequests.has(i) || /^HTTP\/1\.1 (204|304|1\d\d)/.test(m.line)).messages;
    socket.once('connect', () =>
      resolve({
        socket,
        send: (b) => void socket.write(b),
        read: (count, timeoutMs = 5_000) =>
          new Promise((done) => {
            const finish = () => {
              clearTimeout(timer);
              wake = () => {};
              done({ responses: parse(), closed, bytes });
            };
            const timer = setTimeout(finish, timeoutMs);
            wake = () => {
              if (closed || parse().length >= count) finish();
            };
            wake();
          }),
        close: () => socket.destroy(),
      }),
    );
    socket.once('error', reject);
  });
}

/** Sends `bytes` on a new connection and reads `count` responses. */
export async function rawExchange(base: string, bytes: string | Buffer, count = 1, headRequests?: ReadonlySet<number>): Promise<RawAnswers> {
  const conn = await openRaw(base, headRequests);
  try {
    conn.send(bytes);
    return await conn.read(count);
  } finally {
    conn.close();
  }
}
