// The fast-path decision: request body + snapshot + this VM's in-flight counts → endpoints and
// headers, an OpenAI-style error, or "escalate" (the brain decides). Mirrors
// extproc/wasm/reference.py line for line; the parity harness holds the two together.
import { Json, Kind, Field, fnv1a, FNV_OFFSET } from "./json";
import { Snapshot, Route, Target, Candidate, CandidateSet } from "./snapshot";
import { InFlight } from "./inflight";
import { crc32Bytes } from "./crc32";

export const enum Outcome { Routed = 0, Error = 1, Escalate = 2 }

export const DESTINATION_HEADER = "x-gateway-destination-endpoint";

const EMPTY = new Array<string>(0);

export class Decision {
  outcome: Outcome = Outcome.Escalate;
  status: i32 = 0;
  body: string = "";
  errorHeaders: Array<string> = EMPTY;
  headers: Array<string> = new Array<string>(); // name, value, ...
  newBody: ArrayBuffer | null = null;
  primary: string = "";
  // The chosen endpoints' totals as the pick ranked them (millionths), in the list's order:
  // the decision log's scores for the requests it samples.
  scores: Array<i64> = new Array<i64>();
  model: string = ""; // requested, for the brain's request counter
  outcomeLabel: string = ""; // llm_extproc_requests' outcome: routed, fallback_model, rejected, unavailable
}

const ESCALATE = new Decision();
const ROUTED = new Decision(); // every routed decision: one object, refilled

function error(status: i32, message: string, type: string, code: string, retryAfter: bool): Decision {
  const decision = new Decision();
  decision.outcome = Outcome.Error;
  decision.status = status;
  decision.errorHeaders = new Array<string>();
  // json.dumps(..., ensure_ascii=False) layout; the message holds no character that needs escaping.
  decision.body = '{"error": {"message": "' + message + '", "type": "' + type + '", "code": "' + code + '"}}';
  decision.errorHeaders.push("content-type");
  decision.errorHeaders.push("application/json");
  if (retryAfter) {
    decision.errorHeaders.push("retry-after");
    decision.errorHeaders.push("1");
  }
  return decision;
}

/** True when Python's repr() of the string is the string in single quotes and JSON needs no escape. */
function reprSafe(text: string): bool {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c == 0x27 || c == 0x22 || c == 0x5c) return false;
  }
  return true;
}

/** A JSON string literal, escaping what json.dumps(ensure_ascii=False) escapes. */
export function jsonQuote(text: string): string {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c == 0x0a) out += "\\n";
    else if (c == 0x0d) out += "\\r";
    else if (c == 0x09) out += "\\t";
    else if (c == 0x08) out += "\\b";
    else if (c == 0x0c) out += "\\f";
    else if (c < 0x20) out += "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    else out += String.fromCharCode(c);
  }
  return out + '"';
}

export function mediaTypeIsJson(contentType: string): bool {
  if (contentType == "application/json") return true; // the usual header, without copies
  const semicolon = contentType.indexOf(";");
  const media = (semicolon >= 0 ? contentType.substring(0, semicolon) : contentType).trim().toLowerCase();
  return media == "application/json";
}

function lastField(fields: Array<Field>, key: string): Field | null {
  for (let i = fields.length - 1; i >= 0; i--) {
    if (fields[i].is(key)) return fields[i];
  }
  return null;
}

function hasField(fields: Array<Field>, key: string): bool {
  return lastField(fields, key) != null;
}

// Affinity tries at most this many of the key's highest-ranked candidates for one under the
// load bound (as the scheduler's session scorer does).
const AFFINITY_TRIES = 8;

/** Affinity with bounded load: rendezvous hashing over FNV-1a(key \0 address) ranks the
 * candidates; the key's endpoint is the highest-ranked one whose in-flight is at most
 * affinity_load_factor × average + 1 (the scheduler's session bound), so a hot prefix or user
 * cannot pile onto one endpoint.
 * -1 when none of the first AFFINITY_TRIES qualifies. Ties in rank: the first wins. */
