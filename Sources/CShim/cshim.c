#define _GNU_SOURCE
#include <malloc.h>
#include "cshim.h"
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <sys/un.h>
#include <sys/stat.h>

/* A unix socket file left by a process that is gone: nothing answers a connect. Remove it so
   a restart can bind; a live listener is left alone (its owner gets EADDRINUSE). */
static void unlink_stale_unix(const struct sockaddr *addr, socklen_t len) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    struct stat st;
    if (un->sun_path[0] == 0 || stat(un->sun_path, &st) != 0 || !S_ISSOCK(st.st_mode)) return;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return;
    if (connect(probe, addr, len) < 0 && errno == ECONNREFUSED) unlink(un->sun_path);
    close(probe);
}

int cshim_listen(const struct sockaddr *addr, socklen_t len, int reuseport, int backlog) {
    if (addr->sa_family == AF_UNIX) unlink_stale_unix(addr, len);
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (addr->sa_family != AF_UNIX) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
            int e = errno; close(fd); return -e;
        }
        if (addr->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt, not one per accept.
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (bind(fd, addr, len) < 0 || listen(fd, backlog) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int cshim_udp_bind(const struct sockaddr *addr, socklen_t len, int reuseport) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        int e = errno; close(fd); return -e;
    }
    if (bind(fd, addr, len) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int cshim_connect(const struct sockaddr *addr, socklen_t len, int nodelay) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (nodelay && addr->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, addr, len) < 0 && errno != EINPROGRESS) { int e = errno; close(fd); return -e; }
    return fd;
}

int cshim_accept(int fd, struct sockaddr *addr, socklen_t *len) {
    int c = accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return c < 0 ? -errno : c;
}

int cshim_socket_error(int fd) {
    int err = 0; socklen_t l = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0) return errno;
    return err;
}

void cshim_set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void cshim_set_linger_zero(int fd) {
    struct linger l = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

int cshim_unread_bytes(int fd) {
    int n = 0;
    return ioctl(fd, FIONREAD, &n) < 0 ? 0 : n;
}

int cshim_pipe(int fds[2], int size) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -errno;
    if (size > 0) fcntl(fds[0], F_SETPIPE_SZ, size);
    return 0;
}

ssize_t cshim_splice(int in, int out, size_t len) {
    ssize_t n = splice(in, NULL, out, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    return n < 0 ? -errno : n;
}

void cshim_tune_malloc(void) {
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

long cshim_raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) return -1;
    if (r.rlim_cur < r.rlim_max) { r.rlim_cur = r.rlim_max; setrlimit(RLIMIT_NOFILE, &r); }
    getrlimit(RLIMIT_NOFILE, &r);
    return (long)r.rlim_cur;
}

uint64_t cshim_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t cshim_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#include <sys/prctl.h>
void cshim_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

#include <sys/inotify.h>
#include <string.h>
int cshim_inotify_watch_dir(const char *dir) {
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return -errno;
    if (inotify_add_watch(fd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int cshim_inotify_drain(int fd, const char *name) {
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        for (char *p = buf; p < buf + n; ) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len > 0 && strcmp(ev->name, name) == 0) hit = 1;
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    return hit;
}

int cshim_udp_connect(const struct sockaddr *addr, socklen_t len) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, addr, len) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

#include <stdlib.h>
struct cshim_dgram_batch {
    int n;
    size_t bufsize;
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_storage *addrs;
    unsigned char *data;
};

cshim_dgram_batch *cshim_batch_new(int n, size_t bufsize) {
    cshim_dgram_batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->n = n; b->bufsize = bufsize;
    b->msgs = calloc((size_t)n, sizeof *b->msgs);
    b->iov = calloc((size_t)n, sizeof *b->iov);
    b->addrs = calloc((size_t)n, sizeof *b->addrs);
    b->data = malloc((size_t)n * bufsize);
    if (!b->msgs || !b->iov || !b->addrs || !b->data) { cshim_batch_free(b); return NULL; }
    return b;
}

void cshim_batch_free(cshim_dgram_batch *b) {
    if (!b) return;
    free(b->msgs); free(b->iov); free(b->addrs); free(b->data); free(b);
}

int cshim_batch_recv(cshim_dgram_batch *b, int fd, int max) {
    if (max > b->n) max = b->n;
    for (int i = 0; i < max; i++) {
        b->iov[i].iov_base = b->data + (size_t)i * b->bufsize;
        b->iov[i].iov_len = b->bufsize;
        memset(&b->msgs[i].msg_hdr, 0, sizeof b->msgs[i].msg_hdr);
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        b->msgs[i].msg_hdr.msg_name = &b->addrs[i];
        b->msgs[i].msg_hdr.msg_namelen = sizeof b->addrs[i];
    }
    int r = recvmmsg(fd, b->msgs, (unsigned)max, MSG_DONTWAIT, NULL);
    return r < 0 ? -errno : r;
}

void *cshim_batch_data(cshim_dgram_batch *b, int i) { return b->data + (size_t)i * b->bufsize; }
size_t cshim_batch_len(cshim_dgram_batch *b, int i) { return b->msgs[i].msg_len; }
const struct sockaddr *cshim_batch_addr(cshim_dgram_batch *b, int i) { return (const struct sockaddr *)&b->addrs[i]; }
socklen_t cshim_batch_addrlen(cshim_dgram_batch *b, int i) { return b->msgs[i].msg_hdr.msg_namelen; }

int cshim_batch_send_to(cshim_dgram_batch *b, int fd, int count, const struct sockaddr *to, socklen_t tolen) {
    for (int i = 0; i < count; i++) {
        b->iov[i].iov_len = b->msgs[i].msg_len;
        memset(&b->msgs[i].msg_hdr, 0, sizeof b->msgs[i].msg_hdr);
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        b->msgs[i].msg_hdr.msg_name = (void *)to;
        b->msgs[i].msg_hdr.msg_namelen = tolen;
    }
    int sent = 0;
    while (sent < count) {
        int r = sendmmsg(fd, b->msgs + sent, (unsigned)(count - sent), MSG_DONTWAIT);
        if (r < 0) { if (errno == EINTR) continue; return sent > 0 ? sent : -errno; }
        sent += r;
    }
    return sent;
}
