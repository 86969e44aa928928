import { RawBytes } from "./abi";
import { jsonQuote } from "./decide";

// Response observation inside the filter: status, time to first byte, token usage; aggregated
// per endpoint and reported to the brain in batches (no second gRPC stream per request). From
// each batch the brain feeds the ext_proc path's histograms, decision log, token budgets and
// spend (extproc/wasm/records.py reads it):
// - a compact record (RequestRecord) for each request the brain needs one by one: escalated
//   (it joins its own decision, settles budgets, ends leases), refused by the filter, or
//   sampled for the decision log; bounded per batch;
// - every other request as four numbers (duration, time to first byte, prompt and completion
//   tokens) in the group of its (tenant, model, pool, endpoint, status, streamed): no strings
//   per request, and the brain adds a group to its histograms in one step.

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
  // Every needle here starts with a quote and has a second byte: 16 positions per step until
  // one holds both (a JSON body has a quote every few bytes, most followed by other letters).
  const quote = i8x16.splat(0x22);
  const second = i8x16.splat(<i8>needle.charCodeAt(1));
  const n = needle.length;
  const last = length - n;
  let i = from;
  while (i <= last) {
    if (i + 17 <= length) {
      const starts = i8x16.bitmask(v128.and(
        i8x16.eq(v128.load(data + <usize>i), quote),
        i8x16.eq(v128.load(data + <usize>(i + 1)), second),
      ));
      if (starts == 0) {
        i += 16;
        continue;
      }
      i += ctz(starts);
      if (i > last) break;
    }
    let j = 0;
    while (j < n && <i32>load<u8>(data + <usize>(i + j)) == needle.charCodeAt(j)) j++;
    if (j == n) return i;
    i++;
  }
  return -1;
}

// Keys whose string value is generated text in some API's stream: chat `delta.content`,
// completions `text`, Responses `delta` ("response.output_text.delta"), Anthropic `text` /
// `partial_json` (content_block_delta); `"tool_calls"` counts when it holds a call.
const TEXT_KEYS = ['"content"', '"text"', '"delta"', '"partial_json"'];
const TOOL_CALLS = '"tool_calls"';

function skipSpaces(data: usize, length: i32, from: i32): i32 {
  let i = from;
  while (i < length) {
    const c = load<u8>(data + <usize>i);
    if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
    i++;
  }
  return i;
}

/** Whether a stream chunk carries generated text, as extproc/observe.py's `_text_of` decides
 * (a non-empty string under one of TEXT_KEYS, or a tool call). vLLM, like the simulator, opens a
 * chat stream with a role-only chunk (`"content": ""`) before the prompt is even prefilled: the
 * time to first token is the first chunk with text, not the first chunk. */
