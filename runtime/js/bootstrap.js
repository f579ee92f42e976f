'use strict';
// The taskcell runtime inside a sandbox: speaks the frame protocol of docs/protocol.md with the daemon
// over fd 3, compiles and runs one tenant's tasks, and turns their console output into Log frames.
// runtime/src is the Rust half of the same protocol. Started as
//   node --max-old-space-size=N /taskcell/bootstrap.js   (fd 3: a SOCK_STREAM Unix socket)
// Everything the runtime needs is taken here, before any tenant code runs: tenant code shares this global
// object (the spec wants one globalThis per tenant) and may replace JSON, Buffer or Promise methods, but
// that must not change how frames are written. The socket never leaves this module's scope.

const net = require('net');
const vm = require('vm');
const { createRequire } = require('module');
const { AsyncLocalStorage } = require('async_hooks');

const MAX_FRAME = 8 * 1024 * 1024 + 4 * 1024;
const HEADER_LEN = 13;
const RUN = 1;
const COMPILE = 2;
const READY = 16;
const RESULT = 17;
const ERROR = 18;
const LOG = 19;
const COMPILED = 20;
// The largest code cache sent back (a frame holds 8 MiB): a larger one is left out, never an error.
const MAX_CACHE = 4 * 1024 * 1024;

const RESULT_LIMIT = 1024 * 1024;
// A little over the daemon's 64 KiB cap, so that the daemon still sees that the cap was reached.
const LOG_BUDGET = 70 * 1024;
const MESSAGE_LIMIT = 16 * 1024;

const jsonStringify = JSON.stringify;
const jsonParse = JSON.parse;
const bufferFrom = Buffer.from.bind(Buffer);
const bufferAlloc = Buffer.allocUnsafe.bind(Buffer);
const bufferConcat = Buffer.concat.bind(Buffer);
const byteLength = Buffer.byteLength.bind(Buffer);
const bufferToString = Function.prototype.call.bind(Buffer.prototype.toString);
// Lone surrogates would make a frame's meta invalid UTF-8 (and the daemon kill the sandbox as a protocol
// violation): replace them. String.prototype.toWellFormed where Node has it (20+), else the same by hand.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const wellFormed = typeof String.prototype.toWellFormed === 'function'
  ? Function.prototype.call.bind(String.prototype.toWellFormed)
  : (text) => String.prototype.replace.call(text, LONE_SURROGATE, '\uFFFD');
const bytesSet = Function.prototype.call.bind(Uint8Array.prototype.set);
const bytesSubarray = Function.prototype.call.bind(Uint8Array.prototype.subarray);
const reflectApply = Reflect.apply;
const captureStackTrace = Error.captureStackTrace;
const promiseResolve = Promise.resolve.bind(Promise);
const promiseThen = Function.prototype.call.bind(Promise.prototype.then);
const SafeMap = Map;
const mapGet = Function.prototype.call.bind(Map.prototype.get);
const mapSet = Function.prototype.call.bind(Map.prototype.set);
const exit = process.exit.bind(process);
const EMPTY = bufferAlloc(0);

const socket = new net.Socket({ fd: 3, readable: true, writable: true });
const socketWrite = socket.write.bind(socket);

// The invocation whose code is running: its id and its log budget. Logs and errors outside any
// invocation are charged to `idle`, whose budget is renewed with each frame from the daemon.
const als = new AsyncLocalStorage();
const idle = { id: 0, settled: true, logBytes: 0, logTruncated: false };

// ---- writing frames ------------------------------------------------------------------------------

function putU32(buf, at, n) {
  buf[at] = n >>> 24;
  buf[at + 1] = (n >>> 16) & 0xff;
  buf[at + 2] = (n >>> 8) & 0xff;
  buf[at + 3] = n & 0xff;
}