function preferred(snapshot: Snapshot, set: CandidateSet, key: usize, keyLength: i32, own: Array<i64>): i32 {
  let seed = fnv1a(key, keyLength, FNV_OFFSET);
  seed = seed * 16777619; // the \0 separator: hash ^= 0 is a no-op
  const endpoints = set.endpoints;
  const n = endpoints.length;
  const hashes = sized<u32>(scratchHashes, n);
  let total: i64 = 0;
  for (let i = 0; i < n; i++) {
    const address = endpoints[i].addressBytes;
    hashes[i] = fnv1a(changetype<usize>(address), address.byteLength, seed);
    total += own[i];
  }
  const tried = cleared(scratchTried, n);
  for (let attempt = 0; attempt < min(AFFINITY_TRIES, n); attempt++) {
    let best = -1;
    for (let i = 0; i < n; i++) {
      if (!tried[i] && (best < 0 || hashes[i] > hashes[best])) best = i;
    }
    tried[best] = true;
    // own × 100 × n ≤ factor% × total + 100 × n: integers, so both sides decide alike.
    if (own[best] * 100 * <i64>n <= <i64>snapshot.affinityLoadFactorPct * total + 100 * <i64>n) return best;
  }
  return -1;
}

// Prefix ownership, as the scheduler's prefix scorer keeps it (extproc/scheduler/scorers/prefix.py):
// the chained CRC-32 of each leading block of a prompt → the endpoint this VM last chose for a
// prompt with that block. A candidate's bonus is its share of the prompt's blocks: the run of
// leading blocks it holds (a conversation's next turn goes where its earlier turns' cache is,
// and a longer shared prefix earns more). Bounded in two generations (no per-request LRU
// bookkeeping): when the recent table is full it becomes the older one and the one before is
// dropped; the same in extproc/wasm/reference.py.
export const PREFIX_OWNERS_MAX = 32768;
let recentOwners = new Map<u32, string>();
let olderOwners = new Map<u32, string>();
const promptBlocks = new Array<u32>(); // this request's block hashes, until its pick is learned
const prefixDepth = new Array<i32>(); // per candidate: the leading blocks it holds

/** The prompt's block hashes (zlib.crc32 chained over blocks of `size` bytes at `key`). */
function hashBlocks(key: usize, keyLength: i32, size: i32): Array<u32> {
  const blocks = promptBlocks;
  blocks.length = 0;
  let running: u32 = 0;
  for (let at = 0; at + size <= keyLength; at += size) {
    running = crc32Bytes(key + <usize>at, size, running);
    blocks.push(running);
  }
  return blocks;
}

/** Each candidate's bonus for the leading blocks it holds: weight × held / blocks. Returns
 * the candidate that holds every block in the recent table (-1: none), whose pick changes
 * nothing to learn. */
function prefixBonuses(endpoints: Array<Candidate>, blocks: Array<u32>, weight: i64, out: Array<i64>): i32 {
  const n = endpoints.length;
  const depth = zeroed<i32>(prefixDepth, n);
  let lastOwner: string | null = null; // consecutive blocks mostly share their owner
  let lastIndex = -1;
  let wholeInRecent = true;
  for (let b = 0; b < blocks.length; b++) {
    const block = blocks[b];
    let owner: string | null = null;
    if (recentOwners.has(block)) {
      owner = recentOwners.get(block);
    } else {
      wholeInRecent = false;
      if (olderOwners.has(block)) owner = olderOwners.get(block);
    }
    if (owner == null) break;
    if (lastOwner == null || owner != lastOwner) {
      if (lastOwner != null) wholeInRecent = false;
      lastOwner = owner;
      lastIndex = -1;
      for (let i = 0; i < n; i++) {
        if (endpoints[i].address == owner) { lastIndex = i; break; }
      }
    }
    if (lastIndex >= 0) depth[lastIndex] = b + 1;
  }
  const count = <i64>blocks.length;
  for (let i = 0; i < n; i++) out[i] = count > 0 ? weight * <i64>depth[i] / count : 0;
  return wholeInRecent && lastIndex >= 0 && depth[lastIndex] == blocks.length ? lastIndex : -1;
}

/** The chosen endpoint now holds every block of the prompt. */
function learnPrefix(blocks: Array<u32>, address: string): void {
  for (let b = 0; b < blocks.length; b++) {
    const block = blocks[b];
    if (recentOwners.has(block) && recentOwners.get(block) == address) continue;
    if (recentOwners.size >= PREFIX_OWNERS_MAX) {
      olderOwners = recentOwners;
      recentOwners = new Map<u32, string>();
    }
    recentOwners.set(block, address);
  }
}

