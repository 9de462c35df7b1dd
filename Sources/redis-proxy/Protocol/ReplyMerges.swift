import Glibc

/// Merges of the replies of a command sent to several shards, where the shards' replies must be
/// read, not just counted: SCAN's cursor, SCRIPT EXISTS element by element, RANDOMKEY, INFO.
/// Inputs are whole RESP2 replies as a shard sent them; anything not of the expected shape
/// yields an error reply, never a trap.
public enum ReplyMerges {
    static let unexpected = Array("-ERR redis-proxy: unexpected reply from a shard\r\n".utf8)

    // MARK: - SCAN

    /// The proxy's SCAN cursor encodes the shard: `cursor = shardCursor * shards + shard`. A
    /// client starts at 0 (shard 0, its cursor 0); when a shard's scan ends, the next cursor is
    /// the next shard's start, and 0 after the last shard. Redis's cursors are bounded by its
    /// table sizes, far below 2^64 / shards; a shard cursor too large to encode is an error.
    public static func decodeScanCursor(_ arg: UnsafeRawBufferPointer, shards: Int) -> (shard: Int, cursor: UInt64)? {
        guard shards > 0, let c = parseUInt64(arg) else { return nil }
        return (Int(c % UInt64(shards)), c / UInt64(shards))
    }

    /// A shard's SCAN reply (`*2 $cursor *keys`) with the cursor replaced by the proxy's.
    public static func scanReply(_ reply: UnsafeRawBufferPointer, shard: Int, shards: Int) -> [UInt8] {
        if reply.first == UInt8(ascii: "-") { return Array(reply) }
        var p = Parser(reply)
        guard p.line(prefix: "*") == 2, let len = p.line(prefix: "$"), len >= 0, let cur = p.bytes(Int(len)),
              let shardCursor = parseUInt64(cur) else { return unexpected }
        let rest = UnsafeRawBufferPointer(rebasing: reply[p.at...])
        let next: UInt64
        if shardCursor != 0 {
            let (m, o1) = shardCursor.multipliedReportingOverflow(by: UInt64(shards))
            let (s, o2) = m.addingReportingOverflow(UInt64(shard))
            guard !o1 && !o2 else { return Array("-ERR redis-proxy: a shard's SCAN cursor is too large to encode\r\n".utf8) }
            next = s
        } else {
            next = shard + 1 < shards ? UInt64(shard + 1) : 0
        }
        let digits = Array(String(next).utf8)
        return Array("*2\r\n$\(digits.count)\r\n".utf8) + digits + [0x0D, 0x0A] + Array(rest)
    }

    // MARK: - SCRIPT EXISTS, RANDOMKEY

    /// Element-wise AND of the shards' integer arrays: 1 only where every shard has the script.
    public static func allTrue(_ parts: [[UInt8]]) -> [UInt8] {
        if let e = parts.first(where: { $0.first == UInt8(ascii: "-") }) { return e }
        var result: [Bool]?
        for part in parts {
            let ok: [Bool]? = part.withUnsafeBytes { b in
                var p = Parser(b)
                guard let n = p.line(prefix: "*"), n >= 0, n <= b.count else { return nil }
                var v: [Bool] = []
                for _ in 0..<n { guard let x = p.line(prefix: ":") else { return nil }; v.append(x != 0) }
                return p.at == b.count ? v : nil
            }
            guard let ok, result == nil || result!.count == ok.count else { return unexpected }
            result = result.map { zip($0, ok).map { $0 && $1 } } ?? ok
        }
        guard let r = result else { return unexpected }
        return Array("*\(r.count)\r\n".utf8) + r.flatMap { Array(($0 ? ":1\r\n" : ":0\r\n").utf8) }
    }

    /// RANDOMKEY: a non-nil shard answer, looking from `start` on (a random shard, so one
    /// shard's keys are not favoured); nil when every shard is empty; an error only when no
    /// shard gave a key and one failed.
    public static func firstNonNil(_ parts: [[UInt8]], start: Int) -> [UInt8] {
        guard !parts.isEmpty else { return unexpected }
        for i in 0..<parts.count {
            let p = parts[(start + i) % parts.count]
            if p.first == UInt8(ascii: "$") && !p.starts(with: Array("$-1\r\n".utf8)) { return p }
        }
        return parts.first(where: { $0.first == UInt8(ascii: "-") }) ?? Array("$-1\r\n".utf8)
    }

    // MARK: - INFO

