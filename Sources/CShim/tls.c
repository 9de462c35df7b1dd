#include "cshim_tls.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <errno.h>
#include <time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct alpn_pref {
    const unsigned char *list;
    unsigned len;
};

static void put_error(char *err, size_t errlen, const char *what) {
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s%s%s", what, e ? ": " : "", buf);
    ERR_clear_error();
}

void cshim_tls_last_error(char *out, size_t outlen) {
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, out, outlen); else if (outlen) out[0] = 0;
    ERR_clear_error();
}

void cshim_tls_failure(struct ssl_st *ssl, char *out, size_t outlen) {
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(out, outlen, "certificate: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    unsigned long e = ERR_get_error();
    if (e) {
        const char *r = ERR_reason_error_string(e);
        snprintf(out, outlen, "%s", r ? r : "handshake failed");
    } else {
        snprintf(out, outlen, "connection closed during the handshake");
    }
    ERR_clear_error();
}

/* Server ALPN: our preference order over what the client offers; no overlap = no ALPN. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    const struct alpn_pref *p = arg;
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, p->list, p->len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static void common_setup(SSL_CTX *ctx, int min_version) {
    SSL_CTX_set_min_proto_version(ctx, min_version ? min_version : TLS1_2_VERSION);
    /* Partial writes and moving buffers match Connection's write buffer; idle connections
       give their 34 KiB of record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    /* Read what the socket has in one read(2), not a record header and then its body. */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* A peer that closes without close_notify ends the stream like a FIN (as HAProxy and nginx). */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
}

static struct alpn_pref *new_pref(const unsigned char *alpn, unsigned alpn_len) {
    struct alpn_pref *p = OPENSSL_malloc(sizeof *p);
    if (p) { p->list = alpn; p->len = alpn_len; }
    return p;
}

static int pref_index = -1;

static void free_pref(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    OPENSSL_free(ptr);
}

static int ensure_index(void) {
    /* Racy only if two threads build the first context at once; contexts are built on the main thread. */
    if (pref_index < 0) pref_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_pref);
    return pref_index;
}

struct ssl_ctx_st *cshim_tls_server_ctx(const char *cert, const char *key, const unsigned char *alpn,
                                        unsigned alpn_len, int min_version, char *err, size_t errlen) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { put_error(err, errlen, "cannot create a TLS context"); return NULL; }
    common_setup(ctx, min_version);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        put_error(err, errlen, "cannot load the certificate chain");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        int mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        put_error(err, errlen, mismatch ? "the private key does not match the certificate" : "cannot load the private key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        put_error(err, errlen, "the private key does not match the certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (alpn && alpn_len) {
        struct alpn_pref *p = new_pref(alpn, alpn_len);
        if (!p || ensure_index() < 0) { OPENSSL_free(p); SSL_CTX_free(ctx); snprintf(err, errlen, "out of memory"); return NULL; }
        SSL_CTX_set_ex_data(ctx, pref_index, p);
        SSL_CTX_set_alpn_select_cb(ctx, select_alpn, p);
    }
    return ctx;
}

/* Client session resumption: the newest ticket a host gave, kept per worker and per server
   name (a ticket issued for one name is never offered to another). The slot belongs to one
   worker thread, which also runs every SSL that points at it: no lock. */
struct cshim_tls_session_slot {
    SSL_SESSION *sess;
};

static int ssl_slot_index = -1;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;