// The scheduler's MIN_SPAN (one typical TTFT) in the snapshot's load units (billionths), and a
// cap on predictions (a million typical TTFTs) that keeps the i64 arithmetic from overflowing.
const LOAD_MIN_SPAN: i64 = 1_000_000_000;
const LOAD_CAP: i64 = 1_000_000_000_000_000;

/** The load scorer's request part (extproc/scheduler/scorers/load.py), weighted, in millionths:
 * predicted wait = prompt × per-token + one step + queued × per-queued, with queued =
 * max(scraped waiting, in flight on all workers − scraped running); min-max scaled over the
 * candidates with a span of at least one typical TTFT. extproc/wasm/reference.py: load_scores. */
function loadScores(snapshot: Snapshot, endpoints: Array<Candidate>, busy: Array<i64>, prompt: i64): Array<i64> {
  const n = endpoints.length;
  const out = zeroed(scratchLoad, n);
  if (snapshot.loadWeight == 0) return out;
  const predicted = sized<i64>(scratchPredicted, n);
  let best = LOAD_CAP;
  let worst: i64 = -1;
  for (let i = 0; i < n; i++) {
    const c = endpoints[i];
    if (!c.hasLoad) continue;
    const queued = max<i64>(c.waiting, busy[i] - c.running);
    const value = min<i64>(prompt * c.perToken + c.step + queued * c.perQueued, LOAD_CAP);
    predicted[i] = value;
    if (value < best) best = value;
    if (value > worst) worst = value;
  }
  if (worst <= best) return out; // no load terms, or no preference
  const perThousandth = max<i64>(worst - best, LOAD_MIN_SPAN) / 1000;
  for (let i = 0; i < n; i++) {
    if (!endpoints[i].hasLoad) continue;
    const scaled = min<i64>((worst - predicted[i]) * 1000 / perThousandth, 1_000_000);
    out[i] = scaled * snapshot.loadWeight / 1_000_000;
  }
  return out;
}

// pick's working arrays, reused by every request (one decision at a time per VM): sized to the
// candidates, and cleared where a value is read before it is written.
const scratchHashes = new Array<u32>();
const scratchTried = new Array<bool>();
const scratchLoad = new Array<i64>();
const scratchPredicted = new Array<i64>();
const scratchTotals = new Array<i64>();
const scratchBusy = new Array<i64>();
const scratchTaken = new Array<bool>();
const scratchBonuses = new Array<i64>();

function sized<T>(array: Array<T>, n: i32): Array<T> {
  array.length = n;
  return array;
}

function cleared(array: Array<bool>, n: i32): Array<bool> {
  array.length = n;
  array.fill(false);
  return array;
}

function zeroed<T>(array: Array<T>, n: i32): Array<T> {
  array.length = n;
  array.fill(<T>0);
  return array;
}

const picked = new Array<Candidate>();
const pickedTotals = new Array<i64>(); // picked's totals, in its order

/** Candidates best first (in an array reused by every call; key: keyLength bytes at key, none
 * when keyLength < 0): prepared score + load score − in-flight weight × in-flight + affinity
 * bonus (a session's rendezvous favourite gets it whole; with `prefixKey` the key is the
 * prompt's leading bytes and each candidate gets its share for the blocks it holds). */
