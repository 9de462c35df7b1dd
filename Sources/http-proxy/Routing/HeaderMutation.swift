import Common

/// One piece of a header value to add: text, or a command filled in per request
/// (`%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`, `%REQ(x-foo)%`, ...; Envoy's names).
enum HeaderValuePart: Sendable, Equatable {
    case literal(String)
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` (`ip:port`) or `..._WITHOUT_PORT`.
    case downstreamRemoteAddress(withPort: Bool)
    /// `%DOWNSTREAM_LOCAL_ADDRESS%` or `..._WITHOUT_PORT`.
    case downstreamLocalAddress(withPort: Bool)
    /// `%REQ(name)%`: the request's first `name` header (lowercase; `:path`, `:method`,
    /// `:authority`, `:scheme` too), empty when absent.
    case requestHeader(String)
    /// `%UPSTREAM_HOST%`: the picked host's `ip:port` (empty before one is picked).
    case upstreamHost
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/1.0`, later `HTTP/2`.
    case `protocol`
    /// `%HOSTNAME%`: this machine's host name.
    case hostname
    /// `%REQUESTED_SERVER_NAME%`: the client's TLS server name, empty without one.
    case requestedServerName

    /// The commands a header value may use, for messages.
    static let commands = ["DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_ADDRESS",
                           "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "REQ(name)", "UPSTREAM_HOST", "PROTOCOL", "HOSTNAME",
                           "REQUESTED_SERVER_NAME"]

    /// Parses a header value with `%COMMAND%`s (`%%` is a percent sign). Unknown commands and
    /// bytes no header value may hold (CR, LF, NUL) are errors naming `v`'s path.
    static func parse(_ v: ConfigValue) throws(ConfigError) -> [HeaderValuePart] {
        let text = try v.string()
        guard isValidHeaderValue(text) else { throw v.fail("header values may not contain CR, LF or NUL") }
        let pieces: [FormatPiece]
        do { pieces = try formatPieces(text) } catch { throw v.fail(error.description) }
        var parts: [HeaderValuePart] = []
        for p in pieces {
            switch p {
            case .literal(let s): parts.append(.literal(s))
            case .command(let cmd):
                guard let part = command(cmd) else {
                    throw v.fail("unknown command %\(cmd)% (known: \(commands.joined(separator: ", ")))")
                }
                parts.append(part)
            }
        }
        return parts
    }

    private static func command(_ cmd: String) -> HeaderValuePart? {
        switch cmd {
        case "DOWNSTREAM_REMOTE_ADDRESS": return .downstreamRemoteAddress(withPort: true)
        case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": return .downstreamRemoteAddress(withPort: false)
        case "DOWNSTREAM_LOCAL_ADDRESS": return .downstreamLocalAddress(withPort: true)
        case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": return .downstreamLocalAddress(withPort: false)
        case "UPSTREAM_HOST": return .upstreamHost
        case "PROTOCOL": return .protocol
        case "HOSTNAME": return .hostname
        case "REQUESTED_SERVER_NAME": return .requestedServerName
        default:
            guard cmd.hasPrefix("REQ("), cmd.hasSuffix(")") else { return nil }
            let name = String(cmd.dropFirst(4).dropLast())
            let lower = name.lowercased()
            // Envoy's pseudo-header names work too (`%REQ(:PATH)%`): HTTP/1.1 requests carry them
            // in the header map as HTTP/2 ones will.
            guard isHeaderName(name) || [":path", ":method", ":authority", ":scheme"].contains(lower) else { return nil }
            return .requestHeader(lower)
        }
    }

    /// The text back, for dumps.
    static func text(_ parts: [HeaderValuePart]) -> String {
        var s = ""
        for p in parts {
            switch p {
            case .literal(let l): s += l.replacingOccurrences(of: "%", with: "%%")
            case .downstreamRemoteAddress(let w): s += w ? "%DOWNSTREAM_REMOTE_ADDRESS%" : "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
            case .downstreamLocalAddress(let w): s += w ? "%DOWNSTREAM_LOCAL_ADDRESS%" : "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"
            case .requestHeader(let n): s += "%REQ(\(n))%"
            case .upstreamHost: s += "%UPSTREAM_HOST%"
            case .protocol: s += "%PROTOCOL%"
            case .hostname: s += "%HOSTNAME%"
            case .requestedServerName: s += "%REQUESTED_SERVER_NAME%"
            }
        }
        return s
    }
}