static void slot_init(void) { ssl_slot_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

struct cshim_tls_session_slot *cshim_tls_session_slot_new(void) {
    pthread_once(&slot_once, slot_init);
    return calloc(1, sizeof(struct cshim_tls_session_slot));
}

void cshim_tls_session_slot_free(struct cshim_tls_session_slot *slot) {
    if (!slot) return;
    if (slot->sess) SSL_SESSION_free(slot->sess);
    free(slot);
}

int cshim_tls_session_slot_filled(const struct cshim_tls_session_slot *slot) { return slot && slot->sess; }

static int keep_session(SSL *ssl, SSL_SESSION *sess) {
    struct cshim_tls_session_slot *s = ssl_slot_index >= 0 ? SSL_get_ex_data(ssl, ssl_slot_index) : NULL;
    if (!s) return 0;
    SSL_SESSION *old = s->sess;
    s->sess = sess;  /* the callback's reference is ours now */
    if (old) SSL_SESSION_free(old);
    return 1;
}

struct ssl_ctx_st *cshim_tls_client_ctx(const char *ca_file, int verify, const unsigned char *alpn,
                                        unsigned alpn_len, int min_version, char *err, size_t errlen) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { put_error(err, errlen, "cannot create a TLS context"); return NULL; }
    common_setup(ctx, min_version);
    if (verify) {
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            put_error(err, errlen, "cannot load the CA certificates");
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (alpn && alpn_len && SSL_CTX_set_alpn_protos(ctx, alpn, alpn_len) != 0) {
        put_error(err, errlen, "bad ALPN list");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, keep_session);
    return ctx;
}

void cshim_tls_ctx_free(struct ssl_ctx_st *ctx) { SSL_CTX_free(ctx); }

static long long asn1_epoch(const ASN1_TIME *t) {
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return (long long)timegm(&tm);
}

int cshim_tls_cert_info(struct ssl_ctx_st *ctx, char *subject, size_t subjectlen, char *dns, size_t dnslen,
                        char *serial, size_t seriallen, long long *not_before, long long *not_after) {
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (!x) return 0;
    subject[0] = dns[0] = serial[0] = 0;
    X509_NAME_oneline(X509_get_subject_name(x), subject, (int)subjectlen);
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t used = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS) continue;
        const unsigned char *s = ASN1_STRING_get0_data(g->d.dNSName);
        int n = ASN1_STRING_length(g->d.dNSName);
        if (used + (size_t)n + 2 >= dnslen) break;
        if (used) dns[used++] = ',';
        memcpy(dns + used, s, (size_t)n);
        used += (size_t)n;
        dns[used] = 0;
    }
    GENERAL_NAMES_free(names);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    if (bn) {
        char *hex = BN_bn2hex(bn);
        if (hex) { snprintf(serial, seriallen, "%s", hex); OPENSSL_free(hex); }
        BN_free(bn);
    }
    *not_before = asn1_epoch(X509_get0_notBefore(x));
    *not_after = asn1_epoch(X509_get0_notAfter(x));
    return 1;
}

/* The socket BIO: read(2)/write(2) on the descriptor, bytes a listener filter already read
   (the inspected ClientHello) first, and a note of whether the last read drained the socket
   (it returned less than asked), so a reader can skip the read that would only say EAGAIN. */
struct csock {
    int fd;
    unsigned char *prefix;
    size_t plen, poff;
    int drained;
    int eof;  /* read(2) returned 0: BIO_CTRL_EOF says so, which SSL_OP_IGNORE_UNEXPECTED_EOF needs */
};

static int csock_read(BIO *b, char *out, int len) {
    struct csock *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    if (s->poff < s->plen) {
        size_t n = s->plen - s->poff;
        if (n > (size_t)len) n = (size_t)len;
        memcpy(out, s->prefix + s->poff, n);
        s->poff += n;
        if (s->poff == s->plen) { free(s->prefix); s->prefix = NULL; s->plen = s->poff = 0; }
        s->drained = 0;
        return (int)n;
    }
    ssize_t n = read(s->fd, out, (size_t)len);
    if (n > 0) { s->drained = n < len; return (int)n; }
    if (n == 0) { s->drained = 1; s->eof = 1; return 0; }
    if (errno == EAGAIN || errno == EINTR) { s->drained = errno == EAGAIN; BIO_set_retry_read(b); }
    return -1;
}

static int csock_write(BIO *b, const char *in, int len) {
    struct csock *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = write(s->fd, in, (size_t)len);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EINTR) BIO_set_retry_write(b);
    return -1;
}

static long csock_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)num; (void)ptr;
    /* Without BIO_CTRL_EOF, OpenSSL cannot tell a peer's FIN from a failed read: a TLS 1.3 peer
       that closed without close_notify was a connection error, and its session (the ticket
       kept for resumption) was marked not resumable. */
    if (cmd == BIO_CTRL_EOF) { struct csock *s = BIO_get_data(b); return s && s->eof && s->poff == s->plen; }
    return cmd == BIO_CTRL_FLUSH || cmd == BIO_CTRL_DUP;
}

