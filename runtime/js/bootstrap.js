'use strict';
// The taskcell runtime inside a sandbox: speaks the frame protocol of docs/protocol.md with the daemon
// over fd 3, compiles and runs one tenant's tasks, and turns their console output into Log frames.
// runtime/src is the Rust half of the same protocol. Started as
//   node --max-old-space-size=N /taskcell/bootstrap.js   (fd 3: a SOCK_STREAM Unix socket)
// Everything the runtime needs is taken here, before any tenant code runs: tenant code shares this global
// object (the spec wants one globalThis per tenant) and may replace JSON, Buffer or Promise methods, but
// that must not change how frames are written. The socket never leaves this module's scope.

// The daemon starts Node with --max-old-space-size, which V8 reads once, when it makes the heap. Any V8 flag
// left set makes V8 refuse Node's code cache of its built-in modules (the cache carries a hash of the flags),
// so that every built-in required from then on is compiled from source: net and tls cost 13 ms of CPU instead
// of 3, a third of a boot, and a tenant's first require('https') pays the same. Set back to its default, the
// flag no longer counts; the limit already in force stays (docs/boot.md, "The heap flag"). A Worker made by
// tenant code gets V8's default heap limit, under the same memory cgroup. Through the binding, not
// require('v8'), which would itself be compiled without the cache (5 ms); its deprecation warning is not
// printed, and a Node without the binding takes the module.
{
  const quiet = process.noDeprecation;
  process.noDeprecation = true;
  try {
    process.binding('v8').setFlagsFromString('--max-old-space-size=0');
  } catch {
    require('v8').setFlagsFromString('--max-old-space-size=0');
  } finally {
    process.noDeprecation = quiet;
  }
}

const net = require('net');
const vm = require('vm');
const { createRequire } = require('module');
const { AsyncLocalStorage } = require('async_hooks');
const { Readable, Writable } = require('stream');
const readFileSync = require('fs').readFileSync;
const parseQuery = require('querystring').parse;

const MAX_FRAME = 8 * 1024 * 1024 + 4 * 1024;
const HEADER_LEN = 13;
const RUN = 1;
const COMPILE = 2;
const SECRETS = 3;
const READY = 16;
const RESULT = 17;
const ERROR = 18;
const LOG = 19;
const COMPILED = 20;
const HTTP_RESPONSE = 21;
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
const objectFreeze = Object.freeze;
const objectKeys = Object.keys;
const isArray = Array.isArray;
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
const socketCork = socket.cork.bind(socket);
const socketUncork = socket.uncork.bind(socket);
const enqueueMicrotask = queueMicrotask;

// The invocation whose code is running: its id and its log budget. Logs and errors outside any
// invocation are charged to `idle`, whose budget is renewed with each frame from the daemon.
const als = new AsyncLocalStorage();
// The tenant's secrets (a frozen object of strings), as the daemon's last Secrets frame gave them: read by
// every model (ctx.secrets, params.__secrets, a compiler's ctx.secrets).
let tenantSecrets = objectFreeze({});
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
  if (warming) return;
  // A log goes out at once (what a task logged before it hangs still reaches the daemon), and with it
  // whatever answers were held back before it, so that order is kept.
  if (type === LOG) uncorkAnswers();
  // A false return only means Node buffers the rest; order is kept either way.
  socketWrite(frame);
}

// Frames that arrive together (several Runs in one read) are answered together: the answers their code
// gives synchronously or on the microtasks that follow are held back (corked) and written in one writev
// once those microtasks have run, so that the daemon is woken once for the batch, not once per answer.
// Answers that come later (timers, I/O) are written at once, as are logs.
let corked = false;

function corkAnswers() {
  if (corked) return;
  corked = true;
  socketCork();
}

