import Common

/// How the replies of a split multi-key command are merged back into one.
public enum RedisMerge: Sendable, Equatable {
    /// MGET: one array, elements in the client's key order (a shard's error goes to each of its keys).
    case arrayInKeyOrder
    /// DEL, UNLINK, EXISTS, TOUCH: the sum of the shards' integers.
    case integerSum
    /// MSET: `+OK` once every shard said OK.
    case ok
}

/// How the replies of a command sent to every shard are merged.
public enum RedisFanOut: Sendable, Equatable {
    /// FLUSHALL, FLUSHDB, SCRIPT FLUSH: `+OK` when all said OK, else the first error.
    case allOK
    /// DBSIZE.
    case integerSum
    /// KEYS: the arrays concatenated.
    case arrayConcat
    /// SCAN: one shard at a time, the returned cursor encoding the shard.
    case scan
    /// INFO: aggregated, or one shard's on request.
    case info
    /// SCRIPT LOAD: every shard returns the same SHA1; return it.
    case sameReply
    /// SCRIPT EXISTS: element-wise, 1 only where every shard has the script.
    case arrayAllTrue
    /// RANDOMKEY: the first shard's non-nil answer.
    case firstNonNil
}

/// How the proxy handles a command.
public enum RedisCommandKind: Sendable, Equatable {
    /// One key, at this argument index: goes to that key's shard.
    case single(key: Int)
    /// EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, FCALL, FCALL_RO: `numkeys` at 2, keys from 3; routed
    /// by the first key (Envoy's and twemproxy's rule), any shard when there is none.
    case eval
    /// MGET, DEL, UNLINK, EXISTS, TOUCH (keys from 1, step 1), MSET (key/value pairs, step 2):
    /// split per shard, replies merged.
    case split(step: Int, merge: RedisMerge)
    /// Several keys (RENAME, SMOVE, SUNIONSTORE ...) that must all be on one shard, as Redis
    /// Cluster's CROSSSLOT rule; `last` < 0 counts from the end (-1: the last argument).
    case sameShard(first: Int, last: Int, step: Int)
    /// Keys after a count (ZUNIONSTORE dst 2 a b, SINTERCARD 2 a b): all on one shard.
    case sameShardNumkeys(countAt: Int, firstKey: Int)
    /// Sent to every shard, replies merged.
    case fanOut(RedisFanOut)
    /// TIME: any one shard.
    case anyShard
    /// Answered by the proxy itself (PING, ECHO, QUIT, SELECT, COMMAND, CLIENT SETNAME ..., HELLO, AUTH).
    case local
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: the connection is pinned to one shard.
    case transaction
    /// Blocking commands: unsupported until the next issue (they need a dedicated connection).
    case blocking
    /// Pub/sub: unsupported until the next issue.
    case pubsub
    /// Needs its subcommand looked up (CLIENT, SCRIPT, OBJECT ...): see `RedisCommands.lookup(subcommand:of:)`.
    case container
    /// Known to Redis, refused by the proxy (admin, replication, cluster, cross-database).
    case unsupported
    /// `HOST:` and `POST`: Redis treats them as a cross-protocol attack and closes the
    /// connection without a reply; so do we.
    case closeSilently
}

/// One entry of the command table (built once; never used on the hot path, which works with
/// `RedisCommandID`).
public struct RedisCommand: Sendable {
    /// Redis's full name, lowercase: `get`, `client|setname`. Used in stats and error replies.
    public let name: String
    /// Redis's arity, the name counted: n means exactly n arguments, -n at least n.
    public let arity: Int
    public let kind: RedisCommandKind

    init(_ name: String, _ arity: Int, _ kind: RedisCommandKind) {
        self.name = name; self.arity = arity; self.kind = kind
    }
}

/// A command's position in the table: a small integer, so per-request code (and per-command
/// stats arrays) need no String, dictionary or reference counting.
public struct RedisCommandID: Hashable, Sendable {
    public let index: Int16

    public var command: RedisCommand { RedisCommands.index.commands[Int(index)] }
    public var kind: RedisCommandKind { RedisCommands.index.kinds[Int(index)] }
    public var name: String { command.name }
    /// Never changes data (Redis's `readonly` flag).
    public var isReadOnly: Bool { RedisCommands.index.readOnly[Int(index)] }

    /// Whether `argCount` arguments (the name included) fit the arity, and for key/value pair
    /// commands (MSET, MSETNX) whether they come in pairs. Redis answers `wrongArityReply` otherwise.
    public func arityAccepts(_ argCount: Int) -> Bool {
        let arity = RedisCommands.index.arities[Int(index)]
        let fits = arity >= 0 ? argCount == arity : argCount >= -arity
        switch kind {
        case .split(step: 2, _), .sameShard(_, _, step: 2): return fits && argCount % 2 == 1
        default: return fits
        }
    }

    /// `-ERR wrong number of arguments for 'get' command` (Redis 7's text, full name for subcommands).
    public var wrongArityReply: [UInt8] { Array("-ERR wrong number of arguments for '\(name)' command\r\n".utf8) }

