import Common
import Glibc

/// A comparison of a value's bytes (a header, a query parameter) with a configured string.
/// Compiled at config time; matching reads the bytes in place.
struct StringMatch: Sendable {
    enum Kind: Sendable {
        case exact([UInt8]), prefix([UInt8]), suffix([UInt8]), contains([UInt8])
        /// The whole value must match (Envoy's `safe_regex`).
        case regex(Regex8)
    }
    let kind: Kind
    /// ASCII case ignored (`ignore_case`); not for regexes, which say so themselves (`(?i)`).
    var ignoreCase = false

    func matches(_ v: UnsafeRawBufferPointer) -> Bool {
        switch kind {
        case .exact(let b): return v.count == b.count && bytesEqual(v, at: 0, b, ignoreCase: ignoreCase)
        case .prefix(let b): return v.count >= b.count && bytesEqual(v, at: 0, b, ignoreCase: ignoreCase)
        case .suffix(let b): return v.count >= b.count && bytesEqual(v, at: v.count - b.count, b, ignoreCase: ignoreCase)
        case .contains(let b):
            if b.isEmpty { return true }
            if v.count < b.count { return false }
            for at in 0...(v.count - b.count) where bytesEqual(v, at: at, b, ignoreCase: ignoreCase) { return true }
            return false
        case .regex(let r): return r.matches(v)
        }
    }

    /// The kind and text, for dumps.
    var dump: (String, JSON) {
        switch kind {
        case .exact(let b): return ("exact", .string(String(decoding: b, as: UTF8.self)))
        case .prefix(let b): return ("prefix", .string(String(decoding: b, as: UTF8.self)))
        case .suffix(let b): return ("suffix", .string(String(decoding: b, as: UTF8.self)))
        case .contains(let b): return ("contains", .string(String(decoding: b, as: UTF8.self)))
        case .regex(let r): return ("safe_regex", .string(r.pattern))
        }
    }
}

/// Whether `v[at..<at+b.count]` equals `b` (the caller checked the length).
@inline(__always)
func bytesEqual(_ v: UnsafeRawBufferPointer, at: Int, _ b: [UInt8], ignoreCase: Bool) -> Bool {
    if b.isEmpty { return true }
    if !ignoreCase { return b.withUnsafeBytes { memcmp(v.baseAddress! + at, $0.baseAddress!, b.count) == 0 } }
    for i in 0..<b.count where asciiLower(v[at + i]) != asciiLower(b[i]) { return false }
    return true
}

/// A `headers[i]` matcher of a route.
struct HeaderMatcher: Sendable {
    enum Rule: Sendable {
        /// `present: true|false`.
        case present(Bool)
        case value(StringMatch)
    }
    /// Lowercase name (pseudo-headers such as `:method` included).
    let name: [UInt8]
    let known: KnownHeader
    let rule: Rule
    /// `invert_match`: the result is negated (an absent header then matches a value rule).
    let invert: Bool

    init(name: String, rule: Rule, invert: Bool) {
        self.name = Array(name.lowercased().utf8)
        self.known = self.name.withUnsafeBytes { KnownHeader.classify($0) }
        self.rule = rule
        self.invert = invert
    }

    /// Matches the first `name` header's value (several lines of a name are not joined).
    func matches(_ h: HeaderMap) -> Bool {
        let i = known != .other ? h.first(known) : firstIndex(h)
        let r: Bool
        switch rule {
        case .present(let want): r = (i != nil) == want
        case .value(let m): r = i.map { h.withValue($0) { m.matches($0) } } ?? false
        }
        return r != invert
    }

    /// The first live entry named `name`, compared byte by byte (no String made).
    private func firstIndex(_ h: HeaderMap) -> Int? {
        for (i, e) in h.entries.enumerated() where !e.removed && e.known == .other && Int(e.nameLength) == name.count {
            if h.withName(i, { bytesEqual($0, at: 0, name, ignoreCase: false) }) { return i }
        }
        return nil
    }
}

/// A `query_parameters[i]` matcher: the first parameter with the name (bytes as sent, not
/// percent-decoded, as Envoy).
struct QueryMatcher: Sendable {
    enum Rule: Sendable {
        case present
        case value(StringMatch)
    }
    let name: [UInt8]
    let rule: Rule

    func matches(query q: UnsafeRawBufferPointer) -> Bool {
        var start = 0
        while start <= q.count {
            var end = start
            while end < q.count && q[end] != UInt8(ascii: "&") { end += 1 }
            var eq = start
            while eq < end && q[eq] != UInt8(ascii: "=") { eq += 1 }
            if eq - start == name.count && bytesEqual(q, at: start, name, ignoreCase: false) && end > start {
                switch rule {
                case .present: return true
                case .value(let m):
                    let vs = min(eq + 1, end)
                    return m.matches(UnsafeRawBufferPointer(rebasing: q[vs..<end]))
                }
            }
            start = end + 1
        }
        return false
    }
}

