/*
 * taskcell-init: PID 1 of every sandbox.
 *
 * The jailer's child forks the command and then, as PID 1, execs this program (from a sealed memfd made in
 * jailer/src/pid.rs; the exec is in jailer/src/child/pid.rs), so that the process that lives as long as the
 * sandbox holds nothing of the daemon's memory: not a copy-on-write image of other tenants' requests, results
 * or sources, only this file.
 *
 *   taskcell-init COMMAND_PID REPORT_FD
 *
 * It reaps every child (orphans are re-parented to PID 1) until COMMAND_PID ends, writes that wait status
 * (an int, native byte order) to REPORT_FD, and exits 0, which ends the PID namespace and kills whatever is
 * left in it. It installs no signal handler: as PID 1 of its namespace it ignores every signal sent from
 * inside the sandbox, and dies of SIGKILL from the daemon, as the init forked in Rust did before it.
 * It runs under the sandbox's seccomp filter and with no capability; it reads no input but its argv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* A decimal number of argv, or -1. */
static long number(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0) return -1;
    return v;
}

int main(int argc, char **argv) {
    if (argc != 3) _exit(127);
    long command = number(argv[1]), report = number(argv[2]);
    if (command <= 0 || report < 0) _exit(127);
    for (;;) {
        int status = 0;
        pid_t pid = wait4(-1, &status, __WALL, NULL);
        if (pid == (pid_t)command) {
            /* A short or failed write leaves the parent with the init's own status, which it then reports. */
            ssize_t n = write((int)report, &status, sizeof status);
            (void)n;
            _exit(0);
        }
        if (pid < 0 && errno != EINTR) _exit(0);
    }
}
