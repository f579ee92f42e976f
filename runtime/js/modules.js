'use strict';
// The operator's npm modules as tenant code's `require` sees them: `require('NAME')` is the highest installed
// version, `require('NAME@VERSION')` that exact one, both with a subpath (`'lodash/fp'`,
// `'lodash@4.17.21/fp'`) and for scoped names (`'@scope/name@1.2.3'`). Node's built-ins win for their names;
// relative and absolute paths go to Node's loader as before.
//
// The modules are the directory `taskcell serve --modules DIR` binds read-only at /taskcell/modules (an
// empty mount point without it), laid out as `taskcell modules add` (src/modules.rs) makes it: one folder
// per version, DIR/NAME@VERSION or DIR/@SCOPE/NAME@VERSION, each holding npm's install of that version
// (node_modules/NAME and its own dependencies beside it). A module is loaded by Node's own resolver from
// inside its version's folder, so that its package.json `exports` and `main` apply and its dependencies are
// found in that folder and nowhere else.
//
// The index of what is installed is read when the sandbox starts (in the pool, before any request), and read
// again on a miss, so that a version added while the daemon runs is found. Everything used after start-up is
// taken here, before tenant code runs: tenant code shares this global object and may replace String, Array or
// RegExp methods, `fs` or `module` functions, but that must not change what a name resolves to.

const fs = require('fs');
const { createRequire, isBuiltin } = require('module');

const ROOT = '/taskcell/modules';

const readdirSync = fs.readdirSync;
const existsSync = fs.existsSync;
const SafeError = Error;
const SafeMap = Map;
const call = Function.prototype.call;
const uncurry = (fn) => call.bind(fn);
const mapGet = uncurry(Map.prototype.get);
const mapSet = uncurry(Map.prototype.set);
const arrayPush = uncurry(Array.prototype.push);
const arraySort = uncurry(Array.prototype.sort);
const arrayJoin = uncurry(Array.prototype.join);
const arrayMap = uncurry(Array.prototype.map);
const stringIndexOf = uncurry(String.prototype.indexOf);
const stringLastIndexOf = uncurry(String.prototype.lastIndexOf);
const stringSlice = uncurry(String.prototype.slice);
const stringSplit = uncurry(String.prototype.split);
const stringStartsWith = uncurry(String.prototype.startsWith);
const regexpExec = uncurry(RegExp.prototype.exec);
const numberOf = Number;

// Semantic versioning 2.0.0's grammar (no leading zeros in numbers; prerelease and build metadata).
const SEMVER = /^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$/;
const NUMERIC = /^[0-9]+$/;

// { major, minor, patch, pre: [identifiers] } or null for what is not an exact version.
function parseVersion(text) {
  const m = regexpExec(SEMVER, text);
  if (m === null) return null;
  return { text, major: numberOf(m[1]), minor: numberOf(m[2]), patch: numberOf(m[3]), pre: m[4] === undefined ? [] : stringSplit(m[4], '.') };
}

function compareIdentifiers(a, b) {
  const an = regexpExec(NUMERIC, a) !== null;
  const bn = regexpExec(NUMERIC, b) !== null;
  if (an && bn) return numberOf(a) - numberOf(b);
  if (an !== bn) return an ? -1 : 1; // numeric identifiers are lower than alphanumeric ones
  return a < b ? -1 : a > b ? 1 : 0;
}

// Semver precedence (4.17.21 > 4.9.0; 5.0.0-beta.2 < 5.0.0); build metadata only breaks ties.
function compareVersions(a, b) {
  if (a.major !== b.major) return a.major - b.major;
  if (a.minor !== b.minor) return a.minor - b.minor;
  if (a.patch !== b.patch) return a.patch - b.patch;
  if (a.pre.length === 0 || b.pre.length === 0) {
    if (a.pre.length !== b.pre.length) return a.pre.length === 0 ? 1 : -1; // a release beats its prereleases
  }
  for (let i = 0; i < a.pre.length && i < b.pre.length; i++) {
    const c = compareIdentifiers(a.pre[i], b.pre[i]);
    if (c !== 0) return c;
  }
  if (a.pre.length !== b.pre.length) return a.pre.length - b.pre.length;
  return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
}

// name -> { versions: [{ version, dir, require }], highest } with versions highest first. `highest` is the
// highest release, or the highest prerelease when only prereleases are installed (as npm's `*` would not
// pick a prerelease either).
let index = new SafeMap();

function list(dir) {
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch {
    return []; // no modules dir (a rootfs without the mount point), or a folder removed meanwhile
  }
}

// One folder NAME@VERSION below `scope` ('' or '@scope/'); anything else (npm's temporary folders, dot
// files) is not a module.
function addFolder(next, entries, scope, base, folder) {
  const at = stringLastIndexOf(folder, '@');
  if (at <= 0 || stringStartsWith(folder, '.')) return;
  const version = parseVersion(stringSlice(folder, at + 1));
  if (version === null) return;
  const name = scope + stringSlice(folder, 0, at);
  let entry = mapGet(next, name);
  if (entry === undefined) {
    entry = { versions: [], highest: null };
    mapSet(next, name, entry);
    arrayPush(entries, entry);
  }
  arrayPush(entry.versions, { version, dir: `${base}/${folder}`, require: null });
}