// meta: an object or null (meta_len 0, meaning {}); body: a Buffer or null.
function send(type, id, meta, body) {
  const metaBuf = meta === null ? EMPTY : bufferFrom(jsonStringify(meta), 'utf8');
  const bodyBuf = body === null ? EMPTY : body;
  const len = HEADER_LEN - 4 + metaBuf.length + bodyBuf.length;
  // Every caller bounds what it sends (results, messages, logs) far below this.
  if (len > MAX_FRAME) throw new RangeError(`runtime: frame of ${len} bytes over the limit`);
  const frame = bufferAlloc(4 + len);
  putU32(frame, 0, len);
  frame[4] = type;
  putU32(frame, 5, id);
  putU32(frame, 9, metaBuf.length);
  bytesSet(frame, metaBuf, HEADER_LEN);
  bytesSet(frame, bodyBuf, HEADER_LEN + metaBuf.length);
  // A false return only means Node buffers the rest; order is kept either way.
  if (!warming) socketWrite(frame);
}

// True while warmUp runs: frames are built but not sent.
let warming = false;

// Cuts `text` to at most maxBytes of UTF-8, never inside a character. Returns a Buffer.
function utf8Prefix(text, maxBytes) {
  // A character is at least one byte, so this slice already holds every character that can fit.
  const buf = bufferFrom(text.length > maxBytes ? text.slice(0, maxBytes) : text, 'utf8');
  if (buf.length <= maxBytes) return buf;
  let end = maxBytes;
  while (end > 0 && (buf[end] & 0xc0) === 0x80) end--;
  return bytesSubarray(buf, 0, end);
}

const TRUNCATED = '... [truncated]';

function limitMessage(text) {
  text = wellFormed(text);
  if (byteLength(text, 'utf8') <= MESSAGE_LIMIT) return text;
  return bufferToString(utf8Prefix(text, MESSAGE_LIMIT - TRUNCATED.length), 'utf8') + TRUNCATED;
}

// ---- logs ----------------------------------------------------------------------------------------

function sendLog(inv, level, text) {
  if (inv.logTruncated) return;
  const remaining = LOG_BUDGET - inv.logBytes;
  if (byteLength(text, 'utf8') <= remaining) {
    const buf = bufferFrom(text, 'utf8');
    inv.logBytes += buf.length;
    return send(LOG, inv.id, { level }, buf);
  }
  // Over budget: send what fits, say so once, then drop the invocation's later logs.
  const buf = utf8Prefix(text, remaining);
  if (buf.length > 0) send(LOG, inv.id, { level }, buf);
  inv.logBytes += buf.length;
  inv.logTruncated = true;
  send(LOG, inv.id, { level: 'warn' }, bufferFrom('[logs truncated]', 'utf8'));
}

// console.* formats with a private Console (group indentation, %-formats, inspect, table, count,
// time, trace all as Node does) whose streams turn each line into a Log frame. Its stdout is level
// "log" and its stderr "error"; info, debug and warn say their own level through `levelOverride`.
let levelOverride = null;

function consoleSink(defaultLevel) {
  return {
    write(chunk) {
      let text = typeof chunk === 'string' ? chunk : String(chunk);
      if (text.endsWith('\n')) text = text.slice(0, -1);
      sendLog(als.getStore() ?? idle, levelOverride ?? defaultLevel, text);
      return true;
    },
    // Console wraps each write in once/removeListener('error'); there are no errors to catch here.
    listenerCount() { return 1; },
    once() { return this; },
    on() { return this; },
    removeListener() { return this; },
  };
}

function installConsole() {
  const { Console } = console;
  const inner = new Console({ stdout: consoleSink('log'), stderr: consoleSink('error'), colorMode: false });
  for (const [name, level] of [['info', 'info'], ['debug', 'debug'], ['warn', 'warn']]) {
    const base = inner[name];
    // Set on `inner` too: its assert() calls this.warn().
    inner[name] = function (...args) {
      const saved = levelOverride;
      levelOverride = level;
      try {
        return reflectApply(base, undefined, args);
      } finally {
        levelOverride = saved;
      }
    };
  }
  // As Node's trace, less the runtime's own frames below the tenant's.
  inner.trace = function trace(...args) {
    const err = { name: 'Trace', message: require('util').format(...args) };
    captureStackTrace(err, trace);
    inner.error(trimStack(err.stack));
  };
  for (const name of Object.keys(Console.prototype)) {
    if (typeof inner[name] === 'function') console[name] = inner[name];
  }
}

