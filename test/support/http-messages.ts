// A strict HTTP/1.1 message splitter for tests: takes the exact bytes of a connection and cuts them
// into messages by their framing (Content-Length, chunked, or none), so a test can see how many
// requests a peer really sent and with which body. Anything it cannot frame is an error.

export interface Message {
  /** The request or status line. */
  line: string;
  /** Header names lower-cased, in order, repeated ones kept. */
  headers: Array<[string, string]>;
  /** The body after de-chunking. */
  body: Buffer;
  framing: 'content-length' | 'chunked' | 'none';
}

const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

export const header = (m: Message, name: string): string | undefined => m.headers.find(([n]) => n === name)?.[1];
export const headersNamed = (m: Message, name: string): string[] => m.headers.filter(([n]) => n === name).map(([, v]) => v);

/**
 * Splits `bytes` into messages. `bodyless(i, message)` says whether message i has no body whatever
 * its headers (a response to HEAD, a 204, a 304). Returns the messages and the bytes left over (an
 * incomplete message at the end).
 */
export function splitMessages(bytes: Buffer, bodyless: (index: number, m: Message) => boolean = () => false): { messages: Message[]; rest: Buffer } {
  const messages: Message[] = [];
  let at = 0;
  while (at < bytes.length) {
    const end = bytes.indexOf(HEAD_END, at);
    if (end === -1) break;
    const lines = bytes.subarray(at, end).toString('latin1').split('\r\n');
    const headers = lines.slice(1).map((l): [string, string] => {
      const colon = l.indexOf(':');
      if (colon <= 0) throw new Error(`not a header line: ${JSON.stringify(l)}`);
      return [l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()];
    });
    const m: Message = { line: lines[0], headers, body: Buffer.alloc(0), framing: 'none' };
    let next = end + 4;
    const length = headersNamed(m, 'content-length');
    const coding = header(m, 'transfer-encoding');
    if (length.length && coding) throw new Error(`both Content-Length and Transfer-Encoding: ${m.line}`);
    if (length.length > 1) throw new Error(`Content-Length repeated: ${m.line}`);
    if (bodyless(messages.length, m)) {
      // nothing to read
    } else if (coding !== undefined) {
      if (coding.toLowerCase() !== 'chunked') throw new Error(`transfer coding ${coding}`);
      m.framing = 'chunked';
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = bytes.indexOf(CRLF, next);
        if (lineEnd === -1) return { messages, rest: bytes.subarray(at) };
        const size = Number.parseInt(bytes.subarray(next, lineEnd).toString('latin1').split(';')[0], 16);
        if (!Number.isFinite(size)) throw new Error('bad chunk size');
        next = lineEnd + 2;
        if (size === 0) {
          const trailerEnd = bytes.indexOf(CRLF, next);
          if (trailerEnd !== next) throw new Error('trailers not expected');
          next += 2;
          break;
        }
        if (next + size + 2 > bytes.length) return { messages, rest: bytes.subarray(at) };
        parts.push(bytes.subarray(next, next + size));
        next += size + 2;
      }
      m.body = Buffer.concat(parts);
    } else if (length.length) {
      m.framing = 'content-length';
      const size = Number(length[0]);
      if (next + size > bytes.length) return { messages, rest: bytes.subarray(at) };
      m.body = bytes.subarray(next, next + size);
      next += size;
    }
    messages.push(m);
    at = next;
  }
  return { messages, rest: bytes.subarray(at) };
}