/// How a route matches the path (without its query string).
enum PathMatch: Sendable {
    /// `connect_matcher: {}`: CONNECT requests only (they have no path). Path matchers never
    /// match a CONNECT.
    case connect
    case prefix([UInt8])
    case path([UInt8])
    /// The whole path must match.
    case regex(Regex8)
}

/// A route's `match` block.
struct RouteMatch: Sendable {
    let path: PathMatch
    /// `case_sensitive` (default true) for `prefix` and `path`; a regex says it itself (`(?i)`).
    let caseSensitive: Bool
    let headers: [HeaderMatcher]
    let queryParameters: [QueryMatcher]
    /// Uppercase method names; empty = any.
    let methods: [[UInt8]]

    /// Whether the request matches. `path` and `query` are the `:path` value split at the
    /// first `?` (query without the `?`, nil when there is none).
    /// `isConnect`: the request is a CONNECT (found once per request by the route table).
    func matches(_ h: HeaderMap, path p: UnsafeRawBufferPointer, query: UnsafeRawBufferPointer?, isConnect: Bool) -> Bool {
        if case .connect = path { if !isConnect { return false } } else if isConnect { return false }
        switch path {
        case .connect:
            break
        case .prefix(let b):
            guard p.count >= b.count && bytesEqual(p, at: 0, b, ignoreCase: !caseSensitive) else { return false }
        case .path(let b):
            guard p.count == b.count && bytesEqual(p, at: 0, b, ignoreCase: !caseSensitive) else { return false }
        case .regex(let r):
            guard r.matches(p) else { return false }
        }
        if !methods.isEmpty {
            guard let mi = h.first(.method) else { return false }
            let ok = h.withValue(mi) { v in methods.contains { $0.count == v.count && bytesEqual(v, at: 0, $0, ignoreCase: false) } }
            if !ok { return false }
        }
        for m in headers where !m.matches(h) { return false }
        if !queryParameters.isEmpty {
            let q = query ?? UnsafeRawBufferPointer(start: nil, count: 0)
            for m in queryParameters where !m.matches(query: q) { return false }
        }
        return true
    }

    var dump: JSON {
        var f: [(String, JSON)] = []
        switch path {
        case .connect: f.append(("connect_matcher", .object([])))
        case .prefix(let b): f.append(("prefix", .string(String(decoding: b, as: UTF8.self))))
        case .path(let b): f.append(("path", .string(String(decoding: b, as: UTF8.self))))
        case .regex(let r): f.append(("safe_regex", .string(r.pattern)))
        }
        if !caseSensitive { f.append(("case_sensitive", .bool(false))) }
        if !methods.isEmpty { f.append(("methods", .array(methods.map { .string(String(decoding: $0, as: UTF8.self)) }))) }
        if !headers.isEmpty {
            f.append(("headers", .array(headers.map { m in
                var o: [(String, JSON)] = [("name", .string(String(decoding: m.name, as: UTF8.self)))]
                switch m.rule {
                case .present(let p): o.append(("present", .bool(p)))
                case .value(let s): o.append(s.dump)
                }
                if m.invert { o.append(("invert_match", .bool(true))) }
                return .object(o)
            })))
        }
        if !queryParameters.isEmpty {
            f.append(("query_parameters", .array(queryParameters.map { m in
                var o: [(String, JSON)] = [("name", .string(String(decoding: m.name, as: UTF8.self)))]
                switch m.rule {
                case .present: o.append(("present", .bool(true)))
                case .value(let s): o.append(s.dump)
                }
                return .object(o)
            })))
        }
        return .object(f)
    }
}

/// The `:path` value split at the first `?`, for `body` (no allocation). An absent `:path`
/// (CONNECT) is an empty path.
@inline(__always)
func withPathAndQuery<R>(_ h: HeaderMap, _ body: (_ path: UnsafeRawBufferPointer, _ query: UnsafeRawBufferPointer?) -> R) -> R {
    guard let i = h.first(.path) else { return body(UnsafeRawBufferPointer(start: nil, count: 0), nil) }
    return h.withValue(i) { v in
        var q = 0
        while q < v.count && v[q] != UInt8(ascii: "?") { q += 1 }
        if q == v.count { return body(v, nil) }
        return body(UnsafeRawBufferPointer(rebasing: v[0..<q]), UnsafeRawBufferPointer(rebasing: v[(q + 1)...]))
    }
}