// ---- errors --------------------------------------------------------------------------------------

// The text of a thrown value: its stack if it has one, else String(value), never throwing.
function describe(err) {
  try {
    if (err !== null && (typeof err === 'object' || typeof err === 'function')) {
      const stack = err.stack;
      if (typeof stack === 'string' && stack !== '') return trimStack(stack);
    }
    const text = String(err);
    if (text !== '[object Object]') return text;
  } catch {
    // A hostile toString or stack getter; fall through to inspect.
  }
  try {
    return require('util').inspect(err, { depth: 2 });
  } catch {
    return 'a thrown value that cannot be described';
  }
}

// Drops the runtime's own frames (and Node's below them) from a stack: tenants see their code only.
function trimStack(stack) {
  const lines = stack.split('\n');
  const ours = `(${__filename}:`;
  const cut = lines.findIndex((line) => line.startsWith('    at ') && line.includes(ours));
  return cut < 0 ? stack : lines.slice(0, cut).join('\n');
}

function shortMessage(err) {
  try {
    if (err !== null && typeof err === 'object' && typeof err.message === 'string') return err.message;
    return String(err);
  } catch {
    return 'unknown error';
  }
}

// "SyntaxError: Unexpected token '}' at line 3, column 7" (both 1-based). V8 does not expose the
// location of a SyntaxError, but Node decorates the stack of a compile error with it:
//   /tasks/foo.js:3        <- file:line
//     foo(}                <- the source line
//         ^                <- a caret under the start column (absent past column 1020)
function compileErrorMessage(err, filename) {
  let head;
  let stack = '';
  try {
    head = `${err.name}: ${err.message}`;
    if (typeof err.stack === 'string') stack = err.stack;
  } catch {
    head = describe(err);
  }
  const lines = stack.split('\n', 3);
  const prefix = `${filename}:`;
  if (lines.length === 3 && lines[0].startsWith(prefix)) {
    const line = lines[0].slice(prefix.length);
    if (/^[0-9]+$/.test(line)) {
      const caret = lines[2];
      const column = caret.indexOf('^');
      const where = column >= 0 && /^[ \t]*\^+$/.test(caret)
        ? ` at line ${line}, column ${column + 1}`
        : ` at line ${line}`;
      return limitMessage(head) + where;
    }
  }
  return limitMessage(head);
}

// ---- compiling and running -----------------------------------------------------------------------

// Tenant code's `require`: the operator's npm modules by name and version (modules.js), else Node's own.
const tenantRequire = require('./modules.js').makeRequire(createRequire('/taskcell/'));
const WRAPPER_PARAMS = ['exports', 'require', 'module', '__filename', '__dirname'];
// Lets tenant code use import() like a CommonJS module would (Node >= 20.12).
const importModuleDynamically = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;

// key -> { fn, filename, dirname, module }. `module` is null until the module body has run without
// throwing; a body that throws is run again by the next invocation, as Node re-runs a failed require.
const compiled = new SafeMap();
// key -> compile_error message, for the latest keys whose source did not compile: the daemon may already
// have sent more Runs of such a key without the source (it omits the source once it has sent it).
const failed = new SafeMap();
const FAILED_KEPT = 256;

function rememberFailure(key, message) {
  if (failed.size >= FAILED_KEPT) failed.delete(failed.keys().next().value);
  mapSet(failed, key, message);
}

function filenameFor(key, task) {
  if (typeof task === 'string' && task !== '') return `/tasks/${task}.js`;
  const sha = key.startsWith('adhoc:') ? key.slice('adhoc:'.length) : key;
  return `/adhoc/${sha.replace(/[^A-Za-z0-9_-]/g, '_')}.js`;
}

