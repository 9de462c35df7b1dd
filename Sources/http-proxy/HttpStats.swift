import Common

/// The connection manager's stats, `http.<stat_prefix>.*` (Envoy's names).
final class HttpConnectionManagerStats: Sendable {
    let downstreamCxTotal: Counter
    let downstreamCxHttp1Total: Counter
    let downstreamCxActive: Gauge
    let downstreamCxHttp1Active: Gauge
    let downstreamCxRxBytesTotal: Counter
    let downstreamCxTxBytesTotal: Counter
    let downstreamCxProtocolError: Counter
    let downstreamCxIdleTimeout: Counter
    let downstreamCxDrainClose: Counter
    let downstreamCxUpgradesTotal: Counter
    let downstreamCxUpgradesActive: Gauge
    let downstreamRqTotal: Counter
    let downstreamRqHttp1Total: Counter
    let downstreamRqActive: Gauge
    let downstreamRqCompleted: Counter
    /// `downstream_rq_1xx` ... `downstream_rq_5xx`, indexed by class 1...5.
    let downstreamRqByClass: [Counter]
    let downstreamRqTime: Histogram
    let downstreamRqRxReset: Counter
    let downstreamRqTxReset: Counter
    let downstreamRqHeaderTimeout: Counter
    let downstreamRqTimeout: Counter
    let downstreamRqIdleTimeout: Counter
    let downstreamRqResponseBeforeRqComplete: Counter
    let downstreamRqLocalReply: Counter
    let downstreamRqTooLarge: Counter
    let rqResetAfterDownstreamResponseStarted: Counter
    let noRoute: Counter
    let noCluster: Counter
    let rqRedirect: Counter
    let rqDirectResponse: Counter
    /// One counter per codec rejection (`http1.<reason>`), by `Http1Error.rawValue`.
    let http1Errors: [Counter]
    let downstreamCxHttp2Total: Counter
    let downstreamCxHttp2Active: Gauge
    let downstreamRqHttp2Total: Counter
    /// `http.<prefix>.http2.*`.
    let http2: Http2Stats

    init(store: StatsStore, prefix: String) {
        let p = "http.\(prefix)."
        downstreamCxTotal = store.counter(p + "downstream_cx_total")
        downstreamCxHttp1Total = store.counter(p + "downstream_cx_http1_total")
        downstreamCxActive = store.gauge(p + "downstream_cx_active")
        downstreamCxHttp1Active = store.gauge(p + "downstream_cx_http1_active")
        downstreamCxRxBytesTotal = store.counter(p + "downstream_cx_rx_bytes_total")
        downstreamCxTxBytesTotal = store.counter(p + "downstream_cx_tx_bytes_total")
        downstreamCxProtocolError = store.counter(p + "downstream_cx_protocol_error")
        downstreamCxIdleTimeout = store.counter(p + "downstream_cx_idle_timeout")
        downstreamCxDrainClose = store.counter(p + "downstream_cx_drain_close")
        downstreamCxUpgradesTotal = store.counter(p + "downstream_cx_upgrades_total")
        downstreamCxUpgradesActive = store.gauge(p + "downstream_cx_upgrades_active")
        downstreamRqTotal = store.counter(p + "downstream_rq_total")
        downstreamRqHttp1Total = store.counter(p + "downstream_rq_http1_total")
        downstreamRqActive = store.gauge(p + "downstream_rq_active")
        downstreamRqCompleted = store.counter(p + "downstream_rq_completed")
        downstreamRqByClass = (0...5).map { store.counter(p + "downstream_rq_\($0)xx") }
        downstreamRqTime = store.histogram(p + "downstream_rq_time")
        downstreamRqRxReset = store.counter(p + "downstream_rq_rx_reset")
        downstreamRqTxReset = store.counter(p + "downstream_rq_tx_reset")
        downstreamRqHeaderTimeout = store.counter(p + "downstream_rq_header_timeout")
        downstreamRqTimeout = store.counter(p + "downstream_rq_timeout")
        downstreamRqIdleTimeout = store.counter(p + "downstream_rq_idle_timeout")
        downstreamRqResponseBeforeRqComplete = store.counter(p + "downstream_rq_response_before_rq_complete")
        downstreamRqLocalReply = store.counter(p + "downstream_rq_local_reply")
        downstreamRqTooLarge = store.counter(p + "downstream_rq_too_large")
        rqResetAfterDownstreamResponseStarted = store.counter(p + "rq_reset_after_downstream_response_started")
        noRoute = store.counter(p + "no_route")
        noCluster = store.counter(p + "no_cluster")
        rqRedirect = store.counter(p + "rq_redirect")
        rqDirectResponse = store.counter(p + "rq_direct_response")
        http1Errors = Http1Error.allCases.map { store.counter(p + "http1." + $0.statName) }
        downstreamCxHttp2Total = store.counter(p + "downstream_cx_http2_total")
        downstreamCxHttp2Active = store.gauge(p + "downstream_cx_http2_active")
        downstreamRqHttp2Total = store.counter(p + "downstream_rq_http2_total")
        http2 = Http2Stats(store: store, prefix: p + "http2.")
    }
}