static int csock_create(BIO *b) { BIO_set_init(b, 1); return 1; }

static int csock_destroy(BIO *b) {
    struct csock *s = BIO_get_data(b);
    if (s) { free(s->prefix); free(s); }
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *csock_method;
static pthread_once_t csock_once = PTHREAD_ONCE_INIT;

static void csock_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cshim socket");
    if (!m) return;
    BIO_meth_set_read(m, csock_read);
    BIO_meth_set_write(m, csock_write);
    BIO_meth_set_ctrl(m, csock_ctrl);
    BIO_meth_set_create(m, csock_create);
    BIO_meth_set_destroy(m, csock_destroy);
    csock_method = m;
}

struct ssl_st *cshim_tls_new(struct ssl_ctx_st *ctx, int fd, int server, const char *sni,
                             const void *prefix, size_t prefix_len, struct cshim_tls_session_slot *slot) {
    pthread_once(&csock_once, csock_init);
    if (!csock_method) return NULL;
    ERR_clear_error();
    struct csock *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->fd = fd;
    if (prefix_len) {
        s->prefix = malloc(prefix_len);
        if (!s->prefix) { free(s); return NULL; }
        memcpy(s->prefix, prefix, prefix_len);
        s->plen = prefix_len;
    }
    BIO *bio = BIO_new(csock_method);
    if (!bio) { free(s->prefix); free(s); return NULL; }
    BIO_set_data(bio, s);
    SSL *ssl = SSL_new(ctx);
    if (!ssl) { BIO_free(bio); return NULL; }
    SSL_set_bio(ssl, bio, bio);  /* one reference, for both directions */
    if (server) {
        SSL_set_accept_state(ssl);
    } else {
        if (sni) {
            SSL_set_tlsext_host_name(ssl, sni);
            if (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) SSL_set1_host(ssl, sni);
        }
        if (slot && ssl_slot_index >= 0) {
            if (slot->sess) SSL_set_session(ssl, slot->sess);
            SSL_set_ex_data(ssl, ssl_slot_index, slot);
        }
        SSL_set_connect_state(ssl);
    }
    return ssl;
}

void cshim_tls_free(struct ssl_st *ssl, int clean) {
    /* OpenSSL marks the session of an SSL freed without close_notify not resumable: that is
       right after a TLS error, wrong when we close a healthy connection ourselves (the client
       went away): the ticket the host gave would be thrown away with every such close. */
    if (clean && SSL_is_init_finished(ssl)) SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(ssl);
}

int cshim_tls_drained(struct ssl_st *ssl) {
    struct csock *s = BIO_get_data(SSL_get_rbio(ssl));
    return s && s->drained && s->poff == s->plen && !SSL_has_pending(ssl);
}

static int result(SSL *ssl, int ok, size_t n) {
    if (ok > 0) return (int)n;
    switch (SSL_get_error(ssl, ok)) {
    case SSL_ERROR_WANT_READ: return CSHIM_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return CSHIM_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return 0;
    default: return CSHIM_TLS_ERROR;
    }
}

int cshim_tls_read(struct ssl_st *ssl, void *buf, int len) {
    ERR_clear_error();
    size_t n = 0;
    return result(ssl, SSL_read_ex(ssl, buf, (size_t)len, &n), n);
}

int cshim_tls_write(struct ssl_st *ssl, const void *buf, int len) {
    ERR_clear_error();
    size_t n = 0;
    return result(ssl, SSL_write_ex(ssl, buf, (size_t)len, &n), n);
}

void cshim_tls_shutdown(struct ssl_st *ssl) {
    if (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) return;
    if (!SSL_is_init_finished(ssl)) return;  /* no close_notify in the middle of a handshake */
    ERR_clear_error();
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

int cshim_tls_handshake_done(struct ssl_st *ssl) { return SSL_is_init_finished(ssl); }

int cshim_tls_session_reused(struct ssl_st *ssl) { return SSL_session_reused(ssl); }

int cshim_tls_handshake(struct ssl_st *ssl) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    return r == 1 ? 1 : result(ssl, r, 0);
}