    /// Counters that add up over shards; other plain fields show the first replying shard's
    /// value (`INFO SHARD <shard>` gives each shard's own).
    static let additive: Set<String> = [
        "connected_clients", "cluster_connections", "blocked_clients", "tracking_clients", "clients_in_timeout_table",
        "used_memory", "used_memory_rss", "used_memory_peak", "used_memory_lua", "used_memory_vm_eval", "used_memory_scripts",
        "used_memory_scripts_eval", "used_memory_dataset", "used_memory_overhead", "used_memory_startup", "number_of_cached_scripts",
        "number_of_functions", "number_of_libraries", "total_connections_received", "total_commands_processed",
        "instantaneous_ops_per_sec", "total_net_input_bytes", "total_net_output_bytes", "rejected_connections",
        "expired_keys", "evicted_keys", "evicted_clients", "keyspace_hits", "keyspace_misses", "pubsub_channels",
        "pubsub_patterns", "pubsub_shardchannels", "total_error_replies", "total_reads_processed", "total_writes_processed",
        "connected_slaves", "expired_time_cap_reached_count", "sync_full", "sync_partial_ok", "sync_partial_err",
        "total_forks", "dump_payload_sanitizations", "unexpected_error_replies", "io_threaded_reads_processed",
        "io_threaded_writes_processed", "rdb_changes_since_last_save", "client_recent_max_input_buffer",
        "client_recent_max_output_buffer", "mem_clients_normal", "mem_clients_slaves", "total_active_defrag_time",
        "stat_reply_buffer_shrinks", "stat_reply_buffer_expands",
    ]

    /// INFO over shards: sections and fields in the first shard's order (fields only some
    /// shards have are added after), additive counters summed, `dbN` and `cmdstat_`-style
    /// `a=1,b=2` fields summed per subfield (`usec_per_call` recomputed, `avg_ttl` the largest),
    /// `*_human` fields recomputed from their sum. `extra` (the proxy's own section) is appended
    /// with `shards_replied:<n>`. A failed shard is left out; all failed: the first error.
    public static func info(_ parts: [[UInt8]], extra: String) -> [UInt8] {
        var sections: [(name: String, keys: [String], values: [String: [String]])] = []
        var sectionIndex: [String: Int] = [:]  // a hostile shard may send many sections
        var replied = 0
        var firstError: [UInt8]?
        for part in parts {
            guard part.first == UInt8(ascii: "$") else { if firstError == nil { firstError = part }; continue }
            let body: String? = part.withUnsafeBytes { b in
                var p = Parser(b)
                guard let n = p.line(prefix: "$"), n >= 0, let s = p.bytes(Int(n)) else { return nil }
                return String(decoding: s, as: UTF8.self)
            }
            guard let body else { if firstError == nil { firstError = unexpected }; continue }
            replied += 1
            var current = -1
            // Lines end in CRLF, which Swift reads as one Character (a newline).
            for line in body.split(whereSeparator: \.isNewline) {
                if line.hasPrefix("# ") {
                    let name = String(line.dropFirst(2))
                    if let i = sectionIndex[name] { current = i } else {
                        sections.append((name, [], [:])); current = sections.count - 1
                        sectionIndex[name] = current
                    }
                } else if let colon = line.firstIndex(of: ":") {
                    if current < 0 {
                        if let i = sectionIndex[""] { current = i } else {
                            sections.append(("", [], [:])); current = sections.count - 1
                            sectionIndex[""] = current
                        }
                    }
                    let k = String(line[..<colon]), v = String(line[line.index(after: colon)...])
                    if sections[current].values[k] == nil { sections[current].keys.append(k); sections[current].values[k] = [] }
                    sections[current].values[k]!.append(v)
                }
            }
        }
        if replied == 0 { return firstError ?? unexpected }
        var out = ""
        for s in sections {
            if !s.name.isEmpty { out += "# \(s.name)\r\n" }
            for k in s.keys {
                let vs = s.values[k]!
                out += "\(k):\(merge(key: k, vs, all: s.values))\r\n"
            }
            out += "\r\n"
        }
        if !extra.isEmpty { out += extra + "shards_replied:\(replied)\r\n" }
        let body = Array(out.utf8)
        return Array("$\(body.count)\r\n".utf8) + body + [0x0D, 0x0A]
    }