/// The HTTP/2 codec's stats (Envoy's `http2.*` names where Envoy has them), per listener prefix.
final class Http2Stats: Sendable {
    /// RST_STREAM received from the peer.
    let rxReset: Counter
    /// RST_STREAM sent.
    let txReset: Counter
    let goawaySent: Counter
    let streamsActive: Gauge
    /// Response bytes queued in streams, waiting for the client's flow-control window.
    let pendingSendBytes: Gauge
    /// Trailers received.
    let trailers: Counter
    /// A request's headers over `max_request_headers_kb` or `max_headers_count` (431).
    let headerOverflow: Counter
    /// Stream-level protocol errors nghttp2 found (malformed messages, bad frames).
    let rxMessagingError: Counter
    /// `host` and `:authority` both present and different (400).
    let hostAuthorityMismatch: Counter
    // Protections: each closes the connection with GOAWAY (ENHANCE_YOUR_CALM unless noted).
    let inboundEmptyFramesFlood: Counter
    let inboundPriorityFramesFlood: Counter
    let inboundWindowUpdateFramesFlood: Counter
    /// SETTINGS/PING acknowledgements piling up for a client that does not read (nghttp2's
    /// max_outbound_ack).
    let outboundControlFlood: Counter
    /// Connections closed for a keep-alive PING the client left unanswered.
    let keepaliveTimeout: Counter
    /// More CONTINUATION frames than nghttp2's limit (CVE-2024-28182).
    let continuationFlood: Counter
    /// A second header block decoding to over 4 × the header limit on one connection.
    let hpackBombClose: Counter
    /// Streams over MAX_CONCURRENT_STREAMS (REFUSED_STREAM before the client acknowledged our
    /// SETTINGS, a PROTOCOL_ERROR GOAWAY after).
    let tooManyStreams: Counter
    /// Half or more of at least 500 streams reset by the client early (Envoy's rule).
    let prematureResetClose: Counter
    /// nghttp2's stream reset rate limit closed the connection (INTERNAL_ERROR).
    let rapidResetGoaway: Counter

    init(store: StatsStore, prefix p: String) {
        rxReset = store.counter(p + "rx_reset")
        txReset = store.counter(p + "tx_reset")
        goawaySent = store.counter(p + "goaway_sent")
        streamsActive = store.gauge(p + "streams_active")
        pendingSendBytes = store.gauge(p + "pending_send_bytes")
        trailers = store.counter(p + "trailers")
        headerOverflow = store.counter(p + "header_overflow")
        rxMessagingError = store.counter(p + "rx_messaging_error")
        hostAuthorityMismatch = store.counter(p + "host_authority_mismatch")
        inboundEmptyFramesFlood = store.counter(p + "inbound_empty_frames_flood")
        inboundPriorityFramesFlood = store.counter(p + "inbound_priority_frames_flood")
        inboundWindowUpdateFramesFlood = store.counter(p + "inbound_window_update_frames_flood")
        outboundControlFlood = store.counter(p + "outbound_control_flood")
        keepaliveTimeout = store.counter(p + "keepalive_timeout")
        continuationFlood = store.counter(p + "continuation_flood")
        hpackBombClose = store.counter(p + "hpack_bomb_close")
        tooManyStreams = store.counter(p + "too_many_streams")
        prematureResetClose = store.counter(p + "premature_reset_close")
        rapidResetGoaway = store.counter(p + "rapid_reset_goaway")
    }
}

