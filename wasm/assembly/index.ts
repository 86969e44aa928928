// llm-extproc's proxy-wasm filter: the routing fast path inside Envoy (docs/wasm.md).
//
// Request: the body is buffered here (bounded), read, and decided against the brain's snapshot.
// Where Envoy lets a Wasm filter hold the request headers for its body callback
// (allow_on_headers_stop_iteration, the local config), the decision is written into them
// directly; elsewhere (Istio's WasmPlugin cannot set that) the headers pass on, Envoy's buffer
// filter holds them, and the decision goes out as filter state "wasm.<header>", which Envoy's
// header_mutation copies into the headers. Either way header_to_metadata moves the endpoint
// list into envoy.lb for override_host: Wasm cannot write dynamic metadata. What the snapshot
// cannot decide (and everything while the snapshot is missing or stale) goes to the brain's
// /decide endpoint.
import {
  BufferType, DataStatus, HeadersStatus, LogLevel, MapType, MetricType,
  HeaderPairs, RawBytes, continueRequest, decodeHeaders, defineMetric, fetchHeaderPairs, getBuffer, getBufferRaw, getHeader, getHeaderPairsRaw, httpCall, httpCallRaw,
  incrementMetric, log, nowNanos, sendLocalResponse, setBuffer, setEffectiveContext, setFilterState, setHeader, setTickPeriod,
} from "./abi";
import { Json, Kind } from "./json";
import { Decision, Outcome, decide, DESTINATION_HEADER } from "./decide";
import { Snapshot, parseSnapshot } from "./snapshot";
import { KeptBody, Observations, RequestRecord, carriesText } from "./observe";
import { crc32 } from "./crc32";
import { InFlight } from "./inflight";

export { proxy_on_memory_allocate } from "./memory";

const SNAPSHOT_PATH = "/v1/llm-extproc/snapshot";
const DECIDE_PATH = "/v1/llm-extproc/decide";
const OBSERVATIONS_PATH = "/v1/llm-extproc/observations";
const CACHE_FILL_PATH = "/v1/llm-extproc/cache-fill";
const SERVED_HEADER = DESTINATION_HEADER + "-served";

class Settings {
  cluster: string = "llm_brain";
  authority: string = "llm-brain";
  pollMs: u32 = 100;
  decideTimeoutMs: u32 = 1000;
  reportEveryTicks: u32 = 10;
  observe: bool = true; // response observation (status, time to first byte, usage)
  maxRecords: i32 = 1000; // per-request records per report batch; beyond, counted as dropped
  // Envoy's allow_on_headers_stop_iteration is set: the request headers wait here for the body,
  // and the decision is written into them directly (no buffer filter, no header_mutation copy).
  holdHeaders: bool = false;
}

let settings = new Settings();
let snapshot: Snapshot | null = null;
let confirmedAtNs: u64 = 0; // when the brain last confirmed our snapshot version
let pollToken: u32 = 0;
let reportToken: u32 = 0;
let reportAgain = false; // a record the brain waits for arrived while a report was in flight
let ticks: u32 = 0;
let busy = false; // a request or a new snapshot since the last collection
const COLLECT_IDLE_TICKS: u32 = 50;
const inflight = new InFlight(); // this VM's counts, plus the other workers' VMs'
const callers = new Map<u32, u32>(); // http call token → request context id
const observations = new Observations();

let routedMetric: u32 = 0;
let escalatedMetric: u32 = 0;
let failOpenMetric: u32 = 0;
let rejectedMetric: u32 = 0;
let staleMetric: u32 = 0;

const JSON_TYPE = "application/json";
const TASK_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"];
const TASK_NAMES = ["chat", "completion", "embedding", "models"];
// One header map is read at a time (its callback frees it): one reader object for all.
const headerPairs = new HeaderPairs(0, 0);

class Request {
  task: string = "";
  contentType: string = "";
  session: string = "";
  tenant: string = "";
  primary: string = ""; // counted in this VM's in-flight until the request is logged
  model: string = "";
  tier: string = "";
  escalated: bool = false;
  headers: Uint8Array | null = null; // kept only until the body is read (escalation needs them)
  bodySize: u32 = 0;
  startedNs: u64 = 0;
  status: i32 = 0;
  observed: bool = false;
  streamed: bool = false;
  firstText: bool = false; // a streamed response's first chunk with text has passed
  servedBy: string = "";
  token: u32 = 0; // the pending call to the brain, if any
  requestId: string = "";
  record: RequestRecord | null = null; // from the decision to the response's end (observed requests)
  kept: KeptBody | null = null; // the response, for the brain's response cache (a miss to fill)
  fleet: bool = false; // routed to the fleet's endpoints (else a provider's cluster)
}