export function carriesText(data: usize, length: i32): bool {
  for (let k = 0; k < TEXT_KEYS.length; k++) {
    const key = TEXT_KEYS[k];
    let at = findAscii(data, length, key, 0);
    while (at >= 0) {
      let i = skipSpaces(data, length, at + key.length);
      if (i < length && load<u8>(data + <usize>i) == 0x3a) { // ':'
        i = skipSpaces(data, length, i + 1);
        // '"' then anything but the closing '"': a non-empty string
        if (i + 1 < length && load<u8>(data + <usize>i) == 0x22 && load<u8>(data + <usize>(i + 1)) != 0x22) return true;
      }
      at = findAscii(data, length, key, at + 1);
    }
  }
  const calls = findAscii(data, length, TOOL_CALLS, 0);
  if (calls >= 0) {
    let i = skipSpaces(data, length, calls + TOOL_CALLS.length);
    if (i < length && load<u8>(data + <usize>i) == 0x3a) {
      i = skipSpaces(data, length, i + 1);
      if (i < length && load<u8>(data + <usize>i) == 0x5b) { // '[' and a call in it
        i = skipSpaces(data, length, i + 1);
        return i < length && load<u8>(data + <usize>i) != 0x5d;
      }
    }
  }
  return false;
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

/** One request, from the decision to the response's end. Fields in RECORD_FIELDS order
 * (extproc/wasm/records.py): a JSON array per request keeps the batch small. */
export class RequestRecord {
  requestId: string = "";
  task: string = "";
  tenant: string = "";
  requested: string = ""; // the model the client asked for
  model: string = ""; // the model served (x-llm-model)
  tier: string = "";
  rule: string = "";
  priority: string = "";
  endpoints: string = ""; // the ordered list handed to Envoy
  servedBy: string = "";
  pool: string = ""; // a provider's pool (x-llm-pool); the brain knows the fleet's endpoints' pools
  status: i32 = 0;
  outcome: string = ""; // routed, fallback_model, rejected, unavailable; "" when the brain decided
  streamed: bool = false;
  ttftNs: i64 = -1; // a stream's first chunk with text, else the response headers
  durationNs: i64 = -1;
  promptTokens: i64 = -1;
  completionTokens: i64 = -1;
  error: string = ""; // the error body of a request the filter refused
  escalated: bool = false;
  scores: string = ""; // the filter's totals for the endpoints, in millionths ("" when the brain decided)
  urgent: bool = false; // the brain holds a concurrency lease for it: report at once
  own: bool = false; // reported as a record of its own, not in a group
  primary: string = ""; // the endpoint the list starts with (the group's, when none answered)

  /** The route's headers: served model, tier, rule, priority (as the ext_proc path labels them). */
  routed(headers: Array<string>, endpoints: string): void {
    this.endpoints = endpoints;
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = headers[i];
      if (name == "x-llm-model") this.model = headers[i + 1];
      else if (name == "x-llm-tier") this.tier = headers[i + 1];
      else if (name == "x-llm-rule") this.rule = headers[i + 1];
      else if (name == "x-llm-priority") this.priority = headers[i + 1];
      else if (name == "x-llm-pool") this.pool = headers[i + 1];
    }
  }

  /** The record's JSON array, appended to `parts` (joined once per batch: few allocations). */
  write(parts: Array<string>): void {
    parts.push("["); quoted(parts, this.requestId);
    parts.push(","); quoted(parts, this.task);
    parts.push(","); quoted(parts, this.tenant);
    parts.push(","); quoted(parts, this.requested);
    parts.push(","); quoted(parts, this.model);
    parts.push(","); quoted(parts, this.tier);
    parts.push(","); quoted(parts, this.rule);
    parts.push(","); quoted(parts, this.priority);
    parts.push(","); quoted(parts, this.endpoints);
    parts.push(","); quoted(parts, this.servedBy);
    parts.push(","); quoted(parts, this.pool);
    parts.push(","); parts.push(this.status.toString());
    parts.push(","); quoted(parts, this.outcome);
    parts.push(this.streamed ? ",1," : ",0,");
    parts.push(this.ttftNs < 0 ? "-1" : (this.ttftNs / 1000).toString());
    parts.push(","); parts.push(this.durationNs < 0 ? "-1" : (this.durationNs / 1000).toString());
    parts.push(","); parts.push(this.promptTokens.toString());
    parts.push(","); parts.push(this.completionTokens.toString());
    parts.push(","); quoted(parts, this.error);
    parts.push(this.escalated ? ",1," : ",0,");
    quoted(parts, this.scores);
    parts.push("]");
  }

}

class Count {
  n: i64 = 0;
}

/** Requests the brain needs only as numbers: the same labels, four values each. */
class Group {
  values: Array<i64> = new Array<i64>(); // duration µs, time to first byte µs, prompt, completion
  constructor(
    public tenant: string, public model: string, public pool: string, public endpoint: string,
    public answered: bool, public status: i32, public streamed: bool,
  ) {}

  matches(record: RequestRecord, endpoint: string): bool {
    return this.status == record.status && this.streamed == record.streamed
      && this.answered == (record.servedBy.length > 0) && this.endpoint == endpoint
      && this.model == record.model && this.pool == record.pool && this.tenant == record.tenant;
  }