/// Request-level stats of a cluster, `cluster.<name>.upstream_rq_*` (Envoy's names), resolved
/// once per cluster per config generation.
final class UpstreamRequestStats: Sendable {
    let rqCompleted: Counter
    /// `upstream_rq_1xx` ... `upstream_rq_5xx` by class.
    let rqByClass: [Counter]
    /// `upstream_rq_<code>` for the codes in `UpstreamRequestStats.codes`.
    let rqByCode: [Int: Counter]
    let rqTime: Histogram
    let rqTimeout: Counter
    let rqPerTryTimeout: Counter
    let rqRxReset: Counter
    let rqTxReset: Counter
    let rqRetry: Counter
    let rqRetrySuccess: Counter
    let rqRetryOverflow: Counter
    let rqRetryLimitExceeded: Counter
    let cxProtocolError: Counter
    let http1Errors: [Counter]
    // HTTP/2 upstreams.
    let cxHttp2Total: Counter
    /// `protocol: auto`: what the hosts' ALPN chose, per connection.
    let cxAlpnHttp1: Counter
    let cxAlpnHttp2: Counter
    let h2RxReset: Counter
    let h2TxReset: Counter
    let goawayReceived: Counter
    /// Connections closed for a keep-alive PING left unanswered (`http2.keepalive_timeout`).
    let keepaliveTimeout: Counter
    /// REFUSED_STREAM, or streams above a GOAWAY's last stream id (`http2.stream_refused_errors`).
    let streamRefused: Counter
    /// Pool stats (`upstream_rq_total`, `_active`, `_pending_*`, `upstream_cx_*` of pools).
    let pool: PoolStatHandles

    /// Codes with their own counter (others are counted by class only).
    static let codes = [200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
                        500, 501, 502, 503, 504]

    init(store: StatsStore, cluster: String) {
        let p = "cluster.\(cluster)."
        rqCompleted = store.counter(p + "upstream_rq_completed")
        rqByClass = (0...5).map { store.counter(p + "upstream_rq_\($0)xx") }
        var byCode: [Int: Counter] = [:]
        for c in UpstreamRequestStats.codes { byCode[c] = store.counter(p + "upstream_rq_\(c)") }
        rqByCode = byCode
        rqTime = store.histogram(p + "upstream_rq_time")
        rqTimeout = store.counter(p + "upstream_rq_timeout")
        rqPerTryTimeout = store.counter(p + "upstream_rq_per_try_timeout")
        rqRxReset = store.counter(p + "upstream_rq_rx_reset")
        rqTxReset = store.counter(p + "upstream_rq_tx_reset")
        rqRetry = store.counter(p + "upstream_rq_retry")
        rqRetrySuccess = store.counter(p + "upstream_rq_retry_success")
        rqRetryOverflow = store.counter(p + "upstream_rq_retry_overflow")
        rqRetryLimitExceeded = store.counter(p + "upstream_rq_retry_limit_exceeded")
        cxProtocolError = store.counter(p + "upstream_cx_protocol_error")
        http1Errors = Http1Error.allCases.map { store.counter(p + "http1." + $0.statName) }
        cxHttp2Total = store.counter(p + "upstream_cx_http2_total")
        cxAlpnHttp1 = store.counter(p + "upstream_cx_alpn_http1")
        cxAlpnHttp2 = store.counter(p + "upstream_cx_alpn_h2")
        h2RxReset = store.counter(p + "http2.rx_reset")
        h2TxReset = store.counter(p + "http2.tx_reset")
        goawayReceived = store.counter(p + "http2.goaway_received")
        keepaliveTimeout = store.counter(p + "http2.keepalive_timeout")
        streamRefused = store.counter(p + "http2.stream_refused_errors")
        pool = PoolStatHandles(store: store, prefix: p)
    }

    /// Counts a response's code by class and, when it has one, its own counter.
    func countCode(_ status: Int, _ slab: StatsSlab) {
        let cls = status / 100
        if cls >= 1 && cls <= 5 { slab.inc(rqByClass[cls]) }
        if let c = rqByCode[status] { slab.inc(c) }
    }
}