    /// `-ERR unsupported command 'name'` (the connection stays open; twemproxy closes it).
    public var unsupportedReply: [UInt8] { Array("-ERR unsupported command '\(name)'\r\n".utf8) }

    /// The argument indices holding keys, for `argCount` arguments. `integerAt` reads an
    /// argument as Redis's string2ll would (for `numkeys`); a missing or invalid count gives no
    /// keys (Redis answers the error itself). EVAL's keys are all returned; it is routed by the first.
    public func keys(argCount: Int, integerAt: (Int) -> Int64?) -> StrideTo<Int> {
        let none = stride(from: 0, to: 0, by: 1)
        func counted(_ countAt: Int, _ first: Int) -> StrideTo<Int> {
            guard countAt < argCount, let n = integerAt(countAt), n > 0 else { return none }
            return stride(from: first, to: min(argCount, first + Int(min(n, Int64(argCount)))), by: 1)
        }
        switch kind {
        case .single(let k): return k < argCount ? stride(from: k, to: k + 1, by: 1) : none
        case .eval: return counted(2, 3)
        case .split(let step, _): return stride(from: 1, to: argCount, by: step)
        case .sameShard(let first, let last, let step):
            let end = last < 0 ? argCount + last + 1 : min(last + 1, argCount)
            return first < end ? stride(from: first, to: end, by: step) : none
        case .sameShardNumkeys(let countAt, let first): return counted(countAt, first)
        default: return none
        }
    }
}

/// Case-insensitive lookup of command names straight from request bytes: an open-addressed
/// hash table over the lowercase names, built once. A lookup hashes the name (ASCII letters
/// folded), probes a few slots and compares bytes: no String, no allocation.
public enum RedisCommands {
    /// The table in lookup form; POD arrays so a lookup does no reference counting per entry.
    final class Index: Sendable {
        let commands: [RedisCommand]
        let kinds: [RedisCommandKind]
        let arities: [Int]
        let readOnly: [Bool]
        /// Lowercase names back to back, with their start offsets (count + 1 entries).
        let names: [UInt8]
        let starts: [Int32]
        /// Slot → command index, -1 for empty. Size a power of two, at most half full.
        let slots: [Int16]
        let mask: Int

        init(_ table: [RedisCommand]) {
            commands = table
            kinds = table.map(\.kind)
            arities = table.map(\.arity)
            readOnly = table.map { RedisCommands.readOnlyNames.contains($0.name) }
            var names: [UInt8] = [], starts: [Int32] = [0]
            for c in table { names += c.name.utf8; starts.append(Int32(names.count)) }
            self.names = names; self.starts = starts
            var size = 64
            while size < table.count * 2 { size *= 2 }
            mask = size - 1
            var slots = [Int16](repeating: -1, count: size)
            for (i, c) in table.enumerated() {
                let h = Array(c.name.utf8).withUnsafeBytes { RedisCommands.hash($0, seed: RedisCommands.seed) }
                var s = Int(h) & mask
                while slots[s] >= 0 { s = (s + 1) & mask }
                slots[s] = Int16(i)
            }
            self.slots = slots
        }
    }

    static let index = Index(RedisCommand.table)

    /// Commands Redis 7 flags `readonly` (they never change data): a mirror with
    /// `exclude_read_commands` skips them.
    static let readOnlyNames: Set<String> = [
        "get", "mget", "strlen", "getrange", "substr", "exists", "ttl", "pttl", "expiretime", "pexpiretime", "type",
        "keys", "scan", "randomkey", "dbsize", "dump", "lcs", "touch", "getbit", "bitcount", "bitpos", "bitfield_ro",
        "hget", "hmget", "hgetall", "hkeys", "hvals", "hlen", "hexists", "hstrlen", "hrandfield", "hscan",
        "lindex", "llen", "lrange", "lpos", "scard", "sismember", "smismember", "smembers", "srandmember", "sscan",
        "sinter", "sintercard", "sunion", "sdiff", "zcard", "zcount", "zlexcount", "zrange", "zrangebylex",
        "zrangebyscore", "zrank", "zrevrange", "zrevrangebylex", "zrevrangebyscore", "zrevrank", "zscore", "zmscore",
        "zscan", "zrandmember", "zinter", "zintercard", "zunion", "zdiff", "xlen", "xrange", "xrevrange", "xread",
        "xpending", "xinfo|stream", "xinfo|groups", "xinfo|consumers", "geodist", "geohash", "geopos", "georadius_ro",
        "georadiusbymember_ro", "geosearch", "pfcount", "eval_ro", "evalsha_ro", "fcall_ro", "sort_ro",
        "object|encoding", "object|freq", "object|idletime", "object|refcount", "memory|usage", "time", "ping", "echo",
        "info", "script|exists",
    ]
    static let seed: UInt32 = 2166136261

    /// Every command, for building per-command stats at config time (`redis.<prefix>.command.<name>.*`).
    public static var all: [RedisCommand] { index.commands }

    /// The command named by `name` (any case), or nil: Redis's `unknown command`.
    public static func lookup(_ name: UnsafeRawBufferPointer) -> RedisCommandID? {
        find(hash(name, seed: seed)) { equal(name, at: 0, $0) }
    }