export function pick(
  snapshot: Snapshot, set: CandidateSet, key: usize, keyLength: i32, bonus: i64, inflight: InFlight, prompt: i64,
  prefixKey: bool = false,
): Array<Candidate> {
  const endpoints = set.endpoints;
  const n = endpoints.length;
  const totals = sized<i64>(scratchTotals, n);
  const busy = sized<i64>(scratchBusy, n); // in flight, all workers
  for (let i = 0; i < n; i++) {
    const address = endpoints[i].address;
    busy[i] = <i64>inflight.count(address);
  }
  const bonuses = zeroed(scratchBonuses, n);
  let blocks: Array<u32> | null = null;
  let holder = -1; // holds every block already
  if (keyLength >= 0 && prefixKey) {
    blocks = hashBlocks(key, keyLength, snapshot.prefixBlockBytes);
    holder = prefixBonuses(endpoints, blocks, bonus, bonuses);
  } else if (keyLength >= 0) {
    const favourite = preferred(snapshot, set, key, keyLength, busy);
    if (favourite >= 0) bonuses[favourite] = bonus;
  }
  const load = loadScores(snapshot, endpoints, busy, prompt);
  for (let i = 0; i < n; i++) {
    totals[i] = endpoints[i].score + load[i] - snapshot.inflightWeight * busy[i] + bonuses[i];
  }
  const count = min(snapshot.endpointsPerRequest, n);
  const taken = cleared(scratchTaken, n);
  const out = picked; // read by decide before the next request
  out.length = 0;
  pickedTotals.length = 0;
  for (let k = 0; k < count; k++) {
    let best = -1;
    for (let i = 0; i < n; i++) {
      if (taken[i]) continue;
      if (best < 0 || totals[i] > totals[best]) best = i;
    }
    taken[best] = true;
    out.push(endpoints[best]);
    pickedTotals.push(totals[best]);
  }
  if (blocks != null && blocks.length > 0 && out.length > 0 && (holder < 0 || out[0] != endpoints[holder])) {
    learnPrefix(blocks, out[0].address);
  }
  return out;
}

// The prefix's bytes, reused by every request (the key is hashed before the next one).
let prefixBuffer = new Uint8Array(256);

/** The prompt text parse_body builds (extproc/request.py), kept only as its first bytes (the
 * prefix-affinity key) and its size in UTF-8 bytes (estimate_tokens, for the load score). */
class PromptText {
  prefix: Uint8Array = prefixBuffer;
  size: i32 = 0;
  json: Json | null = null;

  /** Starts the text of another body (one object serves every request). */
  reset(json: Json, limit: i32): void {
    if (prefixBuffer.byteLength != limit) prefixBuffer = new Uint8Array(limit);
    this.prefix = prefixBuffer;
    this.size = 0;
    this.json = json;
  }

  separator(): void {
    if (this.size < this.prefix.byteLength) this.prefix[this.size] = 0x0a;
    this.size++;
  }

  string(pos: i32): void {
    const json = this.json!;
    const end = json.skipString(pos);
    const limit = this.prefix.byteLength;
    if (this.size < limit) json.decodeInto(pos, end, this.prefix, this.size, limit);
    this.size += json.decodedSize(pos, end);
  }

  /** The prefix-affinity key's length: the first `limit` bytes of the text (possibly ending
   * inside a character), which the prefix blocks cover. */
  keyLength(): i32 {
    return min(this.size, this.prefix.byteLength);
  }

  /** estimate_tokens(text), at least 1 as the load scorer uses it. */
  tokens(): i64 {
    const size = <i64>this.size;
    return max<i64>(1, this.json!.nonAscii ? (size + 2) / 3 : (size + 3) / 4);
  }
}

const promptTextOf = new PromptText();

/** A prompt-like value as _prompt_text reads it (`prompt`, `input`): a string, or an array of
 * strings joined by "\n"; token-id arrays have no text. */
function addPromptText(json: Json, pos: i32, text: PromptText): void {
  const kind = json.kind(pos);
  if (kind == Kind.String) { text.string(pos); return; }
  if (kind != Kind.Array) return;
  const items = json.items(pos, 1)!;
  for (let i = 0; i < items.length; i++) {
    if (json.kind(items[i]) != Kind.String) return;
  }
  for (let i = 0; i < items.length; i++) {
    if (i > 0) text.separator();
    text.string(items[i]);
  }
}

/** A message's content as _content_text reads it: a string, or the text parts of an array. */
function addContentText(json: Json, pos: i32, text: PromptText): void {
  const kind = json.kind(pos);
  if (kind == Kind.String) { text.string(pos); return; }
  if (kind != Kind.Array) return;
  const items = json.items(pos, 2)!;
  let parts = 0;
  for (let i = 0; i < items.length; i++) {
    const at = items[i];
    let part = -1;
    if (json.kind(at) == Kind.String) {
      part = at;
    } else if (json.kind(at) == Kind.Object) {
      const fields = json.fields(at, 3)!;
      const type = lastField(fields, "type");
      const value = lastField(fields, "text");
      const name = type != null ? json.stringAt(type.start) : null;
      if (name != null && (name == "text" || name == "input_text" || name == "output_text")
        && value != null && json.kind(value.start) == Kind.String) {
        part = value.start;
      }
    }
    if (part < 0) continue;
    if (parts > 0) text.separator();
    parts++;
    text.string(part);
  }
}

