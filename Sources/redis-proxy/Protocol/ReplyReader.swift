import CHiredis
import Common
import Glibc

/// The type of a top-level reply.
public enum RespReplyType: Sendable, Equatable {
    case status, error, integer, bulk, nilBulk, array, nilArray
}

/// One complete top-level reply in the stream fed to a `RespReplyReader`.
public struct RespReply: Sendable, Equatable {
    /// Its exact length in bytes: the caller forwards (or drains) this many bytes from where
    /// the previous reply ended.
    public var length: Int
    public var type: RespReplyType
    /// `:n` replies: n (0 for other types).
    public var integer: Int64
    /// Arrays: the element count (0 for other types).
    public var elementCount: Int

    /// An `-ERR ...` reply (counted as a command error; MGET merges put it on each key).
    public var isError: Bool { type == .error }
}

/// Why the upstream's byte stream was given up. The proxy closes that upstream connection and
/// answers the requests waiting on it with an error.
public enum RespReplyError: Error, Sendable, Equatable {
    /// hiredis refused the bytes (bad type byte, nesting deeper than 7, an array count above
    /// INT_MAX, ...): its message.
    case protocolError(String)
    /// A reply passed `maxReplyBytes` before it was complete.
    case replyTooLarge

    public var statName: String {
        switch self {
        case .protocolError: "upstream_protocol_error"
        case .replyTooLarge: "upstream_reply_too_large"
        }
    }
}

/// Finds reply boundaries in an upstream's byte stream with hiredis's `redisReader`, using
/// custom reply-object functions that build nothing: the proxy forwards replies as the bytes it
/// already holds, so it only needs each reply's length, type, an integer's value (sums), and on
/// request the byte ranges of a top-level array's elements (merging MGET, KEYS, SCAN). Every
/// callback sees where hiredis stands in the stream (bytes fed minus the reader's unread
/// `len - pos`), which gives exact offsets without hiredis keeping the bytes.
///
/// Limits: hiredis 0.14.1 allows 7 levels of nested arrays (its task stack has 9 slots) and
/// array counts up to INT_MAX, without allocating per element here; a reply still incomplete
/// after `maxReplyBytes` is an error, so a hostile or broken upstream cannot make us buffer
/// without bound (hiredis itself would wait forever for a `$2000000000` bulk).
///
/// Confined to one worker; one per upstream connection. hiredis copies what is fed; the
/// caller keeps its own copy to forward.
public final class RespReplyReader {
    /// Largest reply accepted, in bytes (default 512 MB + 1 MB: a maximal bulk and its header).
    public let maxReplyBytes: Int
    /// Set before feeding to have the next top-level array's element ranges recorded in
    /// `elementRanges`; cleared when that reply completes.
    public var collectElements = false
    /// After a reply with `collectElements` set: each element's bytes, as offsets from the
    /// reply's first byte. Kept with its capacity for reuse.
    public private(set) var elementRanges: [Range<Int>] = []

    private let reader: UnsafeMutablePointer<redisReader>
    private let functions: UnsafeMutablePointer<redisReplyObjectFunctions>
    /// Bytes fed since the start.
    private var fed = 0
    /// Stream offset where the reply being read starts.
    private var replyStart = 0
    /// Stream offset just past the last item any callback saw.
    fileprivate var lastEnd = 0
    /// The top-level reply being read, as its root callback described it.
    fileprivate var rootType = RespReplyType.nilBulk
    fileprivate var rootInteger: Int64 = 0
    fileprivate var rootElements = 0
    /// Element start offsets (stream) of the array being collected.
    fileprivate var starts: [Int] = []
    fileprivate var collecting = false
    private var failed: RespReplyError?

    public init(maxReplyBytes: Int = 513 * 1024 * 1024) {
        self.maxReplyBytes = maxReplyBytes
        functions = .allocate(capacity: 1)
        functions.initialize(to: redisReplyObjectFunctions(
            createString: { task, str, len in replyReaderCallback(task) { $0.onString(task, str, Int(len)) } },
            createArray: { task, n in replyReaderCallback(task) { $0.onArray(task, Int(n)) } },
            createInteger: { task, v in replyReaderCallback(task) { $0.onInteger(task, v) } },
            createNil: { task in replyReaderCallback(task) { $0.onNil(task) } },
            freeObject: { _ in }))
        guard let r = redisReaderCreateWithFunctions(functions) else { preconditionFailure("out of memory") }
        reader = r
        reader.pointee.privdata = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        redisReaderFree(reader)
        functions.deinitialize(count: 1)
        functions.deallocate()
    }

    public enum Result: Sendable, Equatable {
        /// More bytes are needed.
        case incomplete
        case reply(RespReply)
        case error(RespReplyError)
    }