const requests = new Map<u32, Request>();

function fresh(now: u64): bool {
  const current = snapshot;
  if (current == null) return false;
  return now - confirmedAtNs <= <u64>current.staleAfterMs * 1000000;
}

// -- lifecycle ---------------------------------------------------------------------------------

export function proxy_abi_version_0_2_1(): void {}

// proxy_on_context_create is not exported (one call into the VM fewer per request): a
// request's state is made when its headers arrive, the first callback that needs it.

export function proxy_on_vm_start(root: u32, size: u32): u32 {
  routedMetric = defineMetric(MetricType.Counter, "llm_wasm.routed");
  escalatedMetric = defineMetric(MetricType.Counter, "llm_wasm.escalated");
  failOpenMetric = defineMetric(MetricType.Counter, "llm_wasm.fail_open");
  rejectedMetric = defineMetric(MetricType.Counter, "llm_wasm.rejected");
  staleMetric = defineMetric(MetricType.Counter, "llm_wasm.stale_snapshot");
  return 1;
}

export function proxy_on_configure(root: u32, size: u32): u32 {
  const next = new Settings();
  if (size > 0) {
    const raw = getBuffer(BufferType.PluginConfiguration, 0, size);
    if (raw != null) {
      const json = new Json(raw.dataStart, raw.byteLength);
      const start = json.ws(0);
      const fields = json.kind(start) == Kind.Object ? json.fields(start, 0) : null;
      if (fields == null) {
        log(LogLevel.Error, "llm-extproc: plugin configuration is not a JSON object");
        return 0;
      }
      for (let i = 0; i < fields.length; i++) {
        const field = fields[i];
        if (field.key == "brain_cluster") next.cluster = json.stringAt(field.start) || next.cluster;
        else if (field.key == "brain_authority") next.authority = json.stringAt(field.start) || next.authority;
        else if (field.key == "poll_ms") next.pollMs = <u32>json.intAt(field.start, next.pollMs);
        else if (field.key == "decide_timeout_ms") next.decideTimeoutMs = <u32>json.intAt(field.start, next.decideTimeoutMs);
        else if (field.key == "report_every_ticks") next.reportEveryTicks = <u32>json.intAt(field.start, next.reportEveryTicks);
        else if (field.key == "observe") next.observe = json.kind(field.start) == Kind.True;
        else if (field.key == "max_records") next.maxRecords = <i32>json.intAt(field.start, next.maxRecords);
        else if (field.key == "hold_headers") next.holdHeaders = json.kind(field.start) == Kind.True;
      }
    }
  }
  settings = next;
  observations.maxRecords = next.maxRecords;
  setTickPeriod(settings.pollMs);
  poll();
  return 1;
}

export function proxy_on_tick(root: u32): void {
  // The module is built with AssemblyScript's minimal runtime: no collector work on the
  // request path (the incremental one marked a little on every allocation); garbage is
  // collected here, outside any request (nothing of ours is on the stack). A full collection
  // costs about a millisecond, so a tick after no request and no new snapshot (Envoy's main
  // thread, an idle worker: a 304 poll leaves a few bytes) collects only every COLLECT_IDLE_TICKS.
  if (busy || ticks % COLLECT_IDLE_TICKS == 0) __collect();
  busy = false;
  inflight.tick();
  ticks++;
  if (!idle() || ticks % idlePollTicks() == 0) poll();
  if (ticks % settings.reportEveryTicks == 0) report();
}

// -- the brain: snapshot polling, reports ---------------------------------------------------------

/** A VM that has served no request while another VM of this plugin has (Envoy's main-thread
 * VM, a worker without traffic yet) polls less often: its snapshot still stays fresh, and its
 * first request makes it a full-rate poller from the next tick on. While no VM has served
 * anything (Envoy just started), every VM polls at full rate. */
function idle(): bool {
  return !inflight.registered() && inflight.othersRegistered();
}