function scan() {
  // Plain loops: tenant code may have replaced the array and map iterators.
  const next = new SafeMap();
  const entries = [];
  const top = list(ROOT);
  for (let i = 0; i < top.length; i++) {
    if (!top[i].isDirectory()) continue;
    const folder = top[i].name;
    if (stringStartsWith(folder, '@') && stringIndexOf(folder, '@', 1) < 0) {
      const scoped = list(`${ROOT}/${folder}`);
      for (let j = 0; j < scoped.length; j++) {
        if (scoped[j].isDirectory()) addFolder(next, entries, `${folder}/`, `${ROOT}/${folder}`, scoped[j].name);
      }
    } else {
      addFolder(next, entries, '', ROOT, folder);
    }
  }
  for (let i = 0; i < entries.length; i++) {
    const versions = entries[i].versions;
    arraySort(versions, (a, b) => compareVersions(b.version, a.version));
    entries[i].highest = versions[0];
    for (let j = 0; j < versions.length; j++) {
      if (versions[j].version.pre.length === 0) {
        entries[i].highest = versions[j];
        break;
      }
    }
  }
  index = next;
}

// A bare specifier split into { name, version (a string, or null), sub ('' or '/rest') }, or null when the
// request is not one (a path, a malformed scope).
function parseRequest(request) {
  let start = 0;
  if (stringStartsWith(request, '@')) {
    const slash = stringIndexOf(request, '/');
    if (slash < 2) return null;
    start = slash + 1;
  }
  const slash = stringIndexOf(request, '/', start);
  const end = slash < 0 ? request.length : slash;
  const at = stringIndexOf(request, '@', start);
  if (at === start || end === start) return null;
  const hasVersion = at > start && at < end;
  return {
    name: stringSlice(request, 0, hasVersion ? at : end),
    version: hasVersion ? stringSlice(request, at + 1, end) : null,
    sub: stringSlice(request, end),
  };
}

function find(spec) {
  const entry = mapGet(index, spec.name);
  if (entry === undefined) return undefined;
  if (spec.version === null) return entry.highest;
  for (let i = 0; i < entry.versions.length; i++) {
    if (entry.versions[i].version.text === spec.version) return entry.versions[i];
  }
  return undefined;
}

function notFound(request, spec) {
  const entry = mapGet(index, spec.name);
  let detail;
  if (entry === undefined) {
    detail = `no version of ${spec.name} is installed`;
  } else {
    const versions = arrayJoin(arrayMap(entry.versions, (v) => v.version.text), ', ');
    detail = `${spec.name}@${spec.version} is not installed; installed versions of ${spec.name}: ${versions}`;
  }
  const err = new SafeError(`Cannot find module '${request}': ${detail}`);
  err.code = 'MODULE_NOT_FOUND';
  return err;
}

// The installed version a request names, re-reading the index once if it is not there; throws
// MODULE_NOT_FOUND when it is still not.
function versionFor(request, spec) {
  let found = find(spec);
  if (found === undefined) {
    scan();
    found = find(spec);
    if (found === undefined) throw notFound(request, spec);
  }
  if (found.require === null) found.require = createRequire(`${found.dir}/`);
  return found;
}

// What to ask the version folder's require for: the bare name, so that the package's `exports` apply; for a
// package named like a built-in (`events`, `buffer`), which Node's resolver would answer with the built-in,
// its path.
function target(found, spec) {
  if (isBuiltin(spec.name)) return `${found.dir}/node_modules/${spec.name}${spec.sub}`;
  return spec.name + spec.sub;
}

// Whether `request` is for this module: a string naming a package, not a built-in, not a path.
function bare(request) {
  if (typeof request !== 'string' || request === '' || isBuiltin(request)) return null;
  if (stringStartsWith(request, '.') || stringStartsWith(request, '/')) return null;
  return parseRequest(request);
}

// Loads (or resolves) an installed module. A version removed since the index was read (`modules remove`
// while the daemon runs) fails in Node's resolver: then the index is read again and the request retried.
function load(request, spec, resolving) {
  let found = versionFor(request, spec);
  try {
    return resolving ? found.require.resolve(target(found, spec)) : found.require(target(found, spec));
  } catch (err) {
    if (existsSync(found.dir)) throw err;
    scan();
    found = versionFor(request, spec);
    return resolving ? found.require.resolve(target(found, spec)) : found.require(target(found, spec));
  }
}

// Tenant code's `require`: npm modules as above, the rest as `base` (Node's require for /taskcell/) has it.
function makeRequire(base) {
  function tenantRequire(request) {
    const spec = bare(request);
    return spec === null ? base(request) : load(request, spec, false);
  }
  function resolve(request, options) {
    const spec = bare(request);
    return spec === null ? base.resolve(request, options) : load(request, spec, true);
  }
  resolve.paths = base.resolve.paths;
  tenantRequire.resolve = resolve;
  tenantRequire.cache = base.cache;
  tenantRequire.main = base.main;
  tenantRequire.extensions = base.extensions;
  return tenantRequire;
}

scan();

module.exports = { makeRequire };
