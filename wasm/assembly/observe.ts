import { RawBytes } from "./abi";
import { jsonQuote } from "./decide";

// Response observation inside the filter: status, time to first byte, token usage; aggregated
// per endpoint and reported to the brain in batches (no second gRPC stream per request).

class EndpointStats {
  responses: i64 = 0;
  errors: i64 = 0; // 5xx
  ttftUsSum: i64 = 0;
  ttftCount: i64 = 0;
  promptTokens: i64 = 0;
  completionTokens: i64 = 0;
  retriedAway: i64 = 0; // answered by another endpoint than the primary
}

const USAGE = "\"usage\"";

function findAscii(data: usize, length: i32, needle: string, from: i32): i32 {
  // Every needle here starts with a quote: 16 bytes per step until one shows up.
  const quote = i8x16.splat(0x22);
  const n = needle.length;
  const last = length - n;
  let i = from;
  while (i <= last) {
    if (i + 16 <= length && !v128.any_true(i8x16.eq(v128.load(data + <usize>i), quote))) {
      i += 16;
      continue;
    }
    let j = 0;
    while (j < n && <i32>load<u8>(data + <usize>(i + j)) == needle.charCodeAt(j)) j++;
    if (j == n) return i;
    i++;
  }
  return -1;
}

function numberAfter(data: usize, length: i32, key: string, from: i32): i64 {
  const at = findAscii(data, length, key, from);
  if (at < 0) return 0;
  let i = at + key.length;
  while (i < length && (load<u8>(data + <usize>i) == 0x20 || load<u8>(data + <usize>i) == 0x3a)) i++;
  let value: i64 = 0;
  while (i < length) {
    const c = load<u8>(data + <usize>i);
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + <i64>(c - 0x30);
    i++;
  }
  return value;
}

export class Observations {
  stats: Map<string, EndpointStats> = new Map<string, EndpointStats>();
  // Decisions taken here (escalated ones the brain counts itself), by
  // "task|model|tier|outcome|primary endpoint": llm_extproc_requests on the brain.
  decisions: Map<string, i64> = new Map<string, i64>();

  // The last key built: traffic repeats itself, so most decisions reuse it instead of
  // concatenating five strings again.
  private last: Array<string> = ["", "", "", "", ""];
  private lastKey: string = "";

  decided(task: string, model: string, tier: string, outcome: string, primary: string): void {
    const last = this.last;
    let key = this.lastKey;
    if (key.length == 0 || task != last[0] || model != last[1] || tier != last[2] || outcome != last[3] || primary != last[4]) {
      key = task + "|" + model + "|" + tier + "|" + outcome + "|" + primary;
      last[0] = task; last[1] = model; last[2] = tier; last[3] = outcome; last[4] = primary;
      this.lastKey = key;
    }
    this.decisions.set(key, (this.decisions.has(key) ? this.decisions.get(key) : 0) + 1);
  }

  private of(endpoint: string): EndpointStats {
    if (!this.stats.has(endpoint)) this.stats.set(endpoint, new EndpointStats());
    return this.stats.get(endpoint);
  }

  empty(): bool {
    return this.stats.size == 0 && this.decisions.size == 0;
  }

  /** Response headers; for a non-streamed response their time is its latency. */
  headers(primary: string, endpoint: string, status: i32, elapsedNs: u64, streamed: bool): void {
    const stats = this.of(endpoint);
    stats.responses++;
    if (status >= 500) stats.errors++;
    if (endpoint != primary) this.of(primary).retriedAway++;
    if (!streamed) {
      stats.ttftUsSum += <i64>(elapsedNs / 1000);
      stats.ttftCount++;
    }
  }

  firstByte(endpoint: string, elapsedNs: u64): void {
    const stats = this.of(endpoint);
    stats.ttftUsSum += <i64>(elapsedNs / 1000);
    stats.ttftCount++;
  }

  /** A body chunk: the usage object of a JSON answer or of a stream's final chunk. */
  body(endpoint: string, chunk: RawBytes): void {
    const data = chunk.pointer;
    const length = chunk.length;
    const at = findAscii(data, length, USAGE, 0);
    if (at < 0) return;
    const stats = this.of(endpoint);
    stats.promptTokens += numberAfter(data, length, "\"prompt_tokens\"", at);
    stats.completionTokens += numberAfter(data, length, "\"completion_tokens\"", at);
  }

  /** The batch as JSON (extproc/wasm/brain.py reads it), and a fresh start. */
  drain(inflight: Map<string, i32>): string {
    let out = '{"endpoints": {';
    const keys = this.stats.keys();
    for (let i = 0; i < keys.length; i++) {
      const s = this.stats.get(keys[i]);
      const own = inflight.has(keys[i]) ? inflight.get(keys[i]) : 0;
      out += (i > 0 ? ", " : "") + jsonQuote(keys[i]) + ': {"responses": ' + s.responses.toString()
        + ', "errors": ' + s.errors.toString() + ', "ttft_us_sum": ' + s.ttftUsSum.toString()
        + ', "ttft_count": ' + s.ttftCount.toString() + ', "prompt_tokens": ' + s.promptTokens.toString()
        + ', "completion_tokens": ' + s.completionTokens.toString()
        + ', "retried_away": ' + s.retriedAway.toString() + ', "inflight": ' + own.toString() + "}";
    }
    this.stats.clear();
    out += '}, "decisions": {';
    const decided = this.decisions.keys();
    for (let i = 0; i < decided.length; i++) {
      out += (i > 0 ? ", " : "") + jsonQuote(decided[i]) + ": " + this.decisions.get(decided[i]).toString();
    }
    this.decisions.clear();
    return out + "}}";
  }
}
