//! npm modules: `taskcell modules add|list|remove` with the host's npm and the real registry, and tenant code
//! requiring them in sandboxes of a daemon started with `--modules`.
//!
//! The packages are installed once for this file (lodash, ms in two versions, uuid, jsonwebtoken, which has
//! dependencies of its own) into a temporary directory shared by its tests, next to a few hand-made version
//! folders (the layout is documented: docs/api.md, "npm modules") that prove what no small real package
//! shows cheaply: semver order over string order, a prerelease, a scope, a name that is also a built-in. The
//! directory is removed when the test binary exits, after the shared daemon has stopped. Root required; see
//! tests/common/mod.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use common::{unique, Daemon};
use serde_json::{json, Value};

static SHARED: OnceLock<Daemon> = OnceLock::new();
static MODULES: OnceLock<PathBuf> = OnceLock::new();
/// The directory to remove at exit (set once it exists).
static TO_REMOVE: Mutex<Option<PathBuf>> = Mutex::new(None);

const REAL: &[&str] = &["lodash@4.17.21", "ms@2.1.3", "ms@2.0.0", "uuid@9.0.1", "jsonwebtoken@9.0.2"];

fn taskcell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskcell")).args(args).output().expect("run taskcell")
}

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A version folder as `modules add` lays it out, written by hand: `index.js` exports `body`. `name` may be
/// `@scope/name`.
fn hand_made(dir: &Path, name: &str, version: &str, body: &str) {
    let pkg = dir.join(format!("{name}@{version}")).join("node_modules").join(name);
    fs::create_dir_all(&pkg).expect("create a hand-made version folder");
    fs::write(pkg.join("package.json"), json!({"name": name, "version": version}).to_string()).expect("write package.json");
    fs::write(pkg.join("index.js"), body).expect("write index.js");
    fs::write(pkg.join("sub.js"), format!("module.exports = 'sub of {version}';")).expect("write sub.js");
}

extern "C" fn remove_modules_dir() {
    if let Some(dir) = TO_REMOVE.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// The shared modules directory, installed on first use.
fn modules_dir() -> &'static Path {
    MODULES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("taskcell-it-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the modules directory");
        *TO_REMOVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
        // Registered before the shared daemon's handler, so that it runs after it: the daemon stops first.
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe { libc::atexit(remove_modules_dir) };
        let mut args = vec!["modules", "add", "--dir", dir.to_str().expect("UTF-8 temp dir")];
        args.extend(REAL);
        let o = taskcell(&args);
        assert!(o.status.success(), "modules add failed: {}", text(&o));
        for v in ["4.9.0", "4.17.21", "4.18.0-beta.1"] {
            hand_made(&dir, "semverprobe", v, &format!("module.exports = '{v}';"));
        }
        hand_made(&dir, "@probe/scoped", "1.2.3", "module.exports = 'scoped 1.2.3';");
        hand_made(&dir, "events", "3.3.0", "module.exports = 'the npm events';");
        dir
    })
}

fn shared() -> &'static Daemon {
    let dir = modules_dir().to_str().expect("UTF-8 temp dir");
    Daemon::shared(&SHARED, "modules", &["--modules", dir])
}

fn run(code: &str) -> Value {
    shared().run_ok(&unique("mod"), code, Value::Null)["result"].clone()
}

