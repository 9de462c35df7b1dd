// sys/types.h first: libevent's event-config.h defines _GNU_SOURCE, and without this
// the fd_set seen by this module differs from the one OpenSSL's module sees (ODR error).
#include <sys/types.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/dns.h>
#include <event2/thread.h>
#include <event2/util.h>