/** Ticks between an idle VM's polls: 500 ms, and at least four polls within the staleness bound. */
function idlePollTicks(): u32 {
  const current = snapshot;
  const staleAfterMs = current != null ? current.staleAfterMs : 2000;
  const ticks = staleAfterMs / (4 * <i64>max<u32>(settings.pollMs, 1));
  return <u32>max<i64>(1, min<i64>(5, ticks));
}

function brainHeaders(method: string, path: string): Array<string> {
  const headers = new Array<string>();
  headers.push(":method"); headers.push(method);
  headers.push(":path"); headers.push(path);
  headers.push(":authority"); headers.push(settings.authority);
  return headers;
}

function poll(): void {
  if (pollToken != 0) return;
  const headers = brainHeaders("GET", SNAPSHOT_PATH);
  const current = snapshot;
  if (current != null) {
    headers.push("if-none-match");
    headers.push(current.version);
  }
  // A slow answer is not a failed one: the staleness bound, not the poll's timeout, decides
  // when the snapshot stops being used.
  pollToken = httpCall(settings.cluster, headers, new ArrayBuffer(0), max<u32>(settings.pollMs * 5, 1000));
}

function report(): void {
  if (reportToken != 0) {
    reportAgain = reportAgain || observations.urgent;
    return;
  }
  if (observations.empty()) return;
  const body = String.UTF8.encode(observations.drain(inflight.own));
  const headers = brainHeaders("POST", OBSERVATIONS_PATH);
  headers.push("content-type"); headers.push("application/json");
  reportToken = httpCall(settings.cluster, headers, body, 1000);
}

function onSnapshot(headerCount: u32, bodySize: u32): void {
  pollToken = 0;
  if (headerCount == 0) return; // the brain did not answer: keep what we have until it is stale
  const status = getHeader(MapType.HttpCallResponseHeaders, ":status");
  if (status == "304") {
    confirmedAtNs = nowNanos();
    return;
  }
  if (status != "200") return;
  const body = getBuffer(BufferType.HttpCallResponseBody, 0, bodySize);
  if (body == null) return;
  const next = parseSnapshot(body);
  if (next == null) {
    log(LogLevel.Warn, "llm-extproc: ignoring a snapshot this filter cannot read");
    return;
  }
  snapshot = next;
  busy = true; // the old snapshot is garbage now
  confirmedAtNs = nowNanos();
}

export function proxy_on_http_call_response(id: u32, token: u32, headers: u32, bodySize: u32, trailers: u32): void {
  if (token == pollToken) {
    onSnapshot(headers, bodySize);
    return;
  }
  if (token == reportToken) {
    reportToken = 0;
    if (reportAgain) {
      reportAgain = false;
      report();
    }
    return;
  }
  if (!callers.has(token)) return;
  const caller = callers.get(token);
  callers.delete(token);
  if (!requests.has(caller) || !setEffectiveContext(caller)) return;
  const request = requests.get(caller);
  request.token = 0;
  onDecided(request, headers, bodySize);
}

// -- requests ------------------------------------------------------------------------------------

function errorBody(message: string, type: string, code: string): string {
  return '{"error": {"message": "' + message + '", "type": "' + type + '", "code": "' + code + '"}}';
}

function tooLarge(size: u64, limit: i64): void {
  const headers = new Array<string>();
  headers.push("content-type"); headers.push("application/json");
  incrementMetric(rejectedMetric, 1);
  sendLocalResponse(413, "llm_extproc_body_too_large", String.UTF8.encode(errorBody(
    "request body is " + size.toString() + " bytes; the limit is " + limit.toString() + " bytes",
    "request_too_large", "body_too_large")), headers);
}