    /// Hands hiredis the next bytes of the stream (then call `next()` until `.incomplete`).
    public func feed(_ bytes: UnsafeRawBufferPointer) {
        guard failed == nil, let base = bytes.baseAddress, bytes.count > 0 else { return }
        if redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count) != REDIS_OK {
            failed = .protocolError(readerError())
        }
        fed += bytes.count
    }

    /// The next complete reply, if all its bytes have been fed.
    public func next() -> Result {
        if let f = failed { return .error(f) }
        if collectElements && !collecting && lastEnd == replyStart {
            collecting = true
            starts.removeAll(keepingCapacity: true)
        }
        var obj: UnsafeMutableRawPointer?
        if redisReaderGetReply(reader, &obj) != REDIS_OK {
            failed = .protocolError(readerError())
            return .error(failed ?? .replyTooLarge)
        }
        guard obj != nil else {
            // hiredis holds the unread bytes; the reply so far spans from its start to `fed`.
            if fed - replyStart > maxReplyBytes { failed = .replyTooLarge; return .error(.replyTooLarge) }
            return .incomplete
        }
        let end = fed - (reader.pointee.len - reader.pointee.pos)
        let reply = RespReply(length: end - replyStart, type: rootType, integer: rootInteger, elementCount: rootElements)
        elementRanges.removeAll(keepingCapacity: true)
        if collecting {
            for (i, s) in starts.enumerated() {
                let e = i + 1 < starts.count ? starts[i + 1] : end
                elementRanges.append((s - replyStart)..<(e - replyStart))
            }
            collecting = false
            collectElements = false
        }
        replyStart = end
        lastEnd = end
        rootInteger = 0; rootElements = 0
        return .reply(reply)
    }

    private func readerError() -> String {
        withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    // MARK: - hiredis callbacks

    /// Stream offset of byte `offset` of hiredis's buffer.
    @inline(__always) private func streamOffset(_ offset: Int) -> Int { fed - reader.pointee.len + offset }

    /// Bookkeeping common to every item: a direct child of the root starts where the previous
    /// item ended (items are reported in stream order, one callback each).
    @inline(__always)
    private func item(_ task: UnsafePointer<redisReadTask>?, end: Int) {
        guard let t = task?.pointee else { return }
        if let parent = t.parent, parent.pointee.parent == nil, collecting {
            starts.append(lastEnd)
        }
        lastEnd = end
    }

    @inline(__always) private func isRoot(_ task: UnsafePointer<redisReadTask>?) -> Bool { task?.pointee.parent == nil }

    fileprivate func onString(_ task: UnsafePointer<redisReadTask>?, _ str: UnsafeMutablePointer<CChar>?, _ len: Int) {
        // A line (status, error) or a bulk's data: either way CRLF follows the `len` bytes.
        let off = str.map { UnsafeRawPointer($0) - UnsafeRawPointer(reader.pointee.buf) } ?? reader.pointee.pos
        if isRoot(task) {
            switch task?.pointee.type ?? 0 {
            case REDIS_REPLY_STATUS: rootType = .status
            case REDIS_REPLY_ERROR: rootType = .error
            default: rootType = .bulk
            }
        }
        item(task, end: streamOffset(off + len + 2))
    }

    fileprivate func onArray(_ task: UnsafePointer<redisReadTask>?, _ n: Int) {
        if isRoot(task) { rootType = .array; rootElements = n }
        item(task, end: streamOffset(reader.pointee.pos))  // hiredis has read the count line
    }

    fileprivate func onInteger(_ task: UnsafePointer<redisReadTask>?, _ v: Int64) {
        if isRoot(task) { rootType = .integer; rootInteger = v }
        item(task, end: streamOffset(reader.pointee.pos))
    }

    fileprivate func onNil(_ task: UnsafePointer<redisReadTask>?) {
        let isArray = task?.pointee.type == REDIS_REPLY_ARRAY
        if isRoot(task) { rootType = isArray ? .nilArray : .nilBulk }
        if isArray {
            item(task, end: streamOffset(reader.pointee.pos))
            return
        }
        // `$-1`: hiredis calls back before moving past the line; its end is the first CRLF.
        guard let b = reader.pointee.buf else { item(task, end: streamOffset(reader.pointee.pos)); return }
        let buf = UnsafeRawPointer(b)
        var i = reader.pointee.pos
        let len = reader.pointee.len
        while i + 1 < len && !(buf.load(fromByteOffset: i, as: UInt8.self) == 0x0D && buf.load(fromByteOffset: i + 1, as: UInt8.self) == 0x0A) {
            i += 1
        }
        item(task, end: streamOffset(i + 2))
    }
}

/// Routes a hiredis callback to the reader in the task's `privdata` (set on the reader, which
/// hiredis copies to every task) and returns a non-NULL object: hiredis treats NULL as out of
/// memory. The object is the reader pointer itself; nothing is allocated.
@inline(__always)
private func replyReaderCallback(_ task: UnsafePointer<redisReadTask>?, _ body: (RespReplyReader) -> Void) -> UnsafeMutableRawPointer? {
    guard let ctx = task?.pointee.privdata else { return nil }
    Unmanaged<RespReplyReader>.fromOpaque(ctx)._withUnsafeGuaranteedRef(body)
    return ctx
}
