import Common

/// What a filter's `decodeHeaders`/`encodeHeaders`/`...Trailers` tells the chain.
enum FilterHeadersStatus {
    /// Pass the headers to the next filter.
    case `continue`
    /// Hold them: the filter calls `continueDecoding`/`continueEncoding` (or sends a local reply)
    /// later. Body bytes that arrive meanwhile are buffered by the stream, under its limit.
    case stopIteration
}

/// What a filter's `decodeData`/`encodeData` tells the chain.
enum FilterDataStatus {
    case `continue`
    /// Keep these bytes in the stream's buffer (up to its limit: 413 on the way in, 500 on the way
    /// out beyond it) and stop; `continueDecoding`/`continueEncoding` passes the buffer on.
    case stopIterationAndBuffer
    /// Stop without buffering: the filter took the bytes.
    case stopIterationNoBuffer
}

/// A filter on the request path (Envoy's StreamDecoderFilter). Filters run in configuration order
/// (FIFO); the router is always the last one. One instance per stream, on the stream's worker.
protocol HttpDecoderFilter: AnyObject {
    func decodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus
    func decodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus
    func decodeTrailers(_ trailers: HeaderMap) -> FilterHeadersStatus
    /// The stream ended (complete, reset or replied locally): release what the filter holds.
    func onStreamDone()
}

/// A filter on the response path (Envoy's StreamEncoderFilter), run in reverse configuration
/// order (LIFO), so the filter nearest the client sees the response last.
protocol HttpEncoderFilter: AnyObject {
    func encodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus
    func encodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus
    func encodeTrailers(_ trailers: HeaderMap) -> FilterHeadersStatus
}

extension HttpDecoderFilter {
    func decodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus { .continue }
    func decodeTrailers(_ trailers: HeaderMap) -> FilterHeadersStatus { .continue }
    func onStreamDone() {}
}

extension HttpEncoderFilter {
    func encodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus { .continue }
    func encodeTrailers(_ trailers: HeaderMap) -> FilterHeadersStatus { .continue }
}

/// Makes one configured filter's instances (built once per config generation, main thread).
protocol HttpFilterFactory: Sendable {
    /// The filter name in config (`http_filters[i].name`).
    var name: String { get }
    /// The stream's instance: a decoder, an encoder, or one object that is both.
    func create(stream: HttpStream) -> (HttpDecoderFilter?, HttpEncoderFilter?)
}