/// Envoy's `append_action` of a header to add.
enum HeaderAppendAction: String, Sendable, CaseIterable {
    /// Another line with the same name when one exists (default).
    case appendIfExistsOrAdd = "append_if_exists_or_add"
    /// Only when the name is absent.
    case addIfAbsent = "add_if_absent"
    /// Replaces every line of the name, or adds one.
    case overwriteIfExistsOrAdd = "overwrite_if_exists_or_add"
    /// Replaces when present; nothing when absent.
    case overwriteIfExists = "overwrite_if_exists"
}

/// One `{header: {key, value}, append_action}` entry.
struct HeaderToAdd: Sendable {
    /// Lowercase.
    let name: String
    let value: [HeaderValuePart]
    let action: HeaderAppendAction
    /// The value when it has no commands (the common case: no formatting per request).
    var literal: String? {
        if value.isEmpty { return "" }
        if value.count == 1, case .literal(let s) = value[0] { return s }
        return nil
    }
}

/// Headers to add and remove on one side (request or response) at one level (a filter,
/// a virtual host, a route). Removals apply before additions, as Envoy.
struct HeaderMutation: Sendable {
    var add: [HeaderToAdd] = []
    /// Lowercase names.
    var remove: [String] = []

    var isEmpty: Bool { add.isEmpty && remove.isEmpty }

    /// Reads `<side>_headers_to_add` and `<side>_headers_to_remove` from `m` (side is
    /// `request` or `response`).
    static func parse(_ m: ConfigMap, side: String) throws(ConfigError) -> HeaderMutation {
        var h = HeaderMutation()
        if let l = m.optional("\(side)_headers_to_add") {
            for item in try l.list() {
                let im = try item.mapping()
                let hv = try im.required("header")
                let hm = try hv.mapping()
                let key = try hm.required("key")
                let name = try key.string()
                try checkMutable(name, key)
                guard isHeaderName(name) else { throw key.fail("\"\(name)\" is not a header name") }
                let value = try HeaderValuePart.parse(try hm.required("value"))
                try hm.finish()
                var action = HeaderAppendAction.appendIfExistsOrAdd
                if let a = im.optional("append_action") {
                    action = HeaderAppendAction(rawValue: try a.oneOf(HeaderAppendAction.allCases.map(\.rawValue)))!
                }
                try im.finish()
                h.add.append(HeaderToAdd(name: name.lowercased(), value: value, action: action))
            }
        }
        if let l = m.optional("\(side)_headers_to_remove") {
            for item in try l.list() {
                let name = try item.string()
                try checkMutable(name, item)
                guard isHeaderName(name) else { throw item.fail("\"\(name)\" is not a header name") }
                h.remove.append(name.lowercased())
            }
        }
        return h
    }

    /// Pseudo-headers and Host are the request line's, not a header list's to change (Envoy
    /// refuses them too; `host_rewrite_literal` changes the host).
    private static func checkMutable(_ name: String, _ v: ConfigValue) throws(ConfigError) {
        let lower = name.lowercased()
        if lower.hasPrefix(":") || lower == "host" {
            throw v.fail("\"\(name)\" cannot be added or removed (pseudo-headers and host belong to the request line)")
        }
    }

    func dump(side: String, into f: inout [(String, JSON)]) {
        if !add.isEmpty {
            f.append(("\(side)_headers_to_add", .array(add.map {
                .object([("header", .object([("key", .string($0.name)), ("value", .string(HeaderValuePart.text($0.value)))])),
                         ("append_action", .string($0.action.rawValue))])
            })))
        }
        if !remove.isEmpty { f.append(("\(side)_headers_to_remove", .array(remove.map { .string($0) }))) }
    }
}

/// RFC 9110 token characters (a field name), not empty.
func isHeaderName(_ s: String) -> Bool {
    if s.isEmpty || s.utf8.count > 256 { return false }
    return s.utf8.allSatisfy { c in
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }
}

/// A value a header line may carry (no CR, LF or NUL).
func isValidHeaderValue(_ s: String) -> Bool {
    !s.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
}