/** parse_body's prompt text: messages' texts joined by "\n" (empty ones skipped), or the
 * completion's prompt, the embedding's input. */
function promptText(json: Json, task: string, fields: Array<Field>, limit: i32): PromptText {
  const text = promptTextOf;
  text.reset(json, limit);
  if (task == "chat") {
    const messages = checkedMessages!; // validBody's walk of the same array
    for (let i = 0; i < messages.length; i++) {
      const message = json.fields(messages[i], 2)!;
      const content = lastField(message, "content");
      if (content == null) continue;
      const before = text.size;
      if (before > 0) text.separator();
      const afterSeparator = text.size;
      addContentText(json, content.start, text);
      if (text.size == afterSeparator) text.size = before; // an empty text is not joined
    }
  } else {
    addPromptText(json, lastField(fields, task == "completion" ? "prompt" : "input")!.start, text);
  }
  return text;
}

// The chat messages validBody walked, for promptText (the same body, the same decision).
let checkedMessages: Array<i32> | null = null;

/** Checks parse_body would pass; false means "not sure": the brain answers. */
function validBody(json: Json, task: string, fields: Array<Field>): bool {
  const model = lastField(fields, "model");
  if (model == null || json.kind(model.start) != Kind.String || model.end - model.start <= 2) return false;
  const stream = lastField(fields, "stream");
  if (stream != null && json.kind(stream.start) != Kind.True && json.kind(stream.start) != Kind.False) return false;
  let tokens = lastField(fields, "max_tokens");
  if (tokens == null) tokens = lastField(fields, "max_completion_tokens");
  if (tokens != null && json.kind(tokens.start) != Kind.Null && !json.isNonNegativeInt(tokens.start, tokens.end)) return false;
  const user = lastField(fields, "user");
  if (user != null && json.kind(user.start) != Kind.Null && json.kind(user.start) != Kind.String) return false;
  if (task == "chat") {
    const messages = lastField(fields, "messages");
    if (messages == null || json.kind(messages.start) != Kind.Array) return false;
    const items = json.items(messages.start, 1);
    if (items == null || items.length == 0) return false;
    for (let i = 0; i < items.length; i++) {
      if (json.kind(items[i]) != Kind.Object) return false;
    }
    checkedMessages = items;
    return true;
  }
  return hasField(fields, task == "completion" ? "prompt" : "input");
}

