import Yams

/// A config problem, always naming the key path (`clusters[1].endpoints[0]`) and, when known,
/// the line in the file.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let message: String
    public let line: Int?

    public init(_ path: String, _ message: String, line: Int? = nil) {
        self.path = path; self.message = message; self.line = line
    }

    public var description: String {
        let where_ = path.isEmpty ? "config" : path
        if let line { return "\(where_): \(message) (line \(line))" }
        return "\(where_): \(message)"
    }
}

/// A YAML node with its key path. Typed accessors fail with a `ConfigError` naming that path.
public struct ConfigValue {
    public let node: Node
    public let path: String

    public init(node: Node, path: String) { self.node = node; self.path = path }

    /// Parses YAML text into its root value.
    public static func parse(yaml: String) throws(ConfigError) -> ConfigValue {
        do {
            guard let root = try Yams.compose(yaml: yaml) else {
                return ConfigValue(node: .mapping(.init([])), path: "")
            }
            return ConfigValue(node: root, path: "")
        } catch let e as YamlError {
            throw ConfigError("", "YAML syntax error: \(e)")
        } catch {
            throw ConfigError("", "YAML error: \(error)")
        }
    }

    var line: Int? { node.mark?.line }

    public func fail(_ message: String) -> ConfigError { ConfigError(path, message, line: line) }

    private func scalar(_ what: String) throws(ConfigError) -> String {
        guard case .scalar(let s) = node else { throw fail("expected \(what), got \(kindName)") }
        return s.string
    }