const char *cshim_tls_servername(struct ssl_st *ssl) { return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name); }

const char *cshim_tls_version(struct ssl_st *ssl) { return SSL_get_version(ssl); }

int cshim_tls_alpn(struct ssl_st *ssl, char *out, int outlen) {
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    if ((int)n >= outlen) n = 0;
    if (n) memcpy(out, p, n);
    out[n] = 0;
    return (int)n;
}

int cshim_tls_server_verify(struct ssl_ctx_st *ctx, const char *ca_file, int require, const char *crl_file,
                            char *err, size_t errlen) {
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        put_error(err, errlen, "cannot load the client CA certificates");
        return 0;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
    if (crl_file) {
        X509_STORE *st = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lu = X509_STORE_add_lookup(st, X509_LOOKUP_file());
        if (!lu || X509_load_crl_file(lu, crl_file, X509_FILETYPE_PEM) <= 0) {
            put_error(err, errlen, "cannot load the CRL");
            return 0;
        }
        X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (require ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    return 1;
}

/* A resumed session skips certificate verification: it may only resume where the same checks
   would have passed. The session id context is a hash of everything that decides them (the
   caller's description: CA and CRL file contents, require flag, name matchers), so a session
   made on another listener, or before a reload changed the checks, gets a full handshake. */
int cshim_tls_session_context(struct ssl_ctx_st *ctx, const unsigned char *desc, size_t len) {
    unsigned char md[32];
    unsigned int n = 0;
    if (EVP_Digest(desc, len, md, &n, EVP_sha256(), NULL) != 1 || n > SSL_MAX_SID_CTX_LENGTH) return 0;
    return SSL_CTX_set_session_id_context(ctx, md, n);
}

int cshim_tls_client_cert(struct ssl_ctx_st *ctx, const char *cert, const char *key, char *err, size_t errlen) {
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) { put_error(err, errlen, "cannot load the client certificate"); return 0; }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        put_error(err, errlen, "cannot load the client key, or it does not match the certificate");
        return 0;
    }
    return 1;
}

int cshim_tls_failure_kind(struct ssl_st *ssl) {
    if (SSL_get_verify_result(ssl) != X509_V_OK) return 2;
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
        int r = ERR_GET_REASON(e);
        if (r == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) return 1;
        if (r == SSL_R_CERTIFICATE_VERIFY_FAILED) return 2;
    }
    return 0;
}

/* The names of one SAN type, each followed by a NUL (a comma inside a name stays part of it).
   A name holding a NUL or another control byte is left out: it cannot be matched or forwarded
   safely. Names that do not fit are left out too. */
static void join_names(X509 *x, int type, char *out, size_t outlen) {
    out[0] = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t used = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != type) continue;
        const ASN1_STRING *a = type == GEN_DNS ? g->d.dNSName : g->d.uniformResourceIdentifier;
        const unsigned char *s = ASN1_STRING_get0_data(a);
        int n = ASN1_STRING_length(a);
        int bad = n <= 0;
        for (int j = 0; j < n && !bad; j++) if (s[j] < 0x20 || s[j] == 0x7f) bad = 1;
        if (bad || used + (size_t)n + 2 >= outlen) continue;
        memcpy(out + used, s, (size_t)n);
        used += (size_t)n;
        out[used++] = 0;
    }
    if (used < outlen) out[used] = 0;
    GENERAL_NAMES_free(names);
}

