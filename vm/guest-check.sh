#!/bin/bash
# Runs inside the `make vm-test` guest (Debian 12, systemd, pure cgroup v2) as root, from the unpacked bundle
# (/root/taskcell: Makefile, the built binary, rootfs/build.sh, runtime/js, dist/, vm/). Installs taskcell with
# `make install`, runs it with systemctl and checks it. Every result is one line on the serial console:
#   VMTEST PASS <check>   VMTEST FAIL <check>: <why>   VMTEST INFO <text>   VMTEST DONE pass=N fail=M
# which vm/run.sh reads. The machine powers off when this script ends (the unit's SuccessAction/FailureAction).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SOCK=/run/taskcell/taskcell.sock
UNIT=taskcell.service
passed=0
failed=0
started=$(date +%s)

say() { echo "VMTEST $*"; }
pass() { passed=$((passed + 1)); say "PASS $1 ($(($(date +%s) - started)) s)"; }
fail() {
    failed=$((failed + 1))
    say "FAIL $1: $2"
    shift 2
    # Evidence for the lead: whatever the caller asked for, indented.
    for cmd in "$@"; do
        say "INFO \$ $cmd"
        (eval "$cmd") 2>&1 | head -n 40 | sed 's/^/VMTEST INFO     /'
    done
}
check() { # check NAME CONDITION-COMMAND WHY [EVIDENCE-COMMANDS...]
    local name=$1 cond=$2 why=$3
    shift 3
    if (eval "$cond") >/dev/null 2>&1; then pass "$name"; else fail "$name" "$why" "$@"; fi
}
finish() {
    say "DONE pass=$passed fail=$failed"
    sync
    exit 0
}
# One request: its status in /tmp/NAME.code, its body in /tmp/NAME.json; prints "CODE BODY" for messages.
req() {
    local name=$1
    shift
    curl -sS --max-time 120 --unix-socket "$SOCK" -o "/tmp/$name.json" -w '%{http_code}' "$@" >"/tmp/$name.code" 2>"/tmp/$name.err"
    echo "$(cat "/tmp/$name.code") $(head -c 600 "/tmp/$name.json") $(cat "/tmp/$name.err")"
}
code_is() { [ "$(cat "/tmp/$1.code")" = "$2" ]; }
body() { jq -e "$2" "/tmp/$1.json"; }
main_pid() { systemctl show -p MainPID --value "$UNIT"; }
wait_active() { # wait_active OLD_PID SECONDS: until the unit is active with a main pid other than OLD_PID
    local old=$1 deadline=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        local pid
        pid=$(main_pid)
        if [ "$(systemctl is-active "$UNIT")" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ -S "$SOCK" ]; then
            return 0
        fi
        sleep 1
    done
    return 1
}
unit_cgroup() { echo "/sys/fs/cgroup$(systemctl show -p ControlGroup --value "$UNIT")"; }
# Processes that belong to sandboxes: their host uids are 1000000000 + pid.
sandbox_procs() { ps -e -o uid=,pid=,comm= | awk '$1 >= 1000000000'; }

say "INFO kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB, node $(node --version), systemd $(systemctl --version | head -n1 | cut -d' ' -f2)"

# ---- the host: pure cgroup v2 under systemd
check "pure cgroup v2 host" \
    '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && ! grep -q " cgroup " /proc/mounts && [ "$(cat /proc/1/comm)" = systemd ]' \
    "not a pure cgroup v2 host with systemd as PID 1" "grep cgroup /proc/mounts" "cat /proc/1/comm"

# ---- make install
if make install >/tmp/install.log 2>&1 && [ -x /usr/local/bin/taskcell ] && [ -x /usr/lib/taskcell/rootfs/usr/bin/node ] &&
    [ -f /usr/local/lib/systemd/system/taskcell.service ] && [ -f /etc/taskcell/config.json ] &&
    [ "$(systemctl show -p FragmentPath --value "$UNIT")" = /usr/local/lib/systemd/system/taskcell.service ]; then
    pass "make install"
else
    fail "make install" "install failed or left files missing" "cat /tmp/install.log" "ls -l /usr/local/bin /usr/lib/taskcell/rootfs /usr/local/lib/systemd/system /etc/taskcell"
    finish
fi
say "INFO $(grep '^rootfs:' /tmp/install.log || true)"

# The guest is an emulated machine, often 20x slower than the host: a small pool, generous time limits; a pids
# limit that a few child Nodes reach. Everything else is the installed default config.
jq '. + {"pool-size": 2, "timeout-ms": 30000, "pids": 32}' /etc/taskcell/config.json >/tmp/config.json &&
    cp /tmp/config.json /etc/taskcell/config.json