function uncorkAnswers() {
  if (!corked) return;
  corked = false;
  socketUncork();
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
  // adhoc:<sha256> or adhoc@<model>:<sha256>
  const sha = key.slice(key.lastIndexOf(':') + 1);
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

// ---- programming models ----------------------------------------------------------------------------
// A model turns a task's source into the function the runtime calls (docs/models.md). `taskcell`, `webtask`
// and `openwhisk` are built in: each compiles the source as a CommonJS module and picks its function from
// what the module exported or returned. Any other model is an operator's compiler, /compilers/NAME.js (bound
// read-only by the daemon), a CommonJS module run here like tenant code: `function (source, helpers)`
// returning the task's function `(data, ctx)`.

const COMPILERS_DIR = '/compilers';
const MODEL_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
// A top-level `function main` is a local of the module wrapper: this hands it out as the wrapper's value.
const OPENWHISK_EPILOGUE = "\n;return typeof main === 'function' ? main : undefined;";

function builtinModel(model) {
  return model === 'taskcell' || model === 'webtask' || model === 'openwhisk';
}

// What the built-in model compiles: the source itself, plus the epilogue for openwhisk. Compile and Run
// compile the same text, so that a code cache made by the one fits the other.
function modelSource(model, text) {
  return model === 'openwhisk' ? text + OPENWHISK_EPILOGUE : text;
}

function newModule(filename) {
  return { exports: {}, id: filename, filename, loaded: false, children: [], paths: [], require: tenantRequire };
}

// Runs a compiled module body; returns what the body returned (a webtask's top-level `return function`).
function runBody(fn, module) {
  const dirname = module.filename.slice(0, module.filename.lastIndexOf('/'));
  const returned = reflectApply(fn, module.exports, [module.exports, tenantRequire, module, module.filename, dirname]);
  module.loaded = true;
  return returned;
}

// The function a built-in model calls (or what stands in its place, when the source exports none).
function pickHandler(model, module, returned) {
  const exported = module.exports;
  if (model === 'webtask') return typeof returned === 'function' ? returned : exported;
  if (model === 'openwhisk') {
    if (exported !== null && (typeof exported === 'object' || typeof exported === 'function') && typeof exported.main === 'function') {
      return exported.main;
    }
    return typeof exported === 'function' ? exported : returned;
  }
  return exported;
}

function noHandler(model, handler) {
  const what = handler === null ? 'null' : typeof handler;
  if (model === 'webtask') return `the webtask gives no function (module.exports is ${what}): set module.exports to a function, or end with a top-level return function ...`;
  if (model === 'openwhisk') return 'the action has no main: set exports.main, set module.exports to a function, or declare a top-level function main';
  return `module.exports is not a function (it is ${what}); export a function (data, ctx)`;
}

// model -> its compiler's exported function, loaded once per sandbox.
const compilers = new SafeMap();

function loadCompiler(model) {
  let compiler = mapGet(compilers, model);
  if (compiler !== undefined) return compiler;
  if (typeof model !== 'string' || !MODEL_NAME.test(model)) throw new Error(`unknown model ${String(model)}`);
  const filename = `${COMPILERS_DIR}/${model}.js`;
  let text;
  try {
    text = readFileSync(filename, 'utf8');
  } catch (err) {
    throw new Error(`the model ${model} has no compiler in this sandbox (${filename}: ${shortMessage(err)})`);
  }
  const module = newModule(filename);
  runBody(compileModule(text, filename, null, false), module);
  compiler = module.exports;
  if (typeof compiler !== 'function') throw new TypeError(`${filename} does not export a function (source, helpers)`);
  mapSet(compilers, model, compiler);
  return compiler;
}

// Runs the model's compiler over a task's source: the task's function, or a throw.
function compileWithCompiler(model, text, filename) {
  const compiler = loadCompiler(model);
  const helpers = {
    // `code` as a CommonJS module with the tenant's require; its module.exports.
    compile(code, name) {
      const file = typeof name === 'string' && name !== '' ? name : filename;
      const module = newModule(file);
      runBody(compileModule(String(code), file, null, false), module);
      return module.exports;
    },
  };
  const fn = reflectApply(compiler, undefined, [text, helpers]);
  if (typeof fn !== 'function') {
    throw new TypeError(`the ${model} compiler returned ${fn === null ? 'null' : typeof fn}, not the task's function (data, ctx)`);
  }
  return fn;
}

// A compiler's failure as a compile_error message: a SyntaxError with its place, anything else as thrown.
function compilerErrorMessage(model, err) {
  try {
    if (err instanceof SyntaxError && typeof err.stack === 'string') {
      const first = err.stack.split('\n', 1)[0];
      const at = first.lastIndexOf(':');
      if (at > 0) return compileErrorMessage(err, first.slice(0, at));
    }
  } catch {
    // A hostile error object: described below.
  }
  return limitMessage(`the ${model} compiler failed: ${describe(err)}`);
}

// ---- HTTP: the request a Run on the HTTP endpoint carries, Node-like req and res -----------------------

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[\u0000-\u0008\u000a-\u001f\u007f]/;
const MAX_RESPONSE_HEADERS = 100;
const MAX_HEADER_VALUE = 8 * 1024;

// http.headers ([[name, value]...]) as Node's req.headers: names lower-cased, repeats joined with ', '
// (set-cookie kept as an array).
function headersObject(pairs) {
  const headers = {};
  for (const [name, value] of pairs) {
    const lower = String(name).toLowerCase();
    const prev = headers[lower];
    if (lower === 'set-cookie') headers[lower] = prev === undefined ? [value] : [...prev, value];
    else headers[lower] = prev === undefined ? value : `${prev}, ${value}`;
  }
  return headers;
}

function queryOf(url) {
  const at = url.indexOf('?');
  return at < 0 ? {} : { ...parseQuery(url.slice(at + 1)) };
}

// The input of a task that does not take req/res: the body parsed as JSON when its Content-Type says so,
// null when empty, else the body as a string. Throws a SyntaxError for a JSON body that does not parse.
function httpInput(headers, body) {
  if (body.length === 0) return null;
  const type = typeof headers['content-type'] === 'string' ? headers['content-type'] : '';
  const media = type.split(';', 1)[0].trim().toLowerCase();
  const text = bufferToString(body, 'utf8');
  return media === 'application/json' ? jsonParse(text) : text;
}

function badRequest(inv, message) {
  if (settle(inv)) send(ERROR, inv.id, { kind: 'bad_request', message: limitMessage(message) }, null);
}

const kInv = Symbol('invocation');
const kHeaders = Symbol('headers');
const kChunks = Symbol('chunks');

// Node's http.ServerResponse as far as tasks use it: statusCode, setHeader/getHeader/removeHeader,
// writeHead, write and end (a Writable, so streams pipe into it). What is written is collected; `finish`
// sends it as one HttpResponse frame.
class TaskResponse extends Writable {
  constructor(inv) {
    super();
    this.statusCode = 200;
    this.statusMessage = '';
    this.headersSent = false;
    this.sendDate = false;
    this[kInv] = inv;
    this[kHeaders] = new SafeMap();
    this[kChunks] = { list: [], size: 0 };
    this.once('finish', () => finishResponse(this));
  }

  setHeader(name, value) {
    if (this.headersSent) throw new Error('Cannot set headers after they are sent to the client');
    if (typeof name !== 'string' || !TOKEN.test(name)) throw new TypeError(`Invalid header name: ${String(name)}`);
    mapSet(this[kHeaders], name.toLowerCase(), [name, value]);
    return this;
  }

  getHeader(name) {
    const entry = mapGet(this[kHeaders], String(name).toLowerCase());
    return entry === undefined ? undefined : entry[1];
  }

  getHeaders() {
    const out = {};
    for (const [lower, [, value]] of this[kHeaders]) out[lower] = value;
    return out;
  }

  getHeaderNames() {
    return [...this[kHeaders].keys()];
  }

  hasHeader(name) {
    return this[kHeaders].has(String(name).toLowerCase());
  }

  removeHeader(name) {
    if (this.headersSent) throw new Error('Cannot remove headers after they are sent to the client');
    this[kHeaders].delete(String(name).toLowerCase());
  }

  writeHead(status, reason, headers) {
    if (typeof reason !== 'string') {
      headers = reason;
      reason = undefined;
    }
    this.statusCode = status;
    if (reason !== undefined) this.statusMessage = reason;
    if (isArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(headers[i], headers[i + 1]);
    } else if (headers !== null && typeof headers === 'object') {
      for (const name of objectKeys(headers)) this.setHeader(name, headers[name]);
    }
    this.headersSent = true;
    return this;
  }

  _write(chunk, encoding, callback) {
    this.headersSent = true;
    const chunks = this[kChunks];
    chunks.size += chunk.length;
    // Past the limit nothing more is kept: the answer is a task_error anyway.
    if (chunks.size <= RESULT_LIMIT) chunks.list[chunks.list.length] = chunk;
    callback();
  }
}

function finishResponse(res) {
  const inv = res[kInv];
  if (!settle(inv)) return;
  const status = res.statusCode;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    return sendTaskError(inv, `res.statusCode ${String(status)} is not a final HTTP status (200 to 599)`);
  }
  const headers = [];
  for (const [, [name, value]] of res[kHeaders]) {
    if (HOP_BY_HOP.has(name.toLowerCase())) continue;
    const values = isArray(value) ? value : [value];
    for (const one of values) {
      if (typeof one !== 'string' && typeof one !== 'number') {
        return sendTaskError(inv, `the value of the response header ${name} is a ${typeof one}, not a string or a number`);
      }
      const text = wellFormed(String(one));
      if (BAD_VALUE.test(text) || text.length > MAX_HEADER_VALUE) {
        return sendTaskError(inv, `the value of the response header ${name} holds a control character (CR, LF, NUL...) or is over 8 KiB`);
      }
      headers[headers.length] = [name, text];
    }
  }
  if (headers.length > MAX_RESPONSE_HEADERS) {
    return sendTaskError(inv, `the response has ${headers.length} headers (at most ${MAX_RESPONSE_HEADERS})`);
  }
  const chunks = res[kChunks];
  if (chunks.size > RESULT_LIMIT) {
    return sendTaskError(inv, `response body too large (${chunks.size} bytes, limit ${RESULT_LIMIT})`);
  }
  send(HTTP_RESPONSE, inv.id, { status, headers }, bufferConcat(chunks.list, chunks.size));
}

