#pragma once
#include <stddef.h>

/* TLS on a non-blocking socket with OpenSSL 3, for Connection (Sources/Common/Network/Tls.swift).
   OpenSSL's macros (modes, options, ALPN callback) live here; Swift sees plain functions. */

struct ssl_st;
struct ssl_ctx_st;

enum {
    CSHIM_TLS_WANT_READ = -1,
    CSHIM_TLS_WANT_WRITE = -2,
    CSHIM_TLS_ERROR = -3,
};

/* A server context: certificate chain and key files (PEM), ALPN preference in wire format
   (length-prefixed names; NULL/0 = no ALPN), minimum version (0x0303 TLS 1.2, 0x0304 TLS 1.3).
   NULL on failure with a message in err. `alpn` must outlive the context. */
struct ssl_ctx_st *cshim_tls_server_ctx(const char *cert, const char *key, const unsigned char *alpn,
                                        unsigned alpn_len, int min_version, char *err, size_t errlen);
/* A client context: verify the peer against ca_file (NULL: the system store) unless verify is 0. */
struct ssl_ctx_st *cshim_tls_client_ctx(const char *ca_file, int verify, const unsigned char *alpn,
                                        unsigned alpn_len, int min_version, char *err, size_t errlen);
void cshim_tls_ctx_free(struct ssl_ctx_st *ctx);
/* The context's own certificate (a server's leaf): subject (one line), DNS names of the subject
   alternative names (comma-separated), serial (hex), validity (Unix seconds). 0 if none. */
int cshim_tls_cert_info(struct ssl_ctx_st *ctx, char *subject, size_t subjectlen, char *dns, size_t dnslen,
                        char *serial, size_t seriallen, long long *not_before, long long *not_after);

/* Where a client keeps the newest session ticket for one (context, server name), owned by one
   worker thread (no lock): new client connections given the slot offer its ticket, and tickets
   they receive replace it. Must outlive every SSL given it. */
struct cshim_tls_session_slot;
struct cshim_tls_session_slot *cshim_tls_session_slot_new(void);
void cshim_tls_session_slot_free(struct cshim_tls_session_slot *slot);
int cshim_tls_session_slot_filled(const struct cshim_tls_session_slot *slot);

/* A connection on fd. `prefix` holds bytes already read from the socket (a ClientHello a listener
   filter inspected); they are fed to TLS before the socket. `sni`: client side server name (and
   the name verified), or NULL. `slot`: a client's session slot, or NULL (no resumption). */
struct ssl_st *cshim_tls_new(struct ssl_ctx_st *ctx, int fd, int server, const char *sni,
                             const void *prefix, size_t prefix_len, struct cshim_tls_session_slot *slot);
/* Frees a connection. `clean`: no TLS error happened, so its session stays resumable even
   without a close_notify (we closed it, e.g. because the other side of a relay went away). */
void cshim_tls_free(struct ssl_st *ssl, int clean);
/* The last read from the socket drained it and OpenSSL holds no bytes it has not decrypted:
   more needs a new readiness edge (the TLS form of "a short read drained the socket"). */
int cshim_tls_drained(struct ssl_st *ssl);

/* > 0: bytes; 0: the peer closed (close_notify or EOF); or CSHIM_TLS_WANT_* / CSHIM_TLS_ERROR. */
int cshim_tls_read(struct ssl_st *ssl, void *buf, int len);
/* > 0: bytes taken; CSHIM_TLS_WANT_* / CSHIM_TLS_ERROR. Retry with the same bytes. */
int cshim_tls_write(struct ssl_st *ssl, const void *buf, int len);
/* Sends close_notify (once). */
void cshim_tls_shutdown(struct ssl_st *ssl);
int cshim_tls_handshake_done(struct ssl_st *ssl);
/* The finished handshake resumed an earlier session. */
int cshim_tls_session_reused(struct ssl_st *ssl);
/* Drives the handshake: 1 when done, CSHIM_TLS_WANT_* or CSHIM_TLS_ERROR. */
int cshim_tls_handshake(struct ssl_st *ssl);
/* The SNI a client sent (server side), or NULL. */
const char *cshim_tls_servername(struct ssl_st *ssl);
/* The negotiated protocol and version ("TLSv1.3"); ALPN empty when none. */
const char *cshim_tls_version(struct ssl_st *ssl);
/* Copies the negotiated ALPN protocol into out (NUL-terminated), returns its length. */
int cshim_tls_alpn(struct ssl_st *ssl, char *out, int outlen);
/* The last error on this thread's OpenSSL queue, as text (and clears the queue). */
void cshim_tls_last_error(char *out, size_t outlen);
/* Why this connection's handshake failed: the certificate check's verdict when it failed,
   else the last OpenSSL error (and clears the queue). */
void cshim_tls_failure(struct ssl_st *ssl, char *out, size_t outlen);

/* Client certificates on a server context (mTLS): trust ca_file (PEM bundle; also the list of
   acceptable CAs sent to clients), require a certificate when `require` (else verify one only
   when given), and check revocation against crl_file (PEM; NULL: none). 1 on success, else 0
   with a message in err. */
int cshim_tls_server_verify(struct ssl_ctx_st *ctx, const char *ca_file, int require, const char *crl_file,
                            char *err, size_t errlen);
/* The session id context of a server context from a description of its client-certificate
   checks (hashed): sessions resume only where the same checks apply. 1, or 0. */
int cshim_tls_session_context(struct ssl_ctx_st *ctx, const unsigned char *desc, size_t len);
/* A client certificate (chain file) and key for a client context. 1, or 0 with a message. */
int cshim_tls_client_cert(struct ssl_ctx_st *ctx, const char *cert, const char *key, char *err, size_t errlen);
/* Why a handshake failed, for stats, without touching the error queue: 1 the client sent no
   certificate, 2 its certificate did not verify, 0 anything else. */
int cshim_tls_failure_kind(struct ssl_st *ssl);
/* The peer's certificate after a handshake: 0 when none. `verified`: it passed verification.
   subject (RFC 2253), URI and DNS subject alternative names (each followed by a NUL), the SHA-256 of
   its DER form, and its PEM. */
int cshim_tls_peer_cert(struct ssl_st *ssl, int *verified, char *subject, size_t subjectlen, char *uris, size_t urislen,
                        char *dns, size_t dnslen, unsigned char *sha256, char *pem, size_t pemlen);
/* The URI SANs of a context's own certificate (each followed by a NUL): XFCC's By. */
int cshim_tls_own_uris(struct ssl_ctx_st *ctx, char *uris, size_t urislen);
/* Session ticket keys (nginx's and Envoy's 80-byte format: 16-byte name, 32-byte HMAC secret,
   32-byte AES-256 key), `count` of them back to back: the first encrypts new tickets, all
   decrypt, so instances sharing the files resume each other's sessions. 1, or 0 with a message. */
int cshim_tls_ticket_keys(struct ssl_ctx_st *ctx, const unsigned char *keys, int count, char *err, size_t errlen);
/* OCSP stapling: the DER response every handshake that asks for status gets. 1, or 0. */
int cshim_tls_ocsp_staple(struct ssl_ctx_st *ctx, const unsigned char *der, size_t len, char *err, size_t errlen);