  write(parts: Array<string>): void {
    parts.push("["); quoted(parts, this.tenant);
    parts.push(","); quoted(parts, this.model);
    parts.push(","); quoted(parts, this.pool);
    parts.push(","); quoted(parts, this.endpoint);
    parts.push(this.answered ? ",1," : ",0,");
    parts.push(this.status.toString());
    parts.push(this.streamed ? ",1,[" : ",0,[");
    const values = this.values;
    for (let i = 0; i < values.length; i++) {
      if (i > 0) parts.push(",");
      parts.push(values[i].toString());
    }
    parts.push("]]");
  }
}

// Grouped requests per batch (about a second); more are counted as dropped.
const MAX_GROUPED: i32 = 100000;

export class Observations {
  stats: Map<string, EndpointStats> = new Map<string, EndpointStats>();
  // Decisions taken here (escalated ones the brain counts itself), by
  // "task|model|tier|outcome|primary endpoint": llm_extproc_requests on the brain.
  decisions: Map<string, Count> = new Map<string, Count>();
  private lastCount: Count | null = null; // the last key's (cleared with the map)
  // Per-request records, at most maxRecords per batch (the rest are counted), serialised when
  // the batch is sent: off the request's path.
  records: Array<RequestRecord> = new Array<RequestRecord>();
  recordsDropped: i64 = 0;
  maxRecords: i32 = 1000;
  urgent: bool = false; // a record the brain waits for (a concurrency lease) is in the batch
  groups: Map<string, Group> = new Map<string, Group>();
  private grouped: i32 = 0;
  private lastGroup: Group | null = null; // traffic repeats itself: most requests join it

  // The last key built: traffic repeats itself, so most decisions reuse it instead of
  // concatenating five strings again.
  private last: Array<string> = ["", "", "", "", ""];
  private lastKey: string = "";

  decided(task: string, model: string, tier: string, outcome: string, primary: string): void {
    const last = this.last;
    let count = this.lastCount;
    if (count == null || this.lastKey.length == 0 || task != last[0] || model != last[1] || tier != last[2]
      || outcome != last[3] || primary != last[4]) {
      const key = task + "|" + model + "|" + tier + "|" + outcome + "|" + primary;
      last[0] = task; last[1] = model; last[2] = tier; last[3] = outcome; last[4] = primary;
      this.lastKey = key;
      if (this.decisions.has(key)) {
        count = this.decisions.get(key);
      } else {
        count = new Count();
        this.decisions.set(key, count);
      }
      this.lastCount = count;
    }
    count.n++;
  }

  // The last endpoint's stats: a request's response headers and body, and the next requests,
  // mostly name the same endpoint (the same string: the snapshot's).
  private lastEndpoint: string = "";
  private lastStats: EndpointStats | null = null;

  private of(endpoint: string): EndpointStats {
    const last = this.lastStats;
    if (last != null && endpoint == this.lastEndpoint) return last;
    let stats: EndpointStats;
    if (this.stats.has(endpoint)) {
      stats = this.stats.get(endpoint);
    } else {
      stats = new EndpointStats();
      this.stats.set(endpoint, stats);
    }
    this.lastEndpoint = endpoint;
    this.lastStats = stats;
    return stats;
  }

  empty(): bool {
    return this.stats.size == 0 && this.decisions.size == 0 && this.records.length == 0 && this.recordsDropped == 0
      && this.grouped == 0;
  }

  /** A request the brain needs only as numbers joins its group. */
  group(record: RequestRecord): void {
    if (this.grouped >= MAX_GROUPED) {
      this.recordsDropped++;
      return;
    }
    const endpoint = record.servedBy.length > 0 ? record.servedBy : record.primary;
    let group = this.lastGroup;
    if (group == null || !group.matches(record, endpoint)) {
      const key = record.tenant + "|" + record.model + "|" + record.pool + "|" + endpoint
        + (record.servedBy.length > 0 ? "|1|" : "|0|") + record.status.toString() + (record.streamed ? "|1" : "|0");
      if (this.groups.has(key)) {
        group = this.groups.get(key);
      } else {
        group = new Group(record.tenant, record.model, record.pool, endpoint, record.servedBy.length > 0,
          record.status, record.streamed);
        this.groups.set(key, group);
      }
      this.lastGroup = group;
    }
    const values = group.values;
    values.push(record.durationNs < 0 ? -1 : record.durationNs / 1000);
    values.push(record.ttftNs < 0 ? -1 : record.ttftNs / 1000);
    values.push(record.promptTokens);
    values.push(record.completionTokens);
    this.grouped++;
  }

