import Common

/// `health_check`: answers `path` (default /healthz) from the proxy itself, 200 while live and
/// 503 after `POST /healthcheck/fail` on the admin endpoint or once draining (Envoy's health
/// check filter, non-pass-through mode). In pass-through mode the request goes on to the
/// upstream and only the 503 cases are answered here.
struct HealthCheckFilterFactory: HttpFilterFactory {
    let config: HealthCheckFilterConfig
    let stats: HttpConnectionManagerStats
    var name: String { "health_check" }

    func create(stream: HttpStream) -> (HttpDecoderFilter?, HttpEncoderFilter?) {
        (HealthCheckFilter(config: config, stream: stream), nil)
    }
}

final class HealthCheckFilter: HttpDecoderFilter {
    let config: HealthCheckFilterConfig
    unowned(unsafe) let stream: HttpStream

    init(config: HealthCheckFilterConfig, stream: HttpStream) { self.config = config; self.stream = stream }

    func decodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        guard let p = headers.first(.path) else { return .continue }
        let matches = headers.withValue(p) { v -> Bool in
            let path = v.firstIndex(of: 0x3F).map { UnsafeRawBufferPointer(rebasing: v[..<$0]) } ?? v
            return path.elementsEqual(config.path.utf8)
        }
        guard matches else { return .continue }
        let failed = ServerHealth.failed.load(ordering: .relaxed) || stream.worker.draining
        if failed {
            stream.sendLocalReply(503, "", flags: "")
            return .stopIteration
        }
        if config.passThroughMode { return .continue }
        stream.sendLocalReply(200, "", flags: "")
        return .stopIteration
    }
}

/// `header_mutation`: adds and removes request headers on the way in and response headers on
/// the way out, with the same format tokens as route-level mutations.
struct HeaderMutationFilterFactory: HttpFilterFactory {
    let config: HeaderMutationFilterConfig
    var name: String { "header_mutation" }

    func create(stream: HttpStream) -> (HttpDecoderFilter?, HttpEncoderFilter?) {
        var c = config
        if case .headerMutation(let o)? = stream.filterOverride(name) { c = o }
        let f = HeaderMutationFilter(config: c, stream: stream)
        return (c.request.isEmpty ? nil : f, c.response.isEmpty ? nil : f)
    }
}

final class HeaderMutationFilter: HttpDecoderFilter, HttpEncoderFilter {
    let config: HeaderMutationFilterConfig
    unowned(unsafe) let stream: HttpStream

    init(config: HeaderMutationFilterConfig, stream: HttpStream) { self.config = config; self.stream = stream }

    func decodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        HeaderMutator.apply(config.request, to: headers, stream: stream)
        // Routes may match on what was just added or removed.
        stream.clearRouteCache()
        return .continue
    }

    func encodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        HeaderMutator.apply(config.response, to: headers, stream: stream)
        return .continue
    }
}