#[test]
fn require_by_name_is_the_highest_version_and_by_version_that_one() {
    need_root!("require_by_name_is_the_highest_version_and_by_version_that_one");
    let r = run(r#"module.exports = () => ({
        ms: require('ms/package.json').version,
        ms200: require('ms@2.0.0/package.json').version,
        ms213: require('ms@2.1.3/package.json').version,
        twoHours: require('ms')('2h'),
        oldTwoHours: require('ms@2.0.0')('2h'),
        probe: require('semverprobe'),
        probe49: require('semverprobe@4.9.0'),
        probeBeta: require('semverprobe@4.18.0-beta.1'),
        probeSub: require('semverprobe/sub'),
        probeSub49: require('semverprobe@4.9.0/sub'),
        scoped: require('@probe/scoped'),
        scopedExact: require('@probe/scoped@1.2.3'),
        scopedSub: require('@probe/scoped@1.2.3/sub'),
        resolved: require.resolve('ms@2.0.0'),
    })"#);
    assert_eq!(r["ms"], "2.1.3", "{r}");
    assert_eq!(r["ms200"], "2.0.0", "{r}");
    assert_eq!(r["ms213"], "2.1.3", "{r}");
    assert_eq!(r["twoHours"], 7_200_000, "{r}");
    assert_eq!(r["oldTwoHours"], 7_200_000, "{r}");
    // Semver order, not string order ("4.9.0" > "4.17.21" as strings); a prerelease only when asked for.
    assert_eq!(r["probe"], "4.17.21", "{r}");
    assert_eq!(r["probe49"], "4.9.0", "{r}");
    assert_eq!(r["probeBeta"], "4.18.0-beta.1", "{r}");
    assert_eq!(r["probeSub"], "sub of 4.17.21", "{r}");
    assert_eq!(r["probeSub49"], "sub of 4.9.0", "{r}");
    assert_eq!(r["scoped"], "scoped 1.2.3", "{r}");
    assert_eq!(r["scopedExact"], "scoped 1.2.3", "{r}");
    assert_eq!(r["scopedSub"], "sub of 1.2.3", "{r}");
    assert_eq!(r["resolved"], "/taskcell/modules/ms@2.0.0/node_modules/ms/index.js", "{r}");
}

#[test]
fn lodash_uuid_and_subpaths_work() {
    need_root!("lodash_uuid_and_subpaths_work");
    let r = run(r#"const _ = require('lodash');
        const fp = require('lodash/fp');
        const { v4, validate, version } = require('uuid');
        module.exports = () => ({
            version: _.VERSION,
            exact: require('lodash@4.17.21') === _,
            chunk: _.chunk([1, 2, 3, 4, 5], 2),
            fp: fp.map((x) => x * 2)([1, 2]),
            sameFp: require('lodash@4.17.21/fp') === fp,
            uuid: v4(),
            valid: validate(v4()),
            uuidVersion: version(v4()),
        })"#);
    assert_eq!(r["version"], "4.17.21", "{r}");
    assert_eq!(r["exact"], true, "{r}");
    assert_eq!(r["chunk"], json!([[1, 2], [3, 4], [5]]), "{r}");
    assert_eq!(r["fp"], json!([2, 4]), "{r}");
    assert_eq!(r["sameFp"], true, "{r}");
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["uuidVersion"], 4, "{r}");
    assert_eq!(r["uuid"].as_str().map(str::len), Some(36), "{r}");
}