    var kindName: String {
        switch node {
        case .scalar: return "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    public var isNull: Bool {
        if case .scalar(let s) = node, s.style == .plain, ["", "~", "null", "Null", "NULL"].contains(s.string) { return true }
        return false
    }

    public func string() throws(ConfigError) -> String {
        let s = try scalar("a string")
        if isNull { throw fail("expected a string, got null") }
        return s
    }

    public func int(min: Int = Int.min, max: Int = Int.max) throws(ConfigError) -> Int {
        let s = try scalar("an integer")
        guard let v = Int(s) else { throw fail("expected an integer, got \"\(s)\"") }
        guard v >= min && v <= max else { throw fail("\(v) is out of range \(min)...\(max)") }
        return v
    }

    public func bool() throws(ConfigError) -> Bool {
        let s = try scalar("a boolean")
        switch s {
        case "true", "True", "TRUE", "yes", "on": return true
        case "false", "False", "FALSE", "no", "off": return false
        default: throw fail("expected true or false, got \"\(s)\"")
        }
    }

    /// A duration in milliseconds: "250ms", "5s", "2m", "1h", "0" (zero). Bare numbers other
    /// than 0 are refused: units are never guessed.
    public func durationMs() throws(ConfigError) -> UInt64 {
        let s = try scalar("a duration")
        guard let v = parseDurationMs(s) else {
            throw fail("\"\(s)\" is not a duration (use e.g. 250ms, 5s, 2m, 1h)")
        }
        return v
    }

    /// A duration in milliseconds within `min...max` (a message naming both otherwise).
    public func durationMs(min: UInt64, max: UInt64) throws(ConfigError) -> UInt64 {
        let v = try durationMs()
        guard v >= min && v <= max else { throw fail("\(formatDuration(v)) is out of range \(formatDuration(min))...\(formatDuration(max))") }
        return v
    }

    /// A size in bytes: 65536, "64KiB", "1MiB", "1GiB" (also KB/MB as powers of 1024? no: only the
    /// binary units are accepted, to avoid ambiguity).
    public func bytes(min: Int = 0, max: Int = Int.max) throws(ConfigError) -> Int {
        let s = try scalar("a size")
        guard let v = parseSize(s) else { throw fail("\"\(s)\" is not a size (use bytes, or KiB, MiB, GiB)") }
        guard v >= min && v <= max else { throw fail("\(s) is out of range \(min)...\(max) bytes") }
        return v
    }

    public func address() throws(ConfigError) -> SocketAddress {
        let s = try string()
        do { return try SocketAddress.parse(s) } catch { throw fail(error.description) }
    }

    /// One of the given words.
    public func oneOf(_ choices: [String]) throws(ConfigError) -> String {
        let s = try string()
        guard choices.contains(s) else {
            throw fail("\"\(s)\" is not one of \(choices.joined(separator: ", "))")
        }
        return s
    }

    public func list() throws(ConfigError) -> [ConfigValue] {
        guard case .sequence(let seq) = node else { throw fail("expected a list, got \(kindName)") }
        return seq.enumerated().map { ConfigValue(node: $0.element, path: "\(path)[\($0.offset)]") }
    }

    public func mapping() throws(ConfigError) -> ConfigMap {
        guard case .mapping(let m) = node else { throw fail("expected a mapping, got \(kindName)") }
        var pairs: [(String, Node, Int?)] = []
        pairs.reserveCapacity(m.count)
        // A set, not a scan of `pairs`: a hostile 40,000-key mapping must cost milliseconds.
        var seen = Set<String>(minimumCapacity: m.count)
        for (k, v) in m {
            guard case .scalar(let ks) = k else { throw fail("mapping keys must be strings") }
            if !seen.insert(ks.string).inserted {
                throw ConfigError(child(ks.string), "duplicate key", line: k.mark?.line)
            }
            pairs.append((ks.string, v, k.mark?.line))
        }
        return ConfigMap(path: path, pairs: pairs)
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
}

/// A mapping being read: every key must be consumed, or `finish()` reports it as unknown.
public final class ConfigMap {
    public let path: String
    private var pairs: [(String, Node, Int?)]
    private var used = Set<String>()

    public init(path: String, pairs: [(String, Node, Int?)]) { self.path = path; self.pairs = pairs }

    public var keys: [String] { pairs.map { $0.0 } }

    /// The value under `key`, or nil when absent (or null).
    public func optional(_ key: String) -> ConfigValue? {
        used.insert(key)
        guard let p = pairs.first(where: { $0.0 == key }) else { return nil }
        let v = ConfigValue(node: p.1, path: path.isEmpty ? key : "\(path).\(key)")
        return v.isNull ? nil : v
    }

    /// The value under `key`; a missing key is an error naming it.
    public func required(_ key: String) throws(ConfigError) -> ConfigValue {
        guard let v = optional(key) else { throw ConfigError(path.isEmpty ? key : "\(path).\(key)", "missing required key") }
        return v
    }

    /// Fails on the first key nobody asked for.
    public func finish() throws(ConfigError) {
        for (k, _, line) in pairs where !used.contains(k) {
            let known = used.sorted().joined(separator: ", ")
            throw ConfigError(path.isEmpty ? k : "\(path).\(k)", "unknown key (known here: \(known))", line: line)
        }
    }
}

/// "250ms" / "5s" / "2m" / "1h" / "1.5s" / "0" to milliseconds.
public func parseDurationMs(_ s: String) -> UInt64? {
    if s == "0" { return 0 }
    let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
    for (u, mult) in units where s.hasSuffix(u) {
        let num = s.dropLast(u.count)
        if u == "s" && num.hasSuffix("m") { continue }
        guard !num.isEmpty, let v = Double(num), v >= 0, v.isFinite, v * mult < 1e15 else { return nil }
        return UInt64((v * mult).rounded())
    }
    return nil
}

/// "65536" / "64KiB" / "1MiB" / "1GiB" to bytes.
public func parseSize(_ s: String) -> Int? {
    let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
    for (u, mult) in units where s.hasSuffix(u) {
        guard let v = Int(s.dropLast(u.count)), v >= 0, v < (Int.max / mult) else { return nil }
        return v * mult
    }
    return Int(s).flatMap { $0 >= 0 ? $0 : nil }
}

/// Formats milliseconds back as the shortest exact duration text.
public func formatDuration(_ ms: UInt64) -> String {
    if ms == 0 { return "0" }
    if ms % 3_600_000 == 0 { return "\(ms / 3_600_000)h" }
    if ms % 60_000 == 0 { return "\(ms / 60_000)m" }
    if ms % 1000 == 0 { return "\(ms / 1000)s" }
    return "\(ms)ms"
}