/** Hands the request to the brain; false when the call could not even start (fail open). */
function escalate(id: u32, request: Request, body: RawBytes | null): bool {
  // Request headers cannot be read once they have passed on: escalations from the body phase
  // use the copy made in the headers phase.
  const kept = request.headers;
  const pairs = decodeHeaders(kept != null ? kept : getHeaderPairsRaw(MapType.RequestHeaders));
  request.headers = null;
  const headers = brainHeaders("POST", DECIDE_PATH);
  for (let i = 0; i + 1 < pairs.length; i += 2) {
    const name = pairs[i];
    if (name == ":path") { headers.push("x-llm-extproc-path"); headers.push(pairs[i + 1]); continue; }
    if (name == ":method") { headers.push("x-llm-extproc-method"); headers.push(pairs[i + 1]); continue; }
    if (name.startsWith(":") || name == "content-length" || name == "transfer-encoding") continue;
    headers.push(name); headers.push(pairs[i + 1]);
  }
  const length = body != null ? body.length : 0;
  headers.push("content-length"); headers.push(length.toString());
  const token = httpCallRaw(settings.cluster, headers, body != null ? body.pointer : 0, length, settings.decideTimeoutMs);
  incrementMetric(escalatedMetric, 1);
  if (token == 0) {
    incrementMetric(failOpenMetric, 1);
    return false;
  }
  request.escalated = true;
  request.token = token;
  callers.set(token, id);
  return true;
}

function routeTier(headers: Array<string>): string {
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] == "x-llm-tier") return headers[i + 1];
  }
  return "";
}

function route(request: Request, headers: Array<string>, primary: string, now: u64, lease: bool = false): void {
  if (settings.holdHeaders) {
    for (let i = 0; i + 1 < headers.length; i += 2) setHeader(MapType.RequestHeaders, headers[i], headers[i + 1]);
  } else {
    for (let i = 0; i + 1 < headers.length; i += 2) setFilterState(headers[i], headers[i + 1]);
  }
  if (primary.length > 0) {
    request.primary = primary;
    request.fleet = true;
    inflight.add(primary, 1, now);
  }
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] == "x-llm-model") request.model = headers[i + 1];
    else if (headers[i] == "x-llm-tier") request.tier = headers[i + 1];
  }
  request.startedNs = now;
  incrementMetric(routedMetric, 1);
  // Fleet requests, and those a provider serves (no endpoint list: a cluster of its own). A
  // request holding the brain's concurrency lease is recorded even without observation: its
  // record ends the lease.
  if ((settings.observe || lease) && (primary.length > 0 || hasHeader(headers, "x-llm-provider"))) {
    const record = newRecord(request, "");
    record.escalated = request.escalated;
    record.urgent = lease;
    record.own = request.escalated || lease || sampled(request.requestId);
    record.primary = primary;
    record.routed(headers, destination(headers));
    request.record = record;
  }
}

/** Whether the brain's decision log samples this request (it then needs its whole record). */
function sampled(requestId: string): bool {
  const current = snapshot;
  if (current == null || current.logSampleBelow <= 0) return false;
  return <i64>crc32(requestId) < current.logSampleBelow;
}

function hasHeader(headers: Array<string>, name: string): bool {
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] == name) return true;
  }
  return false;
}

function destination(headers: Array<string>): string {
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] == DESTINATION_HEADER) return headers[i + 1];
  }
  return "";
}


function apply(request: Request, decision: Decision, now: u64): void {
  // llm_extproc_requests' labels as the ext_proc path sets them: the served model when routed.
  const served = decision.outcome == Outcome.Error ? decision.model : servedModel(decision.headers, decision.model);
  observations.decided(request.task, served, routeTier(decision.headers), decision.outcomeLabel, decision.primary);
  if (decision.outcome == Outcome.Error) {
    incrementMetric(rejectedMetric, 1);
    if (settings.observe) {
      const record = newRecord(request, decision.model);
      record.status = decision.status;
      record.outcome = decision.outcomeLabel;
      record.error = decision.body;
      observations.ended(record);
    }
    sendLocalResponse(<u32>decision.status, "llm_extproc", String.UTF8.encode(decision.body), decision.errorHeaders);
    return;
  }
  const newBody = decision.newBody;
  if (newBody != null) {
    setBuffer(BufferType.RequestBody, 0, request.bodySize, Uint8Array.wrap(newBody));
  }
  route(request, decision.headers, decision.primary, now);
  const record = request.record;
  if (record != null) {
    record.requested = decision.model;
    record.outcome = decision.outcomeLabel;
    // Only records of their own reach the decision log (sampled): no string for the others.
    if (record.own) record.scores = decision.scores.join(",");
  }
}

function servedModel(headers: Array<string>, requested: string): string {
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] == "x-llm-model") return headers[i + 1];
  }
  return requested;
}