  /** A request ended (or was refused): its record joins the batch, unless the batch is full.
   * A record holding the brain's concurrency lease is never dropped (it is sent at once). */
  ended(record: RequestRecord): void {
    if (record.urgent) this.urgent = true;
    else if (this.records.length >= this.maxRecords) {
      this.recordsDropped++;
      return;
    }
    this.records.push(record);
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

  /** A stream's first chunk with text: its time to first token. */
  firstText(endpoint: string, elapsedNs: u64): void {
    const stats = this.of(endpoint);
    stats.ttftUsSum += <i64>(elapsedNs / 1000);
    stats.ttftCount++;
  }

  /** A body chunk: the usage object of a JSON answer or of a stream's final chunk. */
  body(endpoint: string, chunk: RawBytes, record: RequestRecord): void {
    const data = chunk.pointer;
    const length = chunk.length;
    const at = findAscii(data, length, USAGE, 0);
    if (at < 0) return;
    const prompt = numberAfter(data, length, "\"prompt_tokens\"", at);
    const completion = numberAfter(data, length, "\"completion_tokens\"", at);
    if (endpoint.length > 0) { // a fleet endpoint's (a provider's answers are in records only)
      const stats = this.of(endpoint);
      stats.promptTokens += prompt;
      stats.completionTokens += completion;
    }
    record.promptTokens = prompt;
    record.completionTokens = completion;
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
    this.lastStats = null;
    out += '}, "decisions": {';
    const decided = this.decisions.keys();
    for (let i = 0; i < decided.length; i++) {
      out += (i > 0 ? ", " : "") + jsonQuote(decided[i]) + ": " + this.decisions.get(decided[i]).n.toString();
    }
    this.decisions.clear();
    this.lastCount = null;
    const parts = new Array<string>();
    parts.push(out);
    parts.push('}, "records": [');
    for (let i = 0; i < this.records.length; i++) {
      if (i > 0) parts.push(", ");
      this.records[i].write(parts);
    }
    parts.push('], "groups": [');
    const groups = this.groups.values();
    for (let i = 0; i < groups.length; i++) {
      if (i > 0) parts.push(", ");
      groups[i].write(parts);
    }
    this.groups.clear();
    this.lastGroup = null;
    this.grouped = 0;
    parts.push('], "records_dropped": ');
    parts.push(this.recordsDropped.toString());
    this.records = new Array<RequestRecord>();
    this.recordsDropped = 0;
    this.urgent = false;
    parts.push("}");
    return parts.join("");
  }
}

/** A JSON string literal into `parts`: the text as it is when nothing needs escaping (the
 * usual case: ids, names, addresses), else decide.ts's escaping. */
function quoted(parts: Array<string>, text: string): void {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c == 0x22 || c == 0x5c) {
      parts.push(jsonQuote(text));
      return;
    }
  }
  parts.push('"');
  parts.push(text);
  parts.push('"');
}

/** A response kept for the response cache as it passes (the brain asked: a miss to fill),
 * at most `limit` bytes; past that nothing is kept. No buffering: chunks flow on unchanged. */
export class KeptBody {
  chunks: Array<Uint8Array> = new Array<Uint8Array>();
  size: i32 = 0;
  overflow: bool = false;
  contentType: string = "";

  constructor(public limit: i32) {}

  /** Copies a chunk (the host's buffer is freed after the callback). */
  add(chunk: RawBytes): void {
    if (this.overflow) return;
    if (this.size + chunk.length > this.limit) {
      this.overflow = true;
      this.chunks = new Array<Uint8Array>();
      return;
    }
    const copy = new Uint8Array(chunk.length);
    memory.copy(copy.dataStart, chunk.pointer, <usize>chunk.length);
    this.chunks.push(copy);
    this.size += chunk.length;
  }

  bytes(): ArrayBuffer {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      out.set(this.chunks[i], at);
      at += this.chunks[i].byteLength;
    }
    return out.buffer;
  }
}
