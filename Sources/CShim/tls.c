#include "cshim_tls.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

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
    return ctx;
}

void cshim_tls_ctx_free(struct ssl_ctx_st *ctx) { SSL_CTX_free(ctx); }

struct ssl_st *cshim_tls_new(struct ssl_ctx_st *ctx, int fd, int server, const char *sni,
                             const void *prefix, size_t prefix_len) {
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return NULL;
    BIO *wbio = BIO_new_socket(fd, BIO_NOCLOSE);
    BIO *rbio;
    if (prefix_len) {
        /* The inspected bytes first; cshim_tls_read swaps in the socket once they are used. */
        rbio = BIO_new(BIO_s_mem());
        if (rbio) {
            BIO_write(rbio, prefix, (int)prefix_len);
            BIO_set_mem_eof_return(rbio, -1);
        }
    } else {
        rbio = BIO_new_socket(fd, BIO_NOCLOSE);
    }
    if (!wbio || !rbio) { BIO_free(wbio); BIO_free(rbio); SSL_free(ssl); return NULL; }
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_app_data(ssl, (void *)(long)fd);
    if (server) {
        SSL_set_accept_state(ssl);
    } else {
        if (sni) {
            SSL_set_tlsext_host_name(ssl, sni);
            if (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) SSL_set1_host(ssl, sni);
        }
        SSL_set_connect_state(ssl);
    }
    return ssl;
}

void cshim_tls_free(struct ssl_st *ssl) { SSL_free(ssl); }

/* After the prefix is used up, read from the socket. True if it swapped. */
static int swap_to_socket(SSL *ssl) {
    BIO *r = SSL_get_rbio(ssl);
    if (BIO_method_type(r) != BIO_TYPE_MEM || BIO_ctrl_pending(r) != 0) return 0;
    BIO *s = BIO_new_socket((int)(long)SSL_get_app_data(ssl), BIO_NOCLOSE);
    if (!s) return 0;
    SSL_set0_rbio(ssl, s);  /* frees the spent memory BIO */
    return 1;
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
    for (;;) {
        ERR_clear_error();
        size_t n = 0;
        int r = result(ssl, SSL_read_ex(ssl, buf, (size_t)len, &n), n);
        if (r == CSHIM_TLS_WANT_READ && swap_to_socket(ssl)) continue;
        return r;
    }
}

int cshim_tls_write(struct ssl_st *ssl, const void *buf, int len) {
    for (;;) {
        ERR_clear_error();
        size_t n = 0;
        int r = result(ssl, SSL_write_ex(ssl, buf, (size_t)len, &n), n);
        if (r == CSHIM_TLS_WANT_READ && swap_to_socket(ssl)) continue;
        return r;
    }
}

void cshim_tls_shutdown(struct ssl_st *ssl) {
    if (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) return;
    if (!SSL_is_init_finished(ssl)) return;  /* no close_notify in the middle of a handshake */
    ERR_clear_error();
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

int cshim_tls_handshake_done(struct ssl_st *ssl) { return SSL_is_init_finished(ssl); }

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