// A webtask (ctx, req, res): req is a Readable of the body with method, url and headers.
function serveHttp(inv, handler, ctx, http, headers, body) {
  const req = new Readable({ read() {} });
  req.method = http.method;
  req.url = http.url;
  req.headers = headers;
  req.rawHeaders = http.headers.flat();
  req.httpVersion = '1.1';
  req.httpVersionMajor = 1;
  req.httpVersionMinor = 1;
  if (body.length > 0) req.push(body);
  req.push(null);
  const res = new TaskResponse(inv);
  const onError = (err) => fail(inv, describe(err));
  let returned;
  try {
    returned = reflectApply(handler, undefined, [ctx, req, res]);
    // The answer is what goes through res; a rejection of an async handler fails the invocation.
    if (typeof thenOf(returned) === 'function') promiseThen(promiseResolve(returned), undefined, onError);
  } catch (err) {
    onError(err);
  }
}

// Calls `handler` with `args` (and a Node-style callback after them when `callbackStyle`): the first of
// return, callback, resolve, reject or throw settles the invocation; the rest are ignored.
function callTask(inv, handler, args, callbackStyle) {
  const onValue = (value) => succeed(inv, value);
  const onError = (err) => fail(inv, describe(err));
  let returned;
  try {
    if (callbackStyle) {
      args[args.length] = (err, value) => {
        if (err !== null && err !== undefined) onError(err);
        else onValue(value);
      };
      returned = reflectApply(handler, undefined, args);
      // A callback-style task answers through the callback only. It may be an async function: its
      // promise's rejection fails the invocation, but its fulfilment (usually undefined, before a timer
      // calls back) is not the result.
      if (typeof thenOf(returned) === 'function') promiseThen(promiseResolve(returned), undefined, onError);
      return;
    }
    returned = reflectApply(handler, undefined, args);
  } catch (err) {
    return onError(err);
  }
  promiseThen(promiseResolve(returned), onValue, onError);
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
  const model = typeof meta.model === 'string' ? meta.model : 'taskcell';
  const http = meta.http !== null && typeof meta.http === 'object' ? meta.http : null;
  let entry = mapGet(compiled, meta.key);
  if (entry === undefined) {
    const failure = mapGet(failed, meta.key);
    if (failure !== undefined) {
      settle(inv);
      return send(ERROR, inv.id, { kind: 'compile_error', message: failure }, null);
    }
    // A key the sandbox has not seen comes with its source; a sourceLen of 0 is then an empty module.
    const filename = filenameFor(meta.key, task);
    const text = bufferToString(source, 'utf8');
    let fn = null;
    if (builtinModel(model)) {
      try {
        fn = compileModule(modelSource(model, text), filename, cache, false);
      } catch (err) {
        const message = compileErrorMessage(err, filename);
        rememberFailure(meta.key, message);
        settle(inv);
        return send(ERROR, inv.id, { kind: 'compile_error', message }, null);
      }
    }
    // An operator's compiler keeps the source text until it has turned it into a function.
    entry = { fn, text: fn === null ? text : null, filename, model, module: null, returned: undefined, handler: null };
    mapSet(compiled, meta.key, entry);
  }

  let handler = entry.handler;
  if (entry.fn !== null) {
    if (entry.module === null) {
      const module = newModule(entry.filename);
      try {
        entry.returned = runBody(entry.fn, module);
      } catch (err) {
        return fail(inv, describe(err));
      }
      entry.module = module;
    }
    handler = pickHandler(entry.model, entry.module, entry.returned);
    if (typeof handler !== 'function') return fail(inv, noHandler(entry.model, handler));
  } else if (handler === null) {
    // A compiler that throws fails this Run (a task_error) and runs again on the key's next Run.
    try {
      handler = compileWithCompiler(entry.model, entry.text, entry.filename);
    } catch (err) {
      return fail(inv, `the ${entry.model} compiler failed: ${describe(err)}`);
    }
    entry.handler = handler;
    entry.text = null;
  }

  const headers = http === null ? {} : headersObject(http.headers);
  const raw = entry.model === 'webtask' && handler.length >= 3;
  if (raw && http === null) {
    return badRequest(inv, 'this webtask is a function (ctx, req, res): it answers HTTP requests, so it runs on the HTTP endpoint (/v1/tenants/TENANT/tasks/TASK/http), not on /run');
  }
  let input = null;
  if (http !== null && !raw) {
    try {
      input = httpInput(headers, data);
    } catch (err) {
      return badRequest(inv, `the request body is not JSON, though its Content-Type says application/json: ${shortMessage(err)}`);
    }
  } else if (http === null) {
    try {
      input = data.length === 0 ? null : jsonParse(bufferToString(data, 'utf8'));
    } catch (err) {
      return fail(inv, `input data is not JSON: ${shortMessage(err)}`);
    }
  }

  if (entry.model === 'webtask') {
    const query = http === null ? {} : queryOf(http.url);
    const isObject = input !== null && typeof input === 'object' && !isArray(input);
    const ctx = {
      data: isObject ? { ...query, ...input } : { ...query },
      body: input,
      query,
      headers,
      secrets: tenantSecrets,
      meta: { tenant: meta.tenant, task, requestId: meta.requestId },
    };
    if (raw) return serveHttp(inv, handler, ctx, http, headers, data);
    return callTask(inv, handler, handler.length <= 1 ? [] : [ctx], true);
  }
  if (entry.model === 'openwhisk') {
    let params;
    if (input === null) params = {};
    else if (typeof input === 'object' && !isArray(input)) params = { ...input };
    else if (http !== null && typeof input === 'string') params = { __ow_body: input };
    else return badRequest(inv, `an openwhisk action takes a JSON object (or null) as its input, not ${isArray(input) ? 'an array' : `a ${typeof input}`}`);
    if (http !== null) {
      params.__ow_method = String(http.method).toLowerCase();
      params.__ow_headers = headers;
      params.__ow_path = http.url.split('?', 1)[0];
      params.__ow_query = queryOf(http.url);
    }
    params.__secrets = tenantSecrets;
    return callTask(inv, handler, [params], false);
  }
  const ctx = { tenant: meta.tenant, task, requestId: meta.requestId, secrets: tenantSecrets };
  if (entry.model === 'taskcell') return callTask(inv, handler, [input, ctx], handler.length >= 3);
  // An operator's compiler's function: (data, ctx), a value or a Promise.
  if (http !== null) ctx.http = { method: http.method, url: http.url, headers, query: queryOf(http.url) };
  return callTask(inv, handler, [input, ctx], false);
}