function newRecord(request: Request, requested: string): RequestRecord {
  const record = new RequestRecord();
  record.requestId = request.requestId;
  record.task = request.task;
  record.tenant = request.tenant;
  record.requested = requested;
  return record;
}

/** The brain's answer (extproc/wasm/brain.py): route, respond or continue undecided. */
function onDecided(request: Request, headerCount: u32, bodySize: u32): void {
  const status = headerCount > 0 ? getHeader(MapType.HttpCallResponseHeaders, ":status") : "";
  const raw = status == "200" ? getBuffer(BufferType.HttpCallResponseBody, 0, bodySize) : null;
  if (raw == null) {
    // The brain is down or slow: Envoy's fallback LB routes, as when ext_proc fails open.
    incrementMetric(failOpenMetric, 1);
    continueRequest();
    return;
  }
  const json = new Json(raw.dataStart, raw.byteLength);
  const start = json.ws(0);
  const fields = json.kind(start) == Kind.Object ? json.fields(start, 0) : null;
  let action = "continue";
  let code: i32 = 0;
  let body: string | null = null;
  let headers = new Array<string>();
  let primary = "";
  let lease = false;
  let keep: i32 = 0;
  if (fields != null) {
    for (let i = 0; i < fields.length; i++) {
      const field = fields[i];
      if (field.key == "action") action = json.stringAt(field.start) || action;
      else if (field.key == "status") code = <i32>json.intAt(field.start, 0);
      else if (field.key == "body") body = json.stringAt(field.start);
      else if (field.key == "primary") primary = json.stringAt(field.start) || "";
      else if (field.key == "lease") lease = json.kind(field.start) == Kind.True;
      else if (field.key == "cache_keep") keep = <i32>json.intAt(field.start, 0);
      else if (field.key == "headers") {
        const items = json.items(field.start, 1);
        if (items == null) continue;
        for (let j = 0; j < items.length; j++) {
          const pair = json.items(items[j], 2);
          if (pair == null || pair.length != 2) continue;
          const name = json.stringAt(pair[0]);
          const value = json.stringAt(pair[1]);
          if (name == null || value == null) continue;
          headers.push(name); headers.push(value);
        }
      }
    }
  }
  if (action == "respond") {
    if (code >= 400) incrementMetric(rejectedMetric, 1); // /v1/models is answered too
    sendLocalResponse(<u32>code, "llm_extproc", String.UTF8.encode(body != null ? body : ""), headers);
    return;
  }
  if (action == "route") {
    if (body != null) setBuffer(BufferType.RequestBody, 0, request.bodySize, Uint8Array.wrap(String.UTF8.encode(body)));
    route(request, headers, primary, nowNanos(), lease);
    if (keep > 0 && settings.observe) request.kept = new KeptBody(keep);
  } else {
    incrementMetric(failOpenMetric, 1);
  }
  continueRequest();
}

/** The task of the request's :path (its query aside), "" for another path: matched in the
 * header map's bytes against TASK_PATHS. */
function taskAt(pairs: HeaderPairs): string {
  const at = pairs.find(":path");
  if (at == 0) return "";
  let bare = pairs.valueLength;
  for (let i = 0; i < bare; i++) {
    if (load<u8>(at + <usize>i) == 0x3f) { bare = i; break; } // '?'
  }
  for (let t = 0; t < TASK_PATHS.length; t++) {
    const path = TASK_PATHS[t];
    if (path.length != bare) continue;
    let same = true;
    for (let i = 0; i < bare; i++) {
      if (<i32>load<u8>(at + <usize>i) != path.charCodeAt(i)) { same = false; break; }
    }
    if (same) return TASK_NAMES[t];
  }
  return "";
}