// Compiles as Node's CommonJS loader does, as a function of the module wrapper's parameters, in this
// (the one shared) context. Throws the compile error. `cache` (a V8 code cache made by a Compile of the same
// source, or null) spares the parse and the eager compile; V8 checks it and ignores one that does not fit.
// `produceCache` asks V8 for such a cache (then on the function as `cachedData`).
function compileModule(source, filename, cache, produceCache) {
  const options = { filename };
  if (importModuleDynamically !== undefined) options.importModuleDynamically = importModuleDynamically;
  if (cache !== null && cache.length > 0) options.cachedData = cache;
  if (produceCache) options.produceCachedData = true;
  return vm.compileFunction(source, WRAPPER_PARAMS, options);
}

function settle(inv) {
  if (inv.settled) return false;
  inv.settled = true;
  return true;
}

function fail(inv, message) {
  if (settle(inv)) sendTaskError(inv, message);
}

function succeed(inv, value) {
  if (!settle(inv)) return;
  let json;
  try {
    json = value === undefined ? 'null' : jsonStringify(value);
  } catch (err) {
    return sendTaskError(inv, `result is not JSON-serialisable: ${shortMessage(err)}`);
  }
  if (json === undefined) {
    return sendTaskError(inv, `result is not JSON-serialisable: a ${typeof value}`);
  }
  const buf = bufferFrom(json, 'utf8');
  if (buf.length > RESULT_LIMIT) {
    return sendTaskError(inv, `result too large (${buf.length} bytes, limit ${RESULT_LIMIT})`);
  }
  send(RESULT, inv.id, null, buf);
}

function sendTaskError(inv, message) {
  send(ERROR, inv.id, { kind: 'task_error', message: limitMessage(message) }, null);
}

function thenOf(value) {
  if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return undefined;
  return value.then; // may throw: the caller treats that as the task failing
}

function run(id, meta, body) {
  const sourceLen = meta.sourceLen;
  if (!Number.isInteger(sourceLen) || sourceLen < 0 || sourceLen > body.length) {
    return protocolError(`Run ${id}: sourceLen ${typeof sourceLen === 'number' ? sourceLen : typeof sourceLen} does not fit a body of ${body.length}`);
  }
  const cacheLen = meta.cacheLen === undefined ? 0 : meta.cacheLen;
  if (!Number.isInteger(cacheLen) || cacheLen < 0 || sourceLen + cacheLen > body.length) {
    return protocolError(`Run ${id}: cacheLen ${typeof cacheLen === 'number' ? cacheLen : typeof cacheLen} does not fit a body of ${body.length}`);
  }
  if (typeof meta.key !== 'string') return protocolError(`Run ${id}: no key`);
  const inv = { id, settled: false, logBytes: 0, logTruncated: false };
  als.run(inv, () => {
    // Tenant code can make the runtime's own steps throw (a getter on module.exports, a promise whose
    // constructor getter throws): that fails this invocation, never the runtime.
    try {
      const cache = bytesSubarray(body, sourceLen, sourceLen + cacheLen);
      invoke(inv, meta, bytesSubarray(body, 0, sourceLen), cache, bytesSubarray(body, sourceLen + cacheLen));
    } catch (err) {
      fail(inv, describe(err));
    }
  });
}