# ---- systemctl start: active and ready (Type=notify: start returns once READY=1 arrived)
t0=$(date +%s)
systemctl enable --now "$UNIT" >/tmp/start.log 2>&1
say "INFO systemctl enable --now took $(($(date +%s) - t0)) s"
check "service active and ready" \
    '[ "$(systemctl is-active taskcell)" = active ] && [ "$(systemctl show -p StatusText --value taskcell)" = serving ] && [ -S "$SOCK" ]' \
    "systemctl did not report it active and ready" \
    "cat /tmp/start.log" "systemctl status --no-pager -l taskcell" "journalctl -u taskcell --no-pager -n 30"
health=$(req health http://localhost/v1/health)
check "health ok" 'code_is health 200 && body health ".status == \"ok\""' "health answered: $health"

# ---- the cgroup v2 layout under the unit's delegated cgroup
cg=$(unit_cgroup)
pid=$(main_pid)
# The pool fills in the background: wait for its sandboxes (each is sb-N under taskcell-<pid>).
for _ in $(seq 1 120); do
    ls -d "$cg/taskcell-$pid"/sb-* >/dev/null 2>&1 && break
    sleep 1
done
sb=
for dir in "$cg/taskcell-$pid"/sb-*; do
    if [ -n "$(cat "$dir/cgroup.procs" 2>/dev/null)" ]; then sb=$dir; break; fi
done
check "cgroup v2 delegation layout" \
    'grep -qx "0::${cg#/sys/fs/cgroup}/taskcell-supervisor" /proc/$pid/cgroup && [ -d "$sb" ] && grep -qw memory "$cg/taskcell-$pid/cgroup.subtree_control" && grep -qw pids "$cg/taskcell-$pid/cgroup.subtree_control" && grep -qw cpu "$cg/taskcell-$pid/cgroup.subtree_control"' \
    "the daemon is not in taskcell-supervisor or made no sandbox cgroups" \
    'cat /proc/$pid/cgroup' 'ls -la $cg $cg/taskcell-$pid' 'head $cg/cgroup.subtree_control $cg/taskcell-$pid/cgroup.subtree_control' \
    "journalctl -u taskcell --no-pager -n 30"
check "sandbox cgroup limits" \
    '[ "$(cat $sb/memory.max)" = 134217728 ] && [ "$(cat $sb/pids.max)" = 32 ] && [ "$(cat $sb/memory.swap.max)" = 0 ] && [ "$(cat $sb/cpu.max)" = "100000 100000" ] && [ -n "$(cat $sb/cgroup.procs)" ]' \
    "limits in $sb are not those configured" 'head $sb/memory.max $sb/memory.swap.max $sb/pids.max $sb/cpu.max $sb/cgroup.procs'

# ---- CPU: the loop ahead of sandboxes, busy sandboxes off the reserved CPUs (needs CAP_SYS_NICE in the unit)
check "event loop at nice -10, supervisor at cpu.weight 1000" \
    '[ "$(sed "s/.*) //" /proc/$pid/task/$pid/stat | cut -d" " -f17)" = -10 ] && [ "$(cat $cg/taskcell-supervisor/cpu.weight)" = 1000 ]' \
    "the loop's nice or the supervisor's weight is not as set" 'cat /proc/$pid/task/$pid/stat' 'cat $cg/taskcell-supervisor/cpu.weight'
spin=$(req spin -d '{"code":"module.exports = () => { const end = Date.now() + 300; while (Date.now() < end) {} return 1 }"}' http://localhost/v1/tenants/spinner/run)
moves=$(curl -sS --unix-socket "$SOCK" http://localhost/metrics | awk '/^taskcell_sandbox_cpu_moves_total\{to="batch"\}/ {print $2}')
check "a busy tenant moves off the reserved CPUs" 'code_is spin 200 && [ "${moves:-0}" -ge 1 ]' \
    "spin answered: $spin; moves to batch: ${moves:-none}" "curl -sS --unix-socket $SOCK http://localhost/v1/health"

# ---- deploy and run through the socket
greet='module.exports = async (data, ctx) => { console.log("greeting", data.name); globalThis.n = (globalThis.n || 0) + 1; return { hello: data.name, n: globalThis.n, tenant: ctx.tenant, uid: process.getuid(), host: require("os").hostname() }; };'
put=$(req put -X PUT --data-binary "$greet" http://localhost/v1/tenants/acme/tasks/greet)
check "deploy a task" 'code_is put 201 && body put ".task == \"greet\""' "PUT answered: $put"
run=$(req run -d '{"name":"Ada"}' http://localhost/v1/tenants/acme/tasks/greet/run)
check "run a task" \
    'code_is run 200 && body run ".result.hello == \"Ada\" and .result.tenant == \"acme\" and .result.uid == 1000 and .result.host == \"taskcell\" and .logs[0].message == \"greeting Ada\""' \
    "run answered: $run" "journalctl -u taskcell --no-pager -n 30"
adhoc=$(req adhoc -d '{"code":"module.exports = (d) => d * 2","data":21}' http://localhost/v1/tenants/acme/run)
check "run ad-hoc code" 'code_is adhoc 200 && body adhoc ".result == 42"' "run answered: $adhoc"

builtins='module.exports = async () => {
  const http = require("http"), zlib = require("zlib"), crypto = require("crypto");
  const server = http.createServer((req, res) => res.end("pong"));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const text = await (await fetch("http://127.0.0.1:" + server.address().port + "/")).text();
  server.close();
  return { text, gz: zlib.gunzipSync(zlib.gzipSync("z")).toString(), sha: crypto.createHash("sha256").update("").digest("hex").slice(0, 8) };
};'
node=$(req node -d "$(jq -n --arg c "$builtins" '{code: $c}')" http://localhost/v1/tenants/acme/run)
check "Node built-ins in a sandbox (http, fetch, zlib, crypto)" \
    'code_is node 200 && body node ".result == {\"text\": \"pong\", \"gz\": \"z\", \"sha\": \"e3b0c442\"}"' "run answered: $node"

# ---- limits through cgroup v2: a memory bomb (Buffers: off V8's heap, only the cgroup stops them)
bomb='module.exports = () => { const b = []; for (;;) b.push(Buffer.alloc(4 << 20, 1)); }'
mem=$(req mem -d "$(jq -n --arg c "$bomb" '{code: $c}')" http://localhost/v1/tenants/hog/run)
check "memory bomb gets memory_limit" 'code_is mem 507 && body mem ".error.kind == \"memory_limit\""' \
    "the bomb got: $mem" "journalctl -u taskcell --no-pager -n 20" "dmesg | tail -n 20"
after=$(req after -d '{"code":"module.exports = () => \"alive\""}' http://localhost/v1/tenants/hog/run)
check "tenant recovers after memory kill" 'code_is after 200 && body after ".result == \"alive\" and .cold == true"' "then: $after"

# A spawn loop: child Nodes until fork fails with EAGAIN (pids.max 32; a Node is about 7 tasks).
spawner='const { spawn } = require("child_process");
module.exports = async () => {
  const kids = [];
  for (let i = 0; i < 64; i++) {
    const code = await new Promise((resolve) => {
      const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
      c.on("error", (e) => resolve(e.code));
      c.on("spawn", () => { kids.push(c); resolve(null); });
    });
    if (code) { kids.forEach((k) => k.kill("SIGKILL")); return { limited: code, after: i }; }
  }
  kids.forEach((k) => k.kill("SIGKILL"));
  return { limited: null, after: 64 };
};'
pids=$(req pids -d "$(jq -n --arg c "$spawner" '{code: $c}')" http://localhost/v1/tenants/forker/run)
check "pids limit stops a spawn loop" 'code_is pids 200 && body pids ".result.limited == \"EAGAIN\""' "the loop got: $pids" \
    "journalctl -u taskcell --no-pager -n 20"
say "INFO spawn loop: $pids"

# ---- kill -9: systemd restarts it, deployed tasks are still there
old=$(main_pid)
restarts=$(systemctl show -p NRestarts --value "$UNIT")
kill -9 "$old"
if wait_active "$old" 180; then
    say "INFO restarted as pid $(main_pid) after kill -9 of $old"
    again=$(req again -d '{"name":"Bo"}' http://localhost/v1/tenants/acme/tasks/greet/run)
    check "restart after kill -9" \
        '[ "$(systemctl show -p NRestarts --value taskcell)" -gt "$restarts" ] && [ ! -d /proc/$old ] && code_is again 200 && body again ".result.hello == \"Bo\" and .result.n == 1 and .cold == true"' \
        "after the restart the deployed task answered: $again" "systemctl status --no-pager taskcell" "journalctl -u taskcell --no-pager -n 30"
    listed=$(req listed http://localhost/v1/tenants/acme/tasks)
    check "deployed tasks intact after restart" 'code_is listed 200 && body listed "[.tasks[].task] == [\"greet\"]"' "task list: $listed"
    cg=$(unit_cgroup)
    check "no stale sandbox group after restart" \
        '[ "$(ls -d $cg/taskcell-* | grep -v supervisor)" = "$cg/taskcell-$(main_pid)" ]' \
        "groups of the killed daemon are left" 'ls -la $cg'
else
    fail "restart after kill -9" "the unit did not come back within 180 s" "systemctl status --no-pager taskcell" "journalctl -u taskcell --no-pager -n 30"
fi

# ---- the README's recipe for letting a group use the socket: a drop-in, checked as an unprivileged user
groupadd --system tcusers && useradd --no-create-home --groups tcusers alice
mkdir -p /etc/systemd/system/taskcell.service.d
cat >/etc/systemd/system/taskcell.service.d/socket-group.conf <<'EOF2'
[Service]
ExecStartPost=+/bin/chgrp tcusers /run/taskcell/taskcell.sock
EOF2
systemctl daemon-reload && systemctl restart "$UNIT"
check "a group member can use the socket (drop-in)" \
    '[ "$(stat -c %G:%a "$SOCK")" = tcusers:660 ] && runuser -u alice -- curl -sS --unix-socket "$SOCK" http://localhost/v1/health | jq -e ".status == \"ok\""' \
    "alice could not use the socket" 'ls -la /run/taskcell' 'runuser -u alice -- curl -sS --unix-socket "$SOCK" http://localhost/v1/health' \
    "systemctl status --no-pager taskcell"
check "others cannot use the socket" '! runuser -u nobody -- curl -sS --unix-socket "$SOCK" http://localhost/v1/health' \
    "nobody could use the socket"
rm -rf /etc/systemd/system/taskcell.service.d && systemctl daemon-reload

# ---- systemctl stop: no sandbox process, no cgroup, no socket
# Two new tenants take both pool sandboxes, so the stop comes while their replacements are still booting.
req last1 -d '{"code":"module.exports = () => 1"}' http://localhost/v1/tenants/last1/run >/dev/null
req last2 -d '{"code":"module.exports = () => 2"}' http://localhost/v1/tenants/last2/run >/dev/null
cg=$(unit_cgroup)
# What runs in the unit's cgroup tree just before the stop, for the record.
for procs in $(find "$cg" -name cgroup.procs); do
    for p in $(cat "$procs"); do echo "${procs#"$cg"/} $p $(cat /proc/$p/comm 2>/dev/null)"; done
done | sed 's/^/VMTEST INFO before stop: /'
t0=$(date +%s)
systemctl stop "$UNIT"
say "INFO systemctl stop took $(($(date +%s) - t0)) s"
check "stop leaves no sandbox process" '[ -z "$(sandbox_procs)" ] && ! pgrep -x taskcell' \
    "processes are left" "ps -e -o uid,pid,comm | awk '\$1 >= 1000000000 || \$3 == \"taskcell\"'"
check "stop leaves no cgroup" \
    '[ ! -e "$cg" ] && [ -z "$(find /sys/fs/cgroup -name "taskcell-[0-9]*" -o -name taskcell-supervisor -o -name "sb-*")" ]' \
    "cgroups are left" "find /sys/fs/cgroup -name 'taskcell-[0-9]*' -o -name taskcell-supervisor -o -name 'sb-*'"
check "the daemon itself leaves nothing for systemd to kill on stop" \
    '! journalctl -u taskcell --no-pager -o cat | tac | sed "/^Stopping taskcell.service/q" | grep "Killing process"' \
    "systemd had to kill processes the daemon left behind" \
    'journalctl -u taskcell --no-pager -o cat | tac | sed "/^Stopping taskcell.service/q" | tac'
check "stop removes the socket" '[ ! -e "$SOCK" ]' "$SOCK is left" "ls -la /run/taskcell"

# ---- the journal
journalctl -u taskcell --no-pager -o cat >/tmp/journal.txt
check "journalctl shows its log lines" \
    'grep -q "^taskcell: serving on $SOCK" /tmp/journal.txt && grep -q "^taskcell: stopped" /tmp/journal.txt' \
    "journalctl -u taskcell lacks the daemon's lines" "cat /tmp/journal.txt"
# The last run's lines, from its start to its end.
tac /tmp/journal.txt | sed '/^Starting taskcell.service/q' | tac | grep -v '^ *[0-9]*: 0x' | tail -n 20 | sed 's/^/VMTEST INFO journal: /'

# ---- make uninstall (state kept)
make uninstall >/tmp/uninstall.log 2>&1
check "make uninstall" \
    '[ ! -e /usr/local/bin/taskcell ] && [ ! -e /usr/lib/taskcell ] && [ ! -e /usr/local/lib/systemd/system/taskcell.service ] && [ -d /var/lib/taskcell ] && [ -f /etc/taskcell/config.json ]' \
    "uninstall left files or removed state (the config was changed, so it stays)" "cat /tmp/uninstall.log" "ls -la /usr/lib/taskcell /etc/taskcell /var/lib/taskcell"

finish