export function decide(
  snapshot: Snapshot, task: string, contentType: string, sessionValue: string, tenantValue: string,
  bodyPtr: usize, bodyLen: i32, inflight: InFlight,
): Decision {
  if (snapshot.escalateAll || !mediaTypeIsJson(contentType) || bodyLen == 0) return ESCALATE;
  const json = new Json(bodyPtr, bodyLen);
  const start = json.ws(0);
  if (json.kind(start) != Kind.Object) return ESCALATE;
  const fields = json.fields(start, 0);
  if (fields == null || json.unsupported || json.ws(json.lastEnd) != json.len) return ESCALATE;
  if (!validBody(json, task, fields)) return ESCALATE;
  const modelField = lastField(fields, "model")!;
  const model = json.stringAt(modelField.start)!;
  const streamField = lastField(fields, "stream");
  const stream = streamField != null && json.kind(streamField.start) == Kind.True;
  if (json.unsupported || (stream && snapshot.injectStreamUsage)) return ESCALATE;

  const route = snapshot.route(task, stream, model, tenantValue);
  if (route == null) {
    if (snapshot.escalateUnknownModels || !reprSafe(model)) return ESCALATE;
    const missing = error(404, "model '" + model + "' does not exist; available: " + snapshot.available,
      "model_not_found", "model_not_found", false);
    missing.model = model;
    missing.outcomeLabel = "rejected";
    return missing;
  }
  if (route.escalate) return ESCALATE;
  if (route.rejectStatus != 0) {
    const rejected = new Decision();
    rejected.outcome = Outcome.Error;
    rejected.status = route.rejectStatus;
    rejected.body = route.rejectBody;
    rejected.errorHeaders = new Array<string>();
    rejected.errorHeaders.push("content-type");
    rejected.errorHeaders.push("application/json");
    rejected.model = model;
    rejected.outcomeLabel = "rejected";
    return rejected;
  }

  const text = promptText(json, task, fields, snapshot.prefixBlockBytes * snapshot.prefixMaxBlocks);
  if (json.unsupported) return ESCALATE;
  let key: usize = 0;
  let keyLength = -1; // no key
  let bonus: i64 = 0;
  let prefixKey = false;
  const userField = lastField(fields, "user");
  const user = userField != null ? json.stringAt(userField.start) : null;
  if (sessionValue.length > 0) {
    const bytes = String.UTF8.encode(sessionValue);
    key = changetype<usize>(bytes);
    keyLength = bytes.byteLength;
    bonus = snapshot.sessionWeight;
  } else if (user != null && user.length > 0) {
    const bytes = String.UTF8.encode(user);
    key = changetype<usize>(bytes);
    keyLength = bytes.byteLength;
    bonus = snapshot.sessionWeight;
  } else {
    const length = text.keyLength();
    if (length > 0) {
      key = text.prefix.dataStart;
      keyLength = length;
      bonus = snapshot.prefixWeight;
      prefixKey = true;
    }
  }

  let chosen: Array<Candidate> | null = null;
  let served: Target | null = null;
  let fallback = false;
  for (let i = 0; i < route.targets.length; i++) {
    const target = route.targets[i];
    const set = snapshot.candidatesFor(target);
    if (set == null || set.endpoints.length == 0) continue;
    if (set.saturated) return ESCALATE; // shedding by priority is the brain's call
    chosen = pick(snapshot, set, key, keyLength, bonus, inflight, text.tokens(), prefixKey);
    served = target;
    fallback = i > 0;
    break;
  }
  if ((chosen == null || served == null) && route.thenEscalate) return ESCALATE; // the provider's turn
  if (chosen == null || served == null) {
    if (!reprSafe(model)) return ESCALATE;
    const unavailable = error(503, "no healthy endpoint for model '" + model + "'; retry later",
      "service_unavailable", "no_healthy_endpoint", true);
    unavailable.model = model;
    unavailable.outcomeLabel = "unavailable";
    return unavailable;
  }

  const decision = ROUTED; // applied before the next request is decided
  decision.status = 0;
  decision.body = "";
  decision.errorHeaders = EMPTY;
  decision.headers.length = 0;
  decision.newBody = null;
  decision.outcome = Outcome.Routed;
  decision.model = model;
  decision.outcomeLabel = fallback ? "fallback_model" : "routed";
  let list = chosen[0].address;
  if (chosen.length > 1) {
    const addresses = new Array<string>(chosen.length);
    for (let i = 0; i < chosen.length; i++) addresses[i] = chosen[i].address;
    list = addresses.join(",");
  }
  decision.primary = chosen[0].address;
  const scores = decision.scores;
  scores.length = 0;
  for (let i = 0; i < pickedTotals.length; i++) scores.push(pickedTotals[i]);
  const headers = decision.headers;
  headers.push(DESTINATION_HEADER);
  headers.push(list);
  headers.push("x-llm-model");
  headers.push(served.model);
  if (stream) {
    headers.push("x-llm-stream");
    headers.push("true");
  }
  for (let i = 0; i < route.headers.length; i++) headers.push(route.headers[i]);
  if (served.model != model) {
    // Splice the served model in place of the requested one: the same JSON document as the
    // ext_proc path's re-serialised body, without re-serialising a 200 KB prompt.
    const replacement = String.UTF8.encode(jsonQuote(served.model));
    const size = bodyLen - (modelField.end - modelField.start) + replacement.byteLength;
    const out = new Uint8Array(size);
    memory.copy(out.dataStart, bodyPtr, <usize>modelField.start);
    memory.copy(out.dataStart + <usize>modelField.start, changetype<usize>(replacement), replacement.byteLength);
    memory.copy(
      out.dataStart + <usize>modelField.start + <usize>replacement.byteLength,
      bodyPtr + <usize>modelField.end,
      <usize>(bodyLen - modelField.end),
    );
    decision.newBody = out.buffer;
    headers.push("content-length");
    headers.push(size.toString());
  }
  return decision;
}