export function proxy_on_request_headers(id: u32, count: u32, endOfStream: u32): u32 {
  busy = true;
  const request = new Request();
  requests.set(id, request);
  // One read of all headers answers every lookup below. Held headers stay readable until the
  // body is decided; otherwise they pass on, and an escalation from the body phase needs a copy.
  const hold = settings.holdHeaders;
  const pairs = headerPairs;
  let inPlace = false;
  if (hold) {
    inPlace = fetchHeaderPairs(MapType.RequestHeaders, pairs);
  } else {
    const copy = getHeaderPairsRaw(MapType.RequestHeaders);
    request.headers = copy;
    pairs.base = copy.dataStart;
    pairs.length = copy.byteLength;
  }
  // Compared and parsed in the header map's bytes: strings only for what the request keeps.
  const post = pairs.is(":method", "POST");
  request.task = taskAt(pairs);
  // The usual value is kept as the literal (no copy of it per request).
  request.contentType = pairs.is("content-type", JSON_TYPE) ? JSON_TYPE : pairs.get("content-type");
  request.requestId = pairs.get("x-request-id");
  const digits = pairs.digits("content-length");
  let sized = digits >= 0;
  let size = <u64>digits;
  if (!sized) {
    const length = pairs.get("content-length");
    sized = length.length > 0 && length.length < 19;
    if (sized) size = U64.parseInt(length);
  }
  const current = snapshot;
  if (current != null) {
    request.session = pairs.get(current.sessionHeader);
    if (current.tenantHeader.length > 0) request.tenant = pairs.get(current.tenantHeader);
  }
  if (inPlace) heap.free(pairs.base);
  pairs.base = 0;
  pairs.length = 0;
  // The headers phase of the ext_proc path (404, 405, /v1/models, empty body) is the brain's.
  if (request.task == "" || request.task == "models" || !post || endOfStream != 0) {
    return escalate(id, request, null) ? HeadersStatus.StopIteration : HeadersStatus.Continue;
  }
  // The clock is read only for a body over the limit (a host call fewer per request).
  if (current != null && sized && size > <u64>current.maxBodyBytes && fresh(nowNanos())) {
    tooLarge(size, current.maxBodyBytes);
    return HeadersStatus.StopIteration;
  }
  // Held: our body callback still runs (Envoy's allow_on_headers_stop_iteration). Otherwise
  // Continue: Envoy's buffer filter after us holds the headers until the body is complete (a
  // StopIteration would become StopAllIteration and starve our body callback).
  return hold ? HeadersStatus.StopIteration : HeadersStatus.Continue;
}

export function proxy_on_request_body(id: u32, size: u32, endOfStream: u32): u32 {
  if (!requests.has(id)) return DataStatus.Continue;
  const request = requests.get(id);
  if (request.escalated) return DataStatus.StopIterationAndBuffer;
  request.bodySize = size;
  const current = snapshot;
  const now = nowNanos();
  const usable = current != null && fresh(now);
  if (usable && <i64>size > current!.maxBodyBytes) {
    tooLarge(size, current!.maxBodyBytes);
    return DataStatus.StopIterationNoBuffer;
  }
  if (endOfStream == 0) return DataStatus.StopIterationAndBuffer;
  const body = getBufferRaw(BufferType.RequestBody, 0, size);
  if (body == null) return DataStatus.Continue;
  const status = decideBody(id, request, body, usable ? current : null, now);
  heap.free(body.pointer);
  return status;
}

function decideBody(id: u32, request: Request, body: RawBytes, current: Snapshot | null, now: u64): u32 {
  if (current == null) {
    incrementMetric(staleMetric, 1);
    return escalate(id, request, body) ? DataStatus.StopIterationAndBuffer : DataStatus.Continue;
  }
  inflight.refresh(); // the other workers' counts, as of their last change
  const decision = decide(current, request.task, request.contentType, request.session, request.tenant,
    body.pointer, body.length, inflight);
  if (decision.outcome == Outcome.Escalate) {
    return escalate(id, request, body) ? DataStatus.StopIterationAndBuffer : DataStatus.Continue;
  }
  request.headers = null;
  apply(request, decision, now);
  return decision.outcome == Outcome.Error ? DataStatus.StopIterationNoBuffer : DataStatus.Continue;
}