    static func merge(key: String, _ vs: [String], all: [String: [String]]) -> String {
        if vs.count == 1 { return vs[0] }
        if additive.contains(key), let sum = sumInts(vs) { return String(sum) }
        if key.hasSuffix("_human"), let base = all[String(key.dropLast(6))], additive.contains(String(key.dropLast(6))),
           let sum = sumInts(base) { return bytesToHuman(sum) }
        // `a=1,b=2,...` fields (dbN, cmdstat_*, errorstat_*): per subfield.
        if vs[0].contains("=") {
            var order: [String] = []
            var ints: [String: Int64] = [:], doubles: [String: Double] = [:], other: [String: String] = [:]
            for v in vs {
                for pair in v.split(separator: ",") {
                    guard let eq = pair.firstIndex(of: "=") else { return vs[0] }
                    let name = String(pair[..<eq]), val = String(pair[pair.index(after: eq)...])
                    if ints[name] == nil && doubles[name] == nil && other[name] == nil { order.append(name) }
                    if name == "avg_ttl", let i = Int64(val) { ints[name] = max(ints[name] ?? 0, i) }
                    else if let i = Int64(val), doubles[name] == nil, other[name] == nil { ints[name] = (ints[name] ?? 0) &+ i }
                    else if let d = Double(val), other[name] == nil { doubles[name] = max(doubles[name] ?? -Double.infinity, d); ints[name] = nil }
                    else if other[name] == nil { other[name] = val }
                }
            }
            if let calls = ints["calls"], let usec = ints["usec"], order.contains("usec_per_call") {
                doubles["usec_per_call"] = calls > 0 ? Double(usec) / Double(calls) : 0
                ints["usec_per_call"] = nil
            }
            return order.map { n in
                if let i = ints[n] { return "\(n)=\(i)" }
                if let d = doubles[n] { return "\(n)=\(format2(d))" }
                return "\(n)=\(other[n] ?? "")"
            }.joined(separator: ",")
        }
        return vs[0]
    }

    static func sumInts(_ vs: [String]) -> Int64? {
        var s: Int64 = 0
        for v in vs { guard let i = Int64(v) else { return nil }; s &+= i }
        return s
    }

    static func format2(_ d: Double) -> String {
        guard d.isFinite else { return "0.00" }
        let r = (d * 100).rounded() / 100
        var s = String(r)
        if let dot = s.firstIndex(of: ".") {
            let decimals = s.distance(from: dot, to: s.endIndex) - 1
            if decimals < 2 { s += String(repeating: "0", count: 2 - decimals) }
        } else { s += ".00" }
        return s
    }

    /// Redis's bytesToHuman: B, then K, M, G, T, P with two decimals.
    static func bytesToHuman(_ n: Int64) -> String {
        let units = ["K", "M", "G", "T", "P"]
        if n < 1024 { return "\(n)B" }
        var d = Double(n) / 1024
        for u in units {
            if d < 1024 || u == "P" { return format2(d) + u }
            d /= 1024
        }
        return "\(n)B"
    }

    // MARK: - Parsing

    /// A decimal without sign or leading junk, as Redis's cursor parser wants it.
    public static func parseUInt64(_ b: UnsafeRawBufferPointer) -> UInt64? {
        guard !b.isEmpty, b.count <= 20 else { return nil }
        var v: UInt64 = 0
        for c in b {
            guard c >= 0x30, c <= 0x39 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(c - 0x30))
            if o1 || o2 { return nil }
            v = s
        }
        return v
    }

    public static func parseUInt64(_ b: [UInt8]) -> UInt64? { b.withUnsafeBytes { parseUInt64($0) } }

    /// Reads RESP2 header lines and bulk payloads from a whole reply.
    struct Parser {
        let b: UnsafeRawBufferPointer
        var at = 0
        init(_ b: UnsafeRawBufferPointer) { self.b = b }

        /// `<prefix><integer>\r\n`.
        mutating func line(prefix: Character) -> Int64? {
            guard at < b.count, b[at] == prefix.asciiValue! else { return nil }
            var i = at + 1
            var neg = false
            if i < b.count && b[i] == UInt8(ascii: "-") { neg = true; i += 1 }
            var v: Int64 = 0
            let start = i
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39, i - start < 18 { v = v * 10 + Int64(b[i] - 0x30); i += 1 }
            guard i > start, i + 1 < b.count, b[i] == 0x0D, b[i + 1] == 0x0A else { return nil }
            at = i + 2
            return neg ? -v : v
        }

        /// `n` payload bytes followed by CRLF (which is consumed too).
        mutating func bytes(_ n: Int) -> UnsafeRawBufferPointer? {
            guard n >= 0, n <= b.count - at - 2, b[at + n] == 0x0D, b[at + n + 1] == 0x0A else { return nil }
            let r = UnsafeRawBufferPointer(rebasing: b[at..<(at + n)])
            at += n + 2
            return r
        }
    }
}