function invoke(inv, meta, source, cache, data) {
  const task = typeof meta.task === 'string' ? meta.task : null;
  let entry = mapGet(compiled, meta.key);
  if (entry === undefined) {
    const failure = mapGet(failed, meta.key);
    if (failure !== undefined) {
      settle(inv);
      return send(ERROR, inv.id, { kind: 'compile_error', message: failure }, null);
    }
    // A key the sandbox has not seen comes with its source; a sourceLen of 0 is then an empty module.
    const filename = filenameFor(meta.key, task);
    let fn;
    try {
      fn = compileModule(bufferToString(source, 'utf8'), filename, cache, false);
    } catch (err) {
      const message = compileErrorMessage(err, filename);
      rememberFailure(meta.key, message);
      settle(inv);
      return send(ERROR, inv.id, { kind: 'compile_error', message }, null);
    }
    entry = { fn, filename, dirname: filename.slice(0, filename.lastIndexOf('/')), module: null };
    mapSet(compiled, meta.key, entry);
  }

  if (entry.module === null) {
    const module = { exports: {}, id: entry.filename, filename: entry.filename, loaded: false,
      children: [], paths: [], require: tenantRequire };
    try {
      reflectApply(entry.fn, module.exports,
        [module.exports, tenantRequire, module, entry.filename, entry.dirname]);
    } catch (err) {
      return fail(inv, describe(err));
    }
    module.loaded = true;
    entry.module = module;
  }

  const handler = entry.module.exports;
  if (typeof handler !== 'function') {
    const what = handler === null ? 'null' : typeof handler;
    return fail(inv, `module.exports is not a function (it is ${what}); export a function (data, ctx)`);
  }

  let input;
  try {
    input = data.length === 0 ? null : jsonParse(bufferToString(data, 'utf8'));
  } catch (err) {
    return fail(inv, `input data is not JSON: ${shortMessage(err)}`);
  }
  const ctx = { tenant: meta.tenant, task, requestId: meta.requestId };

  // The first of return, callback, resolve, reject or throw settles the invocation; the rest are ignored.
  const onValue = (value) => succeed(inv, value);
  const onError = (err) => fail(inv, describe(err));
  let returned;
  try {
    if (handler.length >= 3) {
      const callback = (err, value) => {
        if (err !== null && err !== undefined) onError(err);
        else onValue(value);
      };
      returned = reflectApply(handler, undefined, [input, ctx, callback]);
      // A callback-style task answers through the callback only. It may be an async function: its
      // promise's rejection fails the invocation, but its fulfilment (usually undefined, before a timer
      // calls back) is not the result.
      if (typeof thenOf(returned) === 'function') promiseThen(promiseResolve(returned), undefined, onError);
      return;
    } else {
      returned = reflectApply(handler, undefined, [input, ctx]);
    }
  } catch (err) {
    return onError(err);
  }
  promiseThen(promiseResolve(returned), onValue, onError);
}

function compile(id, meta, body) {
  const filename = filenameFor('check', typeof meta.task === 'string' ? meta.task : null);
  let fn;
  try {
    fn = compileModule(bufferToString(body, 'utf8'), filename, null, meta.cache === true);
  } catch (err) {
    return send(ERROR, id, { kind: 'compile_error', message: compileErrorMessage(err, filename) }, null);
  }
  // The code cache, when asked for and made: the daemon hands it back with this source's Runs.
  let cache = meta.cache === true && fn.cachedDataProduced === true ? fn.cachedData : null;
  if (cache !== null && cache.length > MAX_CACHE) cache = null;
  send(COMPILED, id, null, cache);
}

// ---- stray errors --------------------------------------------------------------------------------

// An exception or rejection that escaped tenant code. It fails the invocation it came from if that one
// is still running, and is logged otherwise; it never takes the runtime down.
function stray(what, err, inv) {
  if (inv !== undefined && inv !== null && !inv.settled) return fail(inv, `${what}: ${describe(err)}`);
  sendLog(inv ?? idle, 'error', `${what}: ${describe(err)}`);
}

process.on('uncaughtException', (err) => {
  // Node still has the failed callback's async context entered while it emits this event.
  stray('Uncaught exception', err, als.getStore());
});

process.on('unhandledRejection', (reason, promise) => {
  // Node 20's AsyncLocalStorage keeps the store of the context a promise was made in on the promise;
  // where that is not so, fall back to the current context.
  const key = als.kResourceStore;
  let inv;
  if (typeof key === 'symbol' && promise !== null && typeof promise === 'object') inv = promise[key];
  stray('Unhandled rejection', reason, inv ?? als.getStore());
});

// ---- reading frames ------------------------------------------------------------------------------

function protocolError(message) {
  try {
    sendLog(idle, 'error', `runtime: protocol error from the daemon: ${message}`);
  } finally {
    exit(70);
  }
}