#[test]
fn jsonwebtoken_signs_and_verifies_with_its_own_dependencies() {
    need_root!("jsonwebtoken_signs_and_verifies_with_its_own_dependencies");
    let d = shared();
    let t = unique("jwt");
    let source = r#"const jwt = require('jsonwebtoken');
        module.exports = (d) => {
            const token = jwt.sign({ sub: d.sub }, 'a-secret', { algorithm: 'HS256', expiresIn: '1h' });
            let wrong;
            try { jwt.verify(token, 'another'); wrong = 'verified' } catch (e) { wrong = e.name + ': ' + e.message }
            let jws;
            try { require('jws'); jws = 'found' } catch (e) { jws = e.code }
            const loaded = Object.keys(require.cache);
            return {
                parts: token.split('.').length,
                sub: jwt.verify(token, 'a-secret').sub,
                wrong,
                jws,
                ownDeps: loaded.filter((f) => f.startsWith('/taskcell/modules/jsonwebtoken@9.0.2/node_modules/jws/')).length > 0,
                msOfJwt: loaded.filter((f) => f.includes('/node_modules/ms/')).filter((f) => !f.startsWith('/taskcell/modules/jsonwebtoken@9.0.2/')),
            };
        };"#;
    let put = d.put_task(&t, "sign", source);
    assert!(put.status == 201 || put.status == 200, "deploy: {}", put.text());
    let r = d.run_task(&t, "sign", br#"{"sub": "ada"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json()["result"].clone();
    assert_eq!(r["parts"], 3, "{r}");
    assert_eq!(r["sub"], "ada", "{r}");
    assert_eq!(r["wrong"], "JsonWebTokenError: invalid signature", "{r}");
    // Its dependencies are its own: found inside its folder, not by tenant code's require.
    assert_eq!(r["jws"], "MODULE_NOT_FOUND", "{r}");
    assert_eq!(r["ownDeps"], true, "{r}");
    assert_eq!(r["msOfJwt"], json!([]), "jsonwebtoken's ms came from outside its folder: {r}");
}

#[test]
fn a_missing_module_is_module_not_found_naming_it_and_the_installed_versions() {
    need_root!("a_missing_module_is_module_not_found_naming_it_and_the_installed_versions");
    let r =
        run(r#"const t = (name) => { try { require(name); return 'loaded' } catch (e) { return { code: e.code, message: e.message } } };
        module.exports = () => ({ none: t('left-pad'), version: t('ms@9.9.9'), scoped: t('@probe/scoped@2.0.0') })"#);
    assert_eq!(r["none"]["code"], "MODULE_NOT_FOUND", "{r}");
    let none = r["none"]["message"].as_str().unwrap_or_default();
    assert!(none.contains("left-pad") && none.contains("no version"), "{r}");
    assert_eq!(r["version"]["code"], "MODULE_NOT_FOUND", "{r}");
    let version = r["version"]["message"].as_str().unwrap_or_default();
    assert!(version.contains("ms@9.9.9") && version.contains("2.1.3, 2.0.0"), "{r}");
    let scoped = r["scoped"]["message"].as_str().unwrap_or_default();
    assert!(scoped.contains("@probe/scoped@2.0.0") && scoped.contains("1.2.3"), "{r}");

    // Uncaught, it fails the invocation with that message.
    let body = shared().run(&unique("mod"), "require('left-pad'); module.exports = () => 1", Value::Null).assert_error(500, "task_error");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("Cannot find module 'left-pad'"), "{body}");
}

#[test]
fn builtins_win_for_their_names() {
    need_root!("builtins_win_for_their_names");
    let r = run(r#"module.exports = () => ({
        builtin: typeof require('events'),
        prefixed: require('node:events') === require('events'),
        npm: require('events@3.3.0'),
        fs: typeof require('fs').readFileSync,
    })"#);
    assert_eq!(r, json!({"builtin": "function", "prefixed": true, "npm": "the npm events", "fs": "function"}));
}

#[test]
fn tenant_code_cannot_write_into_the_modules_dir() {
    need_root!("tenant_code_cannot_write_into_the_modules_dir");
    let r = run(r#"const fs = require('fs');
        const attempt = (f) => { try { f(); return 'DONE' } catch (e) { return e.code } };
        module.exports = () => ({
            create: attempt(() => fs.writeFileSync('/taskcell/modules/evil.js', 'x')),
            mkdir: attempt(() => fs.mkdirSync('/taskcell/modules/evil@1.0.0')),
            overwrite: attempt(() => fs.writeFileSync('/taskcell/modules/ms@2.1.3/node_modules/ms/index.js', 'module.exports = 0')),
            remove: attempt(() => fs.rmSync('/taskcell/modules/ms@2.0.0', { recursive: true })),
            chmod: attempt(() => fs.chmodSync('/taskcell/modules/lodash@4.17.21/node_modules/lodash/lodash.js', 0o777)),
            still: require('ms@2.1.3')('1s'),
        })"#);
    assert_eq!(r["create"], "EROFS", "{r}");
    assert_eq!(r["mkdir"], "EROFS", "{r}");
    assert_eq!(r["overwrite"], "EROFS", "{r}");
    assert_eq!(r["remove"], "EROFS", "{r}");
    assert!(r["chmod"] == "EROFS" || r["chmod"] == "EPERM", "{r}");
    assert_eq!(r["still"], 1000, "{r}");
    assert!(modules_dir().join("ms@2.0.0/node_modules/ms/index.js").exists());
    assert!(!modules_dir().join("evil.js").exists());
}

#[test]
fn list_shows_the_installed_versions() {
    need_root!("list_shows_the_installed_versions");
    let dir = modules_dir().to_str().expect("UTF-8").to_string();
    let o = taskcell(&["modules", "list", "--dir", &dir, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)));
    let rows = v["modules"].as_array().expect("modules array");
    let find = |name: &str, version: &str| rows.iter().find(|r| r["name"] == name && r["version"] == version).cloned();
    for spec in REAL {
        let (name, version) = spec.rsplit_once('@').expect("NAME@VERSION");
        let row = find(name, version).unwrap_or_else(|| panic!("{spec} is not listed: {v}"));
        assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    }
    assert_eq!(find("ms", "2.1.3").map(|r| r["default"].clone()), Some(json!(true)), "{v}");
    assert_eq!(find("ms", "2.0.0").map(|r| r["default"].clone()), Some(json!(false)), "{v}");
    assert_eq!(find("semverprobe", "4.17.21").map(|r| r["default"].clone()), Some(json!(true)), "{v}");
    assert!(find("@probe/scoped", "1.2.3").is_some(), "{v}");
    let human = taskcell(&["modules", "list", "--dir", &dir]);
    assert!(human.status.success(), "{}", text(&human));
    let out = String::from_utf8_lossy(&human.stdout);
    assert!(out.lines().any(|l| l.starts_with("jsonwebtoken") && l.contains("9.0.2") && l.contains("KiB")), "{out}");
}