export function proxy_on_response_headers(id: u32, count: u32, endOfStream: u32): u32 {
  if (!requests.has(id)) return HeadersStatus.Continue;
  const request = requests.get(id);
  const record = request.record;
  if (request.primary.length == 0 && record == null) return HeadersStatus.Continue;
  if (!settings.observe) {
    if (endOfStream != 0) release(request);
    return HeadersStatus.Continue;
  }
  const pairs = headerPairs;
  const inPlace = fetchHeaderPairs(MapType.ResponseHeaders, pairs);
  const code = pairs.digits(":status");
  if (code >= 0 && code < 1_000_000_000) {
    request.status = <i32>code;
  } else {
    const status = pairs.get(":status");
    request.status = status.length > 0 ? <i32>I32.parseInt(status) : 0;
  }
  const served = pairs.get(SERVED_HEADER);
  request.servedBy = served.length > 0 ? served : request.primary;
  request.streamed = pairs.startsWith("content-type", "text/event-stream");
  const kept = request.kept;
  const contentType = kept != null ? pairs.get("content-type") : "";
  // A provider answered, or the fleet did through the fallback hop (its attempt failed).
  const fallback = request.fleet ? "" : pairs.get("x-llm-fallback-model");
  if (inPlace) heap.free(pairs.base);
  pairs.base = 0;
  pairs.length = 0;
  const elapsed = nowNanos() - request.startedNs;
  if (request.fleet) observations.headers(request.primary, request.servedBy, request.status, elapsed, request.streamed);
  request.observed = true;
  if (record != null) {
    record.status = request.status;
    record.servedBy = request.servedBy;
    record.streamed = request.streamed;
    if (!request.streamed) record.ttftNs = <i64>elapsed;
    if (fallback.length > 0) {
      record.model = fallback;
      record.pool = "";
    }
  }
  if (kept != null) {
    kept.contentType = contentType;
    setHeader(MapType.ResponseHeaders, "x-llm-cache", "miss"); // as the ext_proc path marks misses
  }
  if (endOfStream != 0) release(request);
  return HeadersStatus.Continue;
}

export function proxy_on_response_body(id: u32, size: u32, endOfStream: u32): u32 {
  if (!requests.has(id)) return DataStatus.Continue;
  const request = requests.get(id);
  if (request.observed && size > 0) {
    const record = request.record;
    const awaitingText = request.streamed && !request.firstText;
    const chunk = record != null || awaitingText ? getBufferRaw(BufferType.ResponseBody, 0, size) : null;
    if (chunk != null) {
      if (awaitingText && carriesText(chunk.pointer, chunk.length)) {
        request.firstText = true; // the time to first token (a role-only chunk comes earlier)
        const elapsed = nowNanos() - request.startedNs;
        if (request.fleet) observations.firstText(request.servedBy, elapsed);
        if (record != null) record.ttftNs = <i64>elapsed;
      }
      if (record != null) observations.body(request.fleet ? request.servedBy : "", chunk, record);
      const kept = request.kept;
      if (kept != null) kept.add(chunk);
      heap.free(chunk.pointer);
    }
  }
  if (endOfStream != 0) release(request);
  return DataStatus.Continue;
}

/** The endpoint is free again: the response's last byte passed (or the stream ended early). */
function release(request: Request): void {
  const primary = request.primary;
  const record = request.record;
  if (primary.length == 0 && record == null) return;
  const now = nowNanos(); // one host call for both
  if (primary.length > 0) {
    inflight.add(primary, -1, now);
    request.primary = "";
  }
  if (record != null) {
    request.record = null;
    record.durationNs = <i64>(now - request.startedNs);
    if (record.own) observations.ended(record);
    else observations.group(record);
    const kept = request.kept;
    request.kept = null;
    if (kept != null && !kept.overflow && record.status == 200) fillCache(record, kept);
    // The brain holds this request's concurrency lease until it hears the request ended.
    if (record.urgent) report();
  }
}

/** A response the brain's cache asked for, once it has passed whole (docs/wasm.md). */
function fillCache(record: RequestRecord, kept: KeptBody): void {
  const headers = brainHeaders("POST", CACHE_FILL_PATH);
  headers.push("x-request-id"); headers.push(record.requestId);
  headers.push("content-type"); headers.push(kept.contentType);
  httpCall(settings.cluster, headers, kept.bytes(), 1000);
}

// The stream's last callback into the module (Envoy logs every stream it created a context
// for, resets and local replies included): the request is released and forgotten here.
// proxy_on_done and proxy_on_delete are not exported, nor are the trailers, metadata, queue
// and foreign-function callbacks: the host then skips them (each call into the VM costs).
export function proxy_on_log(id: u32): void {
  if (!requests.has(id)) return;
  const request = requests.get(id);
  release(request); // resets and early ends
  // Envoy cancels a dead request's pending call without answering it.
  if (request.token != 0) callers.delete(request.token);
  requests.delete(id);
}