function compile(id, meta, body) {
  const filename = filenameFor('check', typeof meta.task === 'string' ? meta.task : null);
  const model = typeof meta.model === 'string' ? meta.model : 'taskcell';
  if (!builtinModel(model)) return compileWithModel(id, model, bufferToString(body, 'utf8'), filename);
  let fn;
  try {
    fn = compileModule(modelSource(model, bufferToString(body, 'utf8')), filename, null, meta.cache === true);
  } catch (err) {
    return send(ERROR, id, { kind: 'compile_error', message: compileErrorMessage(err, filename) }, null);
  }
  // The code cache, when asked for and made: the daemon hands it back with this source's Runs.
  let cache = meta.cache === true && fn.cachedDataProduced === true ? fn.cachedData : null;
  if (cache !== null && cache.length > MAX_CACHE) cache = null;
  send(COMPILED, id, null, cache);
}

// An operator's model checks a source by running its compiler over it (which may run the source's module
// body, through helpers.compile): a throw is a compile_error, a compiler that never returns a timeout. What
// it made is not kept, and no code cache is made (the compiler decides what is compiled).
function compileWithModel(id, model, text, filename) {
  const inv = { id, settled: false, logBytes: 0, logTruncated: false };
  als.run(inv, () => {
    try {
      compileWithCompiler(model, text, filename);
    } catch (err) {
      settle(inv);
      return send(ERROR, id, { kind: 'compile_error', message: compilerErrorMessage(model, err) }, null);
    }
    settle(inv);
    send(COMPILED, id, null, null);
  });
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

// ---- egress --------------------------------------------------------------------------------------
// The sandbox's network namespace holds only lo. The daemon listens inside it on 127.0.0.1:3128 and on the
// abstract Unix socket EGRESS_TARGET; a TCP connection to anywhere but this sandbox's own loopback is made to
// the Unix socket instead (Node reads it for a third less CPU than TCP, and a download goes at the rate Node
// reads: docs/egress.md), and opened with `CONNECT host:port HTTP/1.1` (docs/protocol.md, "Egress"). The daemon decides (allow-list, addresses,
// limits), connects, answers 200 and then carries bytes both ways unread; any other answer fails the
// connection with the error it names (code EGRESS_DENIED for a refusal). Patched here, at
// net.Socket.prototype.connect and tls.connect, so that fetch (undici calls net.connect and tls.connect),
// http/https with any agent, net.connect and tls.connect, and the npm modules built on them, work unchanged.
// The caller sees 'connect' only once the tunnel is up, so TLS starts end to end through it. This is
// convenience, not enforcement: tenant code that bypasses it reaches nothing but the same daemon.

const tls = require('tls');
// crate::EGRESS_SOCKET, where this Node's libuv reaches abstract names (1.46 and later: Node 20.4 on); the
// daemon binds the name both as 1.46-1.47 connect to it (padded with NULs to the whole of sun_path) and as
// 1.48 on do (its own length). An older Node tunnels through TCP 127.0.0.1:3128, as before.
const EGRESS_TARGET = (() => {
  const [major, minor] = String(process.versions.uv).split('.').map(Number);
  return major > 1 || (major === 1 && minor >= 46) ? { path: '\0taskcell-egress' } : { host: '127.0.0.1', port: 3128 };
})();
const EGRESS_ANSWER_LIMIT = 16 * 1024;
const socketConnect = net.Socket.prototype.connect;
const socketWriteGeneric = net.Socket.prototype._writeGeneric;
const tlsConnect = tls.connect;
const normalizeArgs = net._normalizeArgs;
const isIP = net.isIP;
const bufferIndexOf = Function.prototype.call.bind(Buffer.prototype.indexOf);
const regexpExec = Function.prototype.call.bind(RegExp.prototype.exec);
const stringToLowerCase = Function.prototype.call.bind(String.prototype.toLowerCase);
const stringStartsWith = Function.prototype.call.bind(String.prototype.startsWith);
const objectAssign = Object.assign;

// This sandbox's own loopback (a server the task runs itself) stays direct: the daemon refuses loopback.
function isLocal(host) {
  if (host === undefined || host === null || host === '') return true; // Node's default is localhost
  const h = stringToLowerCase(String(host));
  if (h === 'localhost' || h === '::1' || h === '[::1]') return true;
  return isIP(h) === 4 && stringStartsWith(h, '127.');
}

function validPort(port) {
  const n = typeof port === 'string' && port.trim() !== '' ? Number(port) : port;
  return Number.isInteger(n) && n > 0 && n < 65536 ? n : 0;
}

function egressError(message, code, reason, host, port) {
  const err = new Error(message);
  err.code = code;
  if (code !== 'EGRESS_DENIED') err.syscall = 'connect';
  err.reason = reason;
  err.host = host;
  err.port = port;
  return err;
}

// Opens `sock` (a net.Socket, not yet connected) through the daemon to host:port.
function tunnel(sock, host, port, cb) {
  const bare = host[0] === '[' ? host.slice(1, -1) : host;
  const target = `${isIP(bare) === 6 ? `[${bare}]` : bare}:${port}`;
  const inv = als.getStore();
  const request = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n` +
    (inv !== undefined && inv.id ? `X-Taskcell-Invocation: ${inv.id}\r\n` : '') + '\r\n';
  if (typeof cb === 'function') sock.once('connect', cb);
  const ownEmit = sock.emit;
  const ownPush = sock.push;
  let answer = EMPTY;
  const restore = () => {
    sock.emit = ownEmit;
    sock.push = ownPush;
  };
  // 'connect' and 'ready' of the socket to the daemon are not the caller's: held until the tunnel is up.
  sock.emit = function emit(event, ...rest) {
    if (event === 'ready') return false;
    if (event !== 'connect') return reflectApply(ownEmit, this, [event, ...rest]);
    // Straight to the handle, ahead of anything the caller queued (which waits for the real 'connect').
    reflectApply(socketWriteGeneric, sock, [false, request, 'latin1', () => {}]);
    sock.connecting = true;
    const handle = sock._handle;
    if (handle && !handle.reading) {
      handle.reading = true;
      handle.readStart();
    }
    return false;
  };
  // The daemon's answer is read here and never reaches the caller.
  sock.push = function push(chunk, encoding) {
    if (chunk === null) {
      restore();
      sock.destroy(egressError(`egress to ${target}: the daemon closed the connection without answering`, 'ECONNRESET', 'closed', bare, port));
      return false;
    }
    answer = answer.length === 0 ? chunk : bufferConcat([answer, chunk]);
    const end = bufferIndexOf(answer, '\r\n\r\n');
    if (end < 0) {
      if (answer.length > EGRESS_ANSWER_LIMIT) {
        restore();
        sock.destroy(egressError(`egress to ${target}: the daemon's answer is too long`, 'ECONNRESET', 'bad_answer', bare, port));
      }
      return true;
    }
    const head = bufferToString(answer, 'latin1', 0, end);
    const status = regexpExec(/^HTTP\/1\.[01] ([0-9]{3})/, head);
    if (status !== null && status[1] === '200') {
      restore();
      const rest = bytesSubarray(answer, end + 4);
      sock.connecting = false;
      sock.emit('connect');
      sock.emit('ready');
      if (rest.length > 0) return reflectApply(ownPush, sock, [rest, encoding]);
      return true;
    }
    const length = regexpExec(/\r\ncontent-length: *([0-9]+)/i, head);
    const bodyLen = length === null ? 0 : Number(length[1]);
    if (answer.length < end + 4 + bodyLen && answer.length <= EGRESS_ANSWER_LIMIT) return true;
    restore();
    const code = regexpExec(/\r\nx-taskcell-egress-code: *([A-Z_]+)/i, head);
    const reason = regexpExec(/\r\nx-taskcell-egress-reason: *([a-z_]+)/i, head);
    const body = bufferToString(answer, 'utf8', end + 4, end + 4 + bodyLen);
    const message = body !== '' ? body : `egress to ${target} refused (${head.split('\r\n', 1)[0]})`;
    sock.destroy(egressError(message, code === null ? 'EGRESS_DENIED' : code[1], reason === null ? 'refused' : reason[1], bare, port));
    return false;
  };
  return reflectApply(socketConnect, sock, [objectAssign({}, EGRESS_TARGET)]);
}