    /// A container's subcommand (`CLIENT SETNAME` is `client|setname`), or nil: Redis's
    /// `unknown subcommand`.
    public static func lookup(subcommand: UnsafeRawBufferPointer, of container: RedisCommandID) -> RedisCommandID? {
        let idx = index
        let c = Int(container.index)
        let ps = Int(idx.starts[c]), plen = Int(idx.starts[c + 1]) - ps
        // The hash of "container|sub", continued from the container's stored (lowercase) name.
        var h = seed
        for i in 0..<plen { h = (h ^ UInt32(idx.names[ps + i])) &* 16777619 }
        h = (h ^ UInt32(UInt8(ascii: "|"))) &* 16777619
        h = hash(subcommand, seed: h)
        return find(h) { cand in
            let s = Int(idx.starts[cand]), e = Int(idx.starts[cand + 1])
            guard e - s == plen + 1 + subcommand.count, idx.names[s + plen] == UInt8(ascii: "|") else { return false }
            for i in 0..<plen where idx.names[s + i] != idx.names[ps + i] { return false }
            return equal(subcommand, at: plen + 1, cand)
        }
    }

    @inline(__always) static func fold(_ c: UInt8) -> UInt8 { c &- UInt8(ascii: "A") < 26 ? c | 0x20 : c }

    /// FNV-1a over the case-folded bytes.
    @inline(__always) static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt32) -> UInt32 {
        var h = seed
        for b in bytes { h = (h ^ UInt32(fold(b))) &* 16777619 }
        return h
    }

    /// Whether `name` (any case) equals command `cand`'s lowercase name from byte `at` on, to its end.
    @inline(__always) static func equal(_ name: UnsafeRawBufferPointer, at: Int, _ cand: Int) -> Bool {
        let idx = index
        let s = Int(idx.starts[cand]) + at, e = Int(idx.starts[cand + 1])
        guard e - s == name.count else { return false }
        for i in 0..<name.count where fold(name[i]) != idx.names[s + i] { return false }
        return true
    }

    @inline(__always) static func find(_ h: UInt32, _ matches: (Int) -> Bool) -> RedisCommandID? {
        let idx = index
        var s = Int(h) & idx.mask
        while true {
            let c = idx.slots[s]
            if c < 0 { return nil }
            if matches(Int(c)) { return RedisCommandID(index: c) }
            s = (s + 1) & idx.mask
        }
    }

    /// Redis 7's `-ERR unknown command 'name', with args beginning with: 'a' 'b' ` (each
    /// argument shown up to what fills 128 bytes, C strings so cut at a NUL; CR/LF as spaces).
    public static func unknownCommandReply(argCount: Int, argument: (Int) -> [UInt8]) -> [UInt8] {
        func cString(_ b: [UInt8], max: Int) -> [UInt8] { Array(b.prefix { $0 != 0 }.prefix(max)) }
        var args: [UInt8] = []
        var i = 1
        while i < argCount && args.count < 128 {
            args += [UInt8(ascii: "'")] + cString(argument(i), max: 128 - args.count) + Array("' ".utf8)
            i += 1
        }
        var text = Array("ERR unknown command '".utf8) + cString(argument(0), max: 128) + Array("', with args beginning with: ".utf8) + args
        for j in text.indices where text[j] == 0x0D || text[j] == 0x0A { text[j] = 0x20 }
        return [UInt8(ascii: "-")] + text + [0x0D, 0x0A]
    }

    /// Redis 7's `-ERR unknown subcommand 'x'. Try CLIENT HELP.`
    public static func unknownSubcommandReply(_ sub: [UInt8], of container: RedisCommandID) -> [UInt8] {
        var text = Array("ERR unknown subcommand '".utf8) + Array(sub.prefix { $0 != 0 }.prefix(128))
            + Array("'. Try \(container.name.uppercased()) HELP.".utf8)
        for j in text.indices where text[j] == 0x0D || text[j] == 0x0A { text[j] = 0x20 }
        return [UInt8(ascii: "-")] + text + [0x0D, 0x0A]
    }
}

/// twemproxy's `hash_tag` (two characters, e.g. "{}"): a key is hashed on the part between the
/// first opening character and the next closing character after it, when that part is
/// non-empty; otherwise (no opening, no closing after it, or an empty tag like `a{}b`) on the
/// whole key. Only the first opening character counts: `a{}{b}` hashes whole (nc_server.c's
/// server_pool_idx; Redis Cluster's rule is the same).
public struct HashTag: Sendable, Equatable {
    public let open: UInt8
    public let close: UInt8

    /// nil unless `spec` is exactly two bytes (twemproxy's config check).
    public init?(_ spec: String) {
        let b = Array(spec.utf8)
        guard b.count == 2 else { return nil }
        open = b[0]; close = b[1]
    }

    /// The bytes of `key` to hash.
    public func hashedPart(of key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard let start = key.firstIndex(of: open) else { return key }
        guard let end = key[(start + 1)...].firstIndex(of: close), end - start > 1 else { return key }
        return UnsafeRawBufferPointer(rebasing: key[(start + 1)..<end])
    }
}