#[test]
fn remove_removes_one_version() {
    need_root!("remove_removes_one_version");
    let dir = modules_dir();
    hand_made(dir, "doomed", "1.0.0", "module.exports = 1;");
    hand_made(dir, "doomed", "1.1.0", "module.exports = 2;");
    hand_made(dir, "@gone/pkg", "1.0.0", "module.exports = 3;");
    let d = dir.to_str().expect("UTF-8");
    let o = taskcell(&["modules", "remove", "--dir", d, "doomed@1.1.0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join("doomed@1.1.0").exists() && dir.join("doomed@1.0.0").exists());
    // A sandbox started now sees what is left.
    let r = run("module.exports = () => require('doomed')");
    assert_eq!(r, 1);
    let o = taskcell(&["modules", "remove", "--dir", d, "@gone/pkg@1.0.0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join("@gone").exists(), "the empty scope folder is left");
    let o = taskcell(&["modules", "remove", "--dir", d, "doomed@9.9.9"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1.0.0"), "{}", text(&o));
    let o = taskcell(&["modules", "remove", "--dir", d, "doomed@1.0.0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join("doomed@1.0.0").exists());
    assert!(
        fs::read_dir(dir).expect("read").flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")),
        "a scratch folder is left"
    );
}

#[test]
fn bad_names_ranges_and_tags_are_refused_before_npm_runs() {
    need_root!("bad_names_ranges_and_tags_are_refused_before_npm_runs");
    let dir = std::env::temp_dir().join(format!("taskcell-it-modules-bad-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("UTF-8");
    for bad in [
        "../evil@1.0.0",
        "a/b@1.0.0",
        "@scope/../x@1.0.0",
        "$(touch /tmp/pwned)@1.0.0",
        "a;b@1.0.0",
        "x`id`@1.0.0",
        ".hidden@1.0.0",
        "git+https://example.com/x@1.0.0",
        "lodash",
        "lodash@latest",
        "lodash@^4.17.21",
        "lodash@4.x",
        "lodash@>=4",
    ] {
        // A good spec beside the bad one: nothing at all is installed.
        let o = taskcell(&["modules", "add", "--dir", d, "ms@2.1.3", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(bad) && err.contains("nothing was installed"), "{bad}: {}", text(&o));
        assert!(!dir.exists(), "{bad}: the directory was made");
    }
    // npm missing: a clear message.
    let o = Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .args(["modules", "add", "--dir", d, "ms@2.1.3"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run taskcell");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("npm is not on PATH"), "{}", text(&o));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn without_modules_nothing_is_installed_and_a_bad_dir_stops_serve() {
    need_root!("without_modules_nothing_is_installed_and_a_bad_dir_stops_serve");
    let d = Daemon::start("modules-none", &[]);
    let r =
        d.run_ok(&unique("none"), "module.exports = () => { try { require('ms') } catch (e) { return [e.code, e.message] } }", Value::Null);
    assert_eq!(r["result"][0], "MODULE_NOT_FOUND", "{r}");
    assert!(r["result"][1].as_str().unwrap_or_default().contains("no version of ms is installed"), "{r}");
    drop(d);

    let state = std::env::temp_dir().join(format!("taskcell-it-modules-state-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_taskcell"))
        .arg("serve")
        .arg("--socket")
        .arg(state.join("s.sock"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--modules", "/nonexistent/modules"])
        .output()
        .expect("run taskcell serve");
    let _ = fs::remove_dir_all(&state);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--modules /nonexistent/modules"), "{}", text(&o));
}
