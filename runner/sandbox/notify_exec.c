/* Sesame's last step inside the sandbox (runner/sandbox/notify_exec.py builds it).
 *
 * bwrap runs this in place of the command, once its own setup is done:
 *
 *     notify-exec PROGRAM_FD SOCKET_FD SELF_FD -- COMMAND ARGS...
 *
 * It installs the seccomp program read from PROGRAM_FD with a user-notification listener, sends the
 * listener's fd to the supervisor over SOCKET_FD (SCM_RIGHTS), closes all three descriptors and execs
 * COMMAND. Installed here rather than before bwrap starts, bwrap's own setup (its mounts, hundreds of
 * opens and mkdirs) costs the supervisor nothing; the command still runs under the filter from its first
 * instruction. No new privileges are set already (the launcher thread set them); any failure of its own
 * exits with 126 before the command runs (a command that cannot be run: 1, as bwrap says it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_PROGRAM (BPF_MAXINSNS * sizeof(struct sock_filter))

static int fail(const char *what) {
    fprintf(stderr, "sesame notify-exec: %s: %s\n", what, strerror(errno));
    return 126;
}

static int number(const char *text) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < 3 || value > 1 << 20) {
        errno = EINVAL;
        return -1;
    }
    return (int)value;
}

int main(int argc, char **argv) {
    static struct sock_filter code[BPF_MAXINSNS];
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        errno = EINVAL;
        return fail("usage: notify-exec PROGRAM_FD SOCKET_FD SELF_FD -- COMMAND...");
    }
    int program = number(argv[1]), sock = number(argv[2]), self = number(argv[3]);
    if (program < 0 || sock < 0 || self < 0)
        return fail("descriptor");
    ssize_t size = pread(program, code, MAX_PROGRAM, 0);
    if (size <= 0 || size % sizeof(struct sock_filter) != 0) {
        errno = size < 0 ? errno : EINVAL;
        return fail("seccomp program");
    }
    struct sock_fprog prog = {(unsigned short)(size / sizeof(struct sock_filter)), code};
    int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0)
        return fail("seccomp(NEW_LISTENER)");

    char byte = 'L';
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &listener, sizeof(int));
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) != 1)
        return fail("handing the listener over");
    close(listener);
    close(sock);
    close(program);
    close(self);
    execvp(argv[5], argv + 5);
    fprintf(stderr, "bwrap: execvp %s: %s\n", argv[5], strerror(errno));
    return 1; /* as bwrap itself, when it execs the command */
}