int cshim_tls_peer_cert(struct ssl_st *ssl, int *verified, char *subject, size_t subjectlen, char *uris, size_t urislen,
                        char *dns, size_t dnslen, unsigned char *sha256, char *pem, size_t pemlen) {
    X509 *x = SSL_get1_peer_certificate(ssl);
    if (!x) return 0;
    *verified = SSL_get_verify_result(ssl) == X509_V_OK;
    subject[0] = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (b) {
        X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
        int n = BIO_read(b, subject, (int)subjectlen - 1);
        subject[n > 0 ? n : 0] = 0;
        BIO_free(b);
    }
    join_names(x, GEN_URI, uris, urislen);
    join_names(x, GEN_DNS, dns, dnslen);
    unsigned int len = 0;
    X509_digest(x, EVP_sha256(), sha256, &len);
    pem[0] = 0;
    b = BIO_new(BIO_s_mem());
    if (b) {
        PEM_write_bio_X509(b, x);
        int n = BIO_read(b, pem, (int)pemlen - 1);
        pem[n > 0 ? n : 0] = 0;
        BIO_free(b);
    }
    X509_free(x);
    return 1;
}

int cshim_tls_own_uris(struct ssl_ctx_st *ctx, char *uris, size_t urislen) {
    X509 *x = SSL_CTX_get0_certificate(ctx);
    uris[0] = 0;
    if (!x) return 0;
    join_names(x, GEN_URI, uris, urislen);
    return 1;
}

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ocsp.h>

struct ticket_keys {
    int count;
    unsigned char k[][80];
};

static int ticket_index = -1;
static int ocsp_index = -1;
static pthread_once_t extra_once = PTHREAD_ONCE_INIT;

static void free_extra(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    OPENSSL_free(ptr);
}

static void extra_init(void) {
    ticket_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_extra);
    ocsp_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_extra);
}

static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *mctx, int enc) {
    struct ticket_keys *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticket_index);
    if (!t || t->count == 0) return 0;
    int which = 0;
    if (enc) {
        memcpy(name, t->k[0], 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) return -1;
    } else {
        which = -1;
        for (int i = 0; i < t->count; i++) if (memcmp(name, t->k[i], 16) == 0) { which = i; break; }
        if (which < 0) return 0;  /* not ours: a full handshake */
    }
    const unsigned char *k = t->k[which];
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(k + 16), 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(mctx, params) != 1) return -1;
    int ok = enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k + 48, iv)
                 : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k + 48, iv);
    if (ok != 1) return -1;
    /* A ticket under an older key is accepted and renewed under the current one. */
    return enc ? 1 : (which == 0 ? 1 : 2);
}

int cshim_tls_ticket_keys(struct ssl_ctx_st *ctx, const unsigned char *keys, int count, char *err, size_t errlen) {
    pthread_once(&extra_once, extra_init);
    if (ticket_index < 0 || count <= 0) { snprintf(err, errlen, "no ticket keys"); return 0; }
    struct ticket_keys *t = OPENSSL_malloc(sizeof *t + (size_t)count * 80);
    if (!t) { snprintf(err, errlen, "out of memory"); return 0; }
    t->count = count;
    memcpy(t->k, keys, (size_t)count * 80);
    SSL_CTX_set_ex_data(ctx, ticket_index, t);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
    return 1;
}

struct ocsp_blob { size_t len; unsigned char der[]; };

static int ocsp_cb(SSL *ssl, void *arg) {
    (void)arg;
    struct ocsp_blob *b = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ocsp_index);
    if (!b) return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_malloc(b->len);  /* OpenSSL frees what it is given */
    if (!copy) return SSL_TLSEXT_ERR_NOACK;
    memcpy(copy, b->der, b->len);
    SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)b->len);
    return SSL_TLSEXT_ERR_OK;
}

int cshim_tls_ocsp_staple(struct ssl_ctx_st *ctx, const unsigned char *der, size_t len, char *err, size_t errlen) {
    pthread_once(&extra_once, extra_init);
    const unsigned char *p = der;
    OCSP_RESPONSE *r = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    if (!r) { snprintf(err, errlen, "not a DER OCSP response"); return 0; }
    OCSP_RESPONSE_free(r);
    struct ocsp_blob *b = OPENSSL_malloc(sizeof *b + len);
    if (!b) { snprintf(err, errlen, "out of memory"); return 0; }
    b->len = len;
    memcpy(b->der, der, len);
    SSL_CTX_set_ex_data(ctx, ocsp_index, b);
    SSL_CTX_set_tlsext_status_cb(ctx, ocsp_cb);
    return 1;
}
