// C helpers for what Swift cannot import or reach cleanly: function-like macros,
// calls that glibc only declares under _GNU_SOURCE (splice, accept4, pipe2), and relaxed
// atomics on raw memory for the per-worker stats slabs. Every name is prefixed cshim_.
// Never define _GNU_SOURCE in this header (see docs/architecture.md, "C boundary").
#ifndef CSHIM_H
#define CSHIM_H
#include <sys/types.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include "cshim_tls.h"

// MARK: stats slots (single writer: the owning thread; any reader: relaxed loads)

/// Adds `v` to a slot only its owning thread writes: a relaxed load and store, no RMW.
static inline void cshim_slot_add(uint64_t *slot, uint64_t v) {
    __atomic_store_n(slot, __atomic_load_n(slot, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void cshim_slot_sub(uint64_t *slot, uint64_t v) {
    __atomic_store_n(slot, __atomic_load_n(slot, __ATOMIC_RELAXED) - v, __ATOMIC_RELAXED);
}
static inline void cshim_slot_store(uint64_t *slot, uint64_t v) {
    __atomic_store_n(slot, v, __ATOMIC_RELAXED);
}
static inline uint64_t cshim_slot_load(const uint64_t *slot) {
    return __atomic_load_n(slot, __ATOMIC_RELAXED);
}
/// Multi-writer slots (a listener's connection count shared by workers).
static inline int64_t cshim_atomic_add(int64_t *slot, int64_t v) {
    return __atomic_add_fetch(slot, v, __ATOMIC_RELAXED);
}

// MARK: sockets (all non-blocking and close-on-exec)

/// A listening TCP socket. Returns the fd, or -errno. `reuseport` sets SO_REUSEPORT.
int cshim_listen(const struct sockaddr *addr, socklen_t len, int reuseport, int backlog);
/// A bound UDP socket (SO_REUSEPORT when asked). Returns the fd, or -errno.
int cshim_udp_bind(const struct sockaddr *addr, socklen_t len, int reuseport);
/// Starts a non-blocking connect (TCP_NODELAY when asked). Returns the fd (in progress or done) or -errno.
int cshim_connect(const struct sockaddr *addr, socklen_t len, int nodelay);
/// accept4(SOCK_NONBLOCK|SOCK_CLOEXEC). Returns the fd or -errno.
int cshim_accept(int fd, struct sockaddr *addr, socklen_t *len);
/// The pending socket error (SO_ERROR), or errno of getsockopt.
int cshim_socket_error(int fd);
/// TCP_NODELAY on.
void cshim_set_nodelay(int fd);
/// SO_LINGER {1, 0}: the next close() sends RST (used to abort, as Envoy does).
void cshim_set_linger_zero(int fd);
/// Bytes in the socket's receive queue that no read() has taken yet (FIONREAD); 0 on error.
int cshim_unread_bytes(int fd);

// MARK: splice(2) through a pipe

/// pipe2(O_NONBLOCK|O_CLOEXEC), sized to `size` bytes when possible. Returns 0 or -errno.
int cshim_pipe(int fds[2], int size);
/// splice(in, NULL, out, NULL, len, SPLICE_F_MOVE|SPLICE_F_NONBLOCK). Returns bytes, 0 on EOF, -errno.
ssize_t cshim_splice(int in, int out, size_t len);

// MARK: libevent macros

static inline struct event *cshim_evtimer_new(struct event_base *b, event_callback_fn cb, void *arg) {
    return evtimer_new(b, cb, arg);
}
static inline struct event *cshim_evsignal_new(struct event_base *b, int sig, event_callback_fn cb, void *arg) {
    return evsignal_new(b, sig, cb, arg);
}

// MARK: process

/// Raises RLIMIT_NOFILE's soft limit to the hard limit. Returns the new soft limit.
long cshim_raise_nofile(void);
/// Keeps freed heap memory in the process (64 MiB trim threshold) so worker arenas do not
/// shrink and grow again with every burst of connections (an mprotect each time).
void cshim_tune_malloc(void);
/// Monotonic milliseconds (CLOCK_MONOTONIC_COARSE: a vDSO read, cheap enough per event).
uint64_t cshim_now_ms(void);
/// Wall clock, milliseconds since the epoch.
uint64_t cshim_wall_ms(void);

/// Names the calling thread (15 bytes shown by top/ps).
void cshim_set_thread_name(const char *name);

/// An inotify descriptor watching `dir` for files created, written or renamed into it; -errno.
int cshim_inotify_watch_dir(const char *dir);
/// Reads all pending events; 1 when one of them names `name`.
int cshim_inotify_drain(int fd, const char *name);

/// A non-blocking UDP socket connected to `addr` (replies come only from there). fd or -errno.
int cshim_udp_connect(const struct sockaddr *addr, socklen_t len);

// MARK: batched datagrams (recvmmsg/sendmmsg need _GNU_SOURCE, kept in the .c file)

/// Up to `n` datagrams of up to `bufsize` bytes each, with their source addresses.
typedef struct cshim_dgram_batch cshim_dgram_batch;
cshim_dgram_batch *cshim_batch_new(int n, size_t bufsize);
void cshim_batch_free(cshim_dgram_batch *b);
/// recvmmsg of up to `max` datagrams: the count, or -errno (-EAGAIN when none).
int cshim_batch_recv(cshim_dgram_batch *b, int fd, int max);
void *cshim_batch_data(cshim_dgram_batch *b, int i);
size_t cshim_batch_len(cshim_dgram_batch *b, int i);
const struct sockaddr *cshim_batch_addr(cshim_dgram_batch *b, int i);
socklen_t cshim_batch_addrlen(cshim_dgram_batch *b, int i);
/// sendmmsg of the first `count` received datagrams, all to `to`: how many went, or -errno.
int cshim_batch_send_to(cshim_dgram_batch *b, int fd, int count, const struct sockaddr *to, socklen_t tolen);

#endif