function readU32(buf, at) {
  return ((buf[at] << 24) >>> 0) + (buf[at + 1] << 16) + (buf[at + 2] << 8) + buf[at + 3];
}

let chunks = [];
let buffered = 0;

function onFrame(frame) {
  const type = frame[4];
  const id = readU32(frame, 5);
  const metaLen = readU32(frame, 9);
  if (HEADER_LEN + metaLen > frame.length) return protocolError(`meta_len ${metaLen} overruns the frame`);
  if ((type === RUN || type === COMPILE) && id === 0) return protocolError(`frame type ${type} with id 0`);
  let meta;
  try {
    meta = metaLen === 0 ? {} : jsonParse(bufferToString(frame, 'utf8', HEADER_LEN, HEADER_LEN + metaLen));
  } catch (err) {
    return protocolError(`bad meta: ${shortMessage(err)}`);
  }
  if (meta === null || typeof meta !== 'object') return protocolError('meta is not an object');
  const body = bytesSubarray(frame, HEADER_LEN + metaLen);
  idle.logBytes = 0;
  idle.logTruncated = false;
  if (type === RUN) run(id, meta, body);
  else if (type === COMPILE) compile(id, meta, body);
  else protocolError(`unexpected frame type ${type}`);
}

// Chunks are kept as they arrive and joined only once a whole frame is there, so a large frame
// arriving in many pieces is copied once.
function onData(chunk) {
  chunks.push(chunk);
  buffered += chunk.length;
  while (buffered >= 4) {
    if (chunks[0].length < 4) chunks = [bufferConcat(chunks, buffered)];
    const len = readU32(chunks[0], 0);
    if (len > MAX_FRAME || len < HEADER_LEN - 4) return protocolError(`frame length ${len}`);
    if (buffered < 4 + len) return;
    if (chunks[0].length < 4 + len) chunks = [bufferConcat(chunks, buffered)];
    const head = chunks[0];
    const frame = bytesSubarray(head, 0, 4 + len);
    if (head.length === 4 + len) chunks.shift();
    else chunks[0] = bytesSubarray(head, 4 + len);
    buffered -= 4 + len;
    try {
      onFrame(frame);
    } catch (err) {
      return protocolError(`internal error: ${shortMessage(err)}`);
    }
  }
}

socket.on('data', onData);
// The daemon is gone, or gave up on this sandbox: nothing is left to do.
socket.on('end', () => exit(0));
socket.on('close', () => exit(0));
socket.on('error', () => exit(0));

// One pass through the whole invocation path (frame parsing, the module wrapper, compiling, AsyncLocalStorage,
// a promise, JSON, console, the answer's frame) while the sandbox waits in the pool, so that V8's one-off
// costs of the first invocation are not paid by a tenant's first request. Nothing is sent; the warm-up's
// compiled module is forgotten.
function warmUp() {
  const source = bufferFrom('module.exports = async (d, ctx) => { console.log(d.n); return { n: d.n + 1, ctx }; };');
  const data = bufferFrom('{"n": 1}');
  const meta = bufferFrom(jsonStringify({ tenant: 'warmup', task: null, requestId: 'warmup', key: 'warmup', sourceLen: source.length }));
  const frame = bufferAlloc(HEADER_LEN + meta.length + source.length + data.length);
  putU32(frame, 0, frame.length - 4);
  frame[4] = RUN;
  putU32(frame, 5, 0xffffffff);
  putU32(frame, 9, meta.length);
  bytesSet(frame, meta, HEADER_LEN);
  bytesSet(frame, source, HEADER_LEN + meta.length);
  bytesSet(frame, data, HEADER_LEN + meta.length + source.length);
  // Stays true until the promise has settled on a microtask and its answer has been built (and dropped).
  warming = true;
  onData(frame);
}

installConsole();
warmUp();
setImmediate(() => {
  warming = false;
  compiled.delete('warmup');
  idle.logBytes = 0;
  idle.logTruncated = false;
  send(READY, 0, { pid: process.pid, node: process.version }, null);
});