net.Socket.prototype.connect = function connect(...args) {
  const normalized = args.length === 1 && Array.isArray(args[0]) ? args[0] : normalizeArgs(args);
  const options = normalized[0];
  const port = options === null || typeof options !== 'object' ? 0 : validPort(options.port);
  // A Unix socket, a bad port (Node's own error), a TLS socket's own connect, or this sandbox's loopback.
  if (port === 0 || options.path || this.encrypted === true || isLocal(options.host)) {
    return reflectApply(socketConnect, this, args);
  }
  return tunnel(this, String(options.host), port, normalized[1]);
};

tls.connect = function connect(...args) {
  const normalized = normalizeArgs(args);
  const options = normalized[0];
  if (args[1] !== null && typeof args[1] === 'object') objectAssign(options, args[1]);
  else if (args[2] !== null && typeof args[2] === 'object') objectAssign(options, args[2]);
  const port = validPort(options.port);
  if (options.socket || options.path || port === 0 || isLocal(options.host)) {
    return reflectApply(tlsConnect, tls, args);
  }
  // An unconnected socket: TLS wraps it as a stream and starts its handshake on its 'connect', which the
  // tunnel emits once the daemon has answered 200.
  const raw = new net.Socket();
  const secure = reflectApply(tlsConnect, tls, normalized[1] ? [{ ...options, socket: raw }, normalized[1]] : [{ ...options, socket: raw }]);
  raw.connect({ host: options.host, port });
  return secure;
};

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
  else if (type === SECRETS) setSecrets(id, meta);
  else protocolError(`unexpected frame type ${type}`);
}

// A Secrets frame replaces the tenant's secrets for every invocation from the next one on.
function setSecrets(id, meta) {
  if (id !== 0) return protocolError(`Secrets frame with id ${id}`);
  const given = meta.secrets;
  if (given === null || typeof given !== 'object' || isArray(given)) return protocolError('Secrets meta without a secrets object');
  const secrets = {};
  for (const name of objectKeys(given)) {
    if (typeof given[name] !== 'string') return protocolError(`secret ${name} is not a string`);
    secrets[name] = given[name];
  }
  tenantSecrets = objectFreeze(secrets);
}

// Chunks are kept as they arrive and joined only once a whole frame is there, so a large frame
// arriving in many pieces is copied once.
function onData(chunk) {
  corkAnswers();
  try {
    takeFrames(chunk);
  } finally {
    // Queued behind the microtasks that the frames' code queued (the answers of synchronous and
    // already-settled results), so it runs once they have.
    enqueueMicrotask(uncorkAnswers);
  }
}

function takeFrames(chunk) {
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
