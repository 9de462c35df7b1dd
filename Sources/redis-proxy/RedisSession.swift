import Common
import RedisProtocol

/// The reply to one client request, filled by one or more upstream replies (a split MGET, a
/// fan-out) and merged. Slots leave the session's FIFO in request order, so a client's
/// replies keep its order even when its requests went to different shards.
final class ReplySlot {
    enum Merge {
        /// One upstream request: its reply as it came.
        case forward
        /// MGET split per key: an array of each key's reply (an error stays in its element).
        case array
        /// DEL, UNLINK, EXISTS, TOUCH per key, DBSIZE per shard: the sum (the first error wins).
        case sum
        /// MSET per key, FLUSHALL/FLUSHDB/SCRIPT FLUSH per shard: `+OK` (the first error wins).
        case allOK
        /// KEYS per shard: the arrays' elements together.
        case concat
        /// SCRIPT LOAD per shard: the one reply they all gave (else the first error).
        case same
        /// SCAN on one shard: its reply with the cursor re-encoded (`scanShard` of `scanShards`).
        case scan
        /// SCRIPT EXISTS per shard: 1 where every shard has the script.
        case allTrue
        /// RANDOMKEY per shard: a non-nil answer, from the shard at `pickStart` on.
        case firstNonNil
        /// INFO per shard: aggregated (`ReplyMerges.info`), the proxy's section after.
        case info

        /// Merges that keep each part's reply until all are in.
        var keepsParts: Bool { self == .array || self == .same || self == .allTrue || self == .firstNonNil || self == .info }
    }

    weak var session: RedisSession?
    let merge: Merge
    private(set) var done = false
    private var partsLeft: Int
    /// The finished reply.
    private(set) var bytes: [UInt8] = []
    private var parts: [[UInt8]] = []
    private var sum: Int64 = 0
    private var concatCount = 0
    private var firstError: [UInt8]?
    let startMs: UInt64
    /// The command, for its `command.<name>.*` stats (nil: not counted per command).
    var command: RedisCommandID?
    var scanShard = 0, scanShards = 1
    var pickStart = 0
    /// INFO: the proxy's own section, appended to the merged reply.
    var infoExtra = ""
    /// Counted when a part fails or is an error reply (mirrored copies).
    var errorStat: (StatsSlab, Counter)?

    init(session: RedisSession, merge: Merge, parts: Int) {
        self.session = session
        self.merge = merge
        partsLeft = parts
        if merge.keepsParts { self.parts = Array(repeating: [], count: parts) }
        startMs = monotonicMs()
    }

    /// Takes `parts` replies and drops them (a transaction's `+OK`/`+QUEUED`).
    init(discarding parts: Int) {
        session = nil
        merge = .sum
        partsLeft = parts
        startMs = 0
    }

    /// A reply made by the proxy itself.
    init(session: RedisSession, local: [UInt8]) {
        self.session = session
        merge = .forward
        partsLeft = 0
        bytes = local
        done = true
        startMs = 0
    }

    var isError: Bool { bytes.first == UInt8(ascii: "-") }

    func partReplied(_ part: Int, _ reply: UnsafeRawBufferPointer, _ r: RespReply) {
        guard !done else { return }
        if r.isError, let (slab, c) = errorStat { slab.inc(c) }
        switch merge {
        case .forward: bytes = Array(reply)
        case .array, .same, .allTrue, .firstNonNil, .info: parts[part] = Array(reply)
        case .scan: bytes = ReplyMerges.scanReply(reply, shard: scanShard, shards: scanShards)
        case .sum:
            if r.isError { if firstError == nil { firstError = Array(reply) } } else if r.type == .integer { sum &+= r.integer }
            else if firstError == nil { firstError = Array("-ERR redis-proxy: unexpected reply from a shard\r\n".utf8) }
        case .allOK:
            if r.isError || r.type != .status { if firstError == nil { firstError = Array(reply) } }
        case .concat:
            if r.isError || r.type != .array {
                if firstError == nil { firstError = r.isError ? Array(reply) : Array("-ERR redis-proxy: unexpected reply from a shard\r\n".utf8) }
            } else if let nl = reply.firstIndex(of: 0x0A) {
                concatCount += r.elementCount
                bytes += reply[(nl + 1)...]
            }
        }
        partDone()
    }

    func partFailed(_ part: Int, _ error: UnsafeRawBufferPointer) {
        guard !done else { return }
        if let (slab, c) = errorStat { slab.inc(c) }
        switch merge {
        case .forward, .scan: bytes = Array(error)
        case .array, .same, .allTrue, .firstNonNil, .info: parts[part] = Array(error)
        case .sum, .allOK, .concat: if firstError == nil { firstError = Array(error) }
        }
        partDone()
    }

    private func partDone() {
        partsLeft -= 1
        guard partsLeft == 0 else { return }
        switch merge {
        case .forward, .scan: break
        case .allTrue: bytes = ReplyMerges.allTrue(parts)
        case .firstNonNil: bytes = ReplyMerges.firstNonNil(parts, start: pickStart)
        case .info: bytes = ReplyMerges.info(parts, extra: infoExtra)
        case .array:
            bytes = Array("*\(parts.count)\r\n".utf8)
            for p in parts { bytes += p }
        case .sum: bytes = firstError ?? Array(":\(sum)\r\n".utf8)
        case .allOK: bytes = firstError ?? Array("+OK\r\n".utf8)
        case .concat: bytes = firstError ?? (Array("*\(concatCount)\r\n".utf8) + bytes)
        case .same:
            if let e = parts.first(where: { $0.first == UInt8(ascii: "-") }) { bytes = e }
            else if parts.allSatisfy({ $0 == parts[0] }) { bytes = parts[0] }
            else { bytes = Array("-ERR redis-proxy: the shards gave different replies\r\n".utf8) }
        }
        parts = []
        done = true
        session?.slotDone()
    }
}

/// One client connection: parses requests (RESP2 arrays and inline commands), answers what the
/// proxy answers itself, sends the rest to the key's shard (split per key or fanned out where
/// the command needs it), and returns replies in the client's order.
///
/// ```
/// client ─► RespRequestParser ─► command table ─┬─► local reply (PING, AUTH, CLIENT, HELLO, ...)
///                                               ├─► ShardSet.shard(key) ─► ShardConnection (pipelined)
///                                               └─► split / fan-out ─► several ShardConnections
/// client ◄── slots in request order ◄── ReplySlot (merge) ◄── replies matched in FIFO order
/// ```
final class RedisSession: ReadFilter, ConnectionCallbacks, ActiveSession {
    /// The listener block's config generation, its router, and the catch-all cluster's shards
    /// (keyless commands: fan-outs, SCAN, TIME). A reload that keeps the stat prefix moves an
    /// idle client (no transaction, no WATCH) to the new generation at its next read, so new
    /// routes and mirrors apply to connections that stay open (a migration must not split).
    private(set) var factory: RedisProxyFactory
    private(set) var router: RedisRouter
    private(set) var shards: ShardSet
    private let replies: ReplyFlushQueue
    private var generation: Int
    /// This client's connection lane to every shard (see `ShardSet.connection(forShard:lane:)`).
    private let lane: Int
    unowned(unsafe) let worker: Worker
    let connection: Connection
    let context: DownstreamContext
    private var parser: RespRequestParser
    private var slots: [ReplySlot] = []
    private var slotHead = 0
    private var authenticated: Bool
    private var clientName: [UInt8]?
    private var closing = false
    private var finished = false
    private var paused = false
    private var draining = false
    private let out: Buffer
    /// The read buffer's usual limit (the listener's buffer limit).
    private let defaultReadLimit: Int

    private var commandStats: CommandStatsCache

    init(factory: RedisProxyFactory, router: RedisRouter, commandStats: CommandStatsCache, worker: Worker, connection: Connection, context: DownstreamContext) {
        self.factory = factory
        self.router = router
        shards = router.catchAll.set
        replies = shards.replies
        generation = worker.snapshot?.generation ?? 0
        lane = Int(truncatingIfNeeded: context.connectionId & 0xFFFF)
        self.commandStats = commandStats
        self.worker = worker
        self.connection = connection
        self.context = context
        parser = RespRequestParser(limits: factory.config.limits)
        authenticated = factory.config.downstreamAuthPasswords.isEmpty
        parser.unauthenticated = !authenticated
        out = Buffer(pool: worker.blocks)
        defaultReadLimit = connection.readBufferLimit
        // Whole replies are written; `max_pipeline` and the read pause on the high watermark
        // bound what a client that does not read can hold.
        connection.hardWriteLimit = Int.max
    }

    /// A reload happened: take the listener's new block when nothing pins this client to the old
    /// one (a transaction, a WATCH, requests still on a client's own connection).
    private func adoptNewGeneration(_ g: Int) {
        guard txn == nil, watch == nil, pinned == nil || pinned!.conn.closed else { return }
        generation = g
        guard let f = worker.snapshot?.listeners[context.listener.name]?.factories.first as? RedisProxyFactory, f !== factory,
              f.config.statPrefix == factory.config.statPrefix else { return }
        let state = RedisWorkerState.of(worker)
        factory = f
        router = state.router(worker, f)
        shards = router.catchAll.set
        commandStats = state.commandStats(f.stats)
    }

    private var stats: RedisProxyStats { factory.stats }
    private var inFlight: Int { slots.count - slotHead }

    // MARK: - Requests

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        guard !closing else { buffer.drain(buffer.count); return .stopIteration }
        if let g = worker.snapshot?.generation, g != generation { adoptNewGeneration(g) }
        dispatchingData = true
        defer { dispatchingData = false }
        while !closing {
            if inFlight >= factory.config.maxPipeline {
                if !paused { paused = true; connection.readDisable() }
                break
            }
            if replies.congested > 0 {
                if !pausedForUpstream { pausedForUpstream = true; connection.readDisable(); replies.waitForCongestion(self) }
                break
            }
            let input = buffer.readable
            switch parser.parse(input) {
            case .incomplete:
                if endStream { closing = true }
                // A request bigger than the read buffer's limit: read on until it is whole
                // (up to max_request_bytes, which the parser enforces).
                if buffer.count >= defaultReadLimit && connection.readBufferLimit == defaultReadLimit {
                    connection.readBufferLimit = max(defaultReadLimit, factory.config.limits.maxRequestBytes + 64 * 1024)
                    connection.continueReading()
                }
                dispatchingData = false
                flushReplies()
                return .stopIteration
            case .ignored(let n):
                buffer.drain(n)
            case .error(let e):
                worker.stats.inc(stats.downstreamCxProtocolError)
                if let c = stats.protocolErrors[e.statName] { worker.stats.inc(c) }
                addLocal(e.reply)
                buffer.drain(buffer.count)
                closing = true
            case .request(let r):
                handle(r, input)
                buffer.drain(r.range.upperBound)
                if connection.readBufferLimit != defaultReadLimit && buffer.count < defaultReadLimit {
                    connection.readBufferLimit = defaultReadLimit
                }
            }
        }
        dispatchingData = false
        flushReplies()
        return .stopIteration
    }

    private func argument(_ i: Int, _ input: UnsafeRawBufferPointer) -> [UInt8] {
        parser.withArgument(i, in: input) { Array($0) }
    }

    /// The command being handled: its slots count in its `command.<name>.*` stats.
    private var currentCommand: RedisCommandID?

    private func handle(_ r: RespRequest, _ input: UnsafeRawBufferPointer) {
        worker.stats.inc(stats.downstreamRqTotal)
        let n = r.argCount
        currentCommand = nil
        guard let id = parser.withArgument(0, in: input, { RedisCommands.lookup($0) }) else {
            worker.stats.inc(stats.downstreamRqUnknown)
            txn?.failed = true
            addLocal(RedisCommands.unknownCommandReply(argCount: n) { argument($0, input) })
            return
        }
        var cmd = id
        if case .container = id.kind {
            guard n >= 2 else { txn?.failed = true; addLocal(id.wrongArityReply); return }
            guard let sub = parser.withArgument(1, in: input, { RedisCommands.lookup(subcommand: $0, of: id) }) else {
                txn?.failed = true
                addLocal(RedisCommands.unknownSubcommandReply(argument(1, input), of: id))
                return
            }
            cmd = sub
        }
        currentCommand = cmd
        guard cmd.arityAccepts(n) else { txn?.failed = true; addLocal(cmd.wrongArityReply); return }
        if !authenticated && !["auth", "hello", "quit"].contains(cmd.name) {
            addLocal(Array("-NOAUTH Authentication required.\r\n".utf8))
            return
        }
        if case .transaction = cmd.kind { return transaction(r, cmd, n, input) }
        if let t = txn { return queue(r, cmd, n, input, t) }
        switch cmd.kind {
        case .local:
            local(cmd, n, input)
        case .anyShard:
            guard let shard = shards.anyShard() else { return noUpstream() }
            forward(r, input, shard: shard)
        case .single(let k):
            guard k < n else { addLocal(cmd.wrongArityReply); return }
            if router.simple {
                guard let shard = parser.withArgument(k, in: input, { shards.shard(forKey: $0) }) else { return noUpstream() }
                forward(r, input, shard: shard)
            } else {
                forward(r, input, target([k], input), cmd, keys: [k])
            }
        case .eval:
            let numkeys = parser.withArgument(2, in: input) { Int(String(decoding: $0, as: UTF8.self)) } ?? -1
            guard numkeys >= 0, numkeys <= n - 3 else {
                addLocal(Array((numkeys < 0 ? "-ERR value is not an integer or out of range\r\n"
                                            : "-ERR Number of keys can't be greater than number of args\r\n").utf8))
                return
            }
            let keys = Array(3..<(3 + numkeys))
            if numkeys == 0 {
                guard let shard = shards.anyShard() else { return noUpstream() }
                return forward(r, input, shard: shard)
            }
            forward(r, input, target(keys, input), cmd, keys: keys)
        case .sameShard(let first, let last, let step):
            let end = last < 0 ? n + last : last
            guard first < n, end >= first else { addLocal(cmd.wrongArityReply); return }
            let keys = Array(stride(from: first, through: end, by: step))
            forward(r, input, target(keys, input), cmd, keys: keys)
        case .sameShardNumkeys(let countAt, let firstKey):
            let count = parser.withArgument(countAt, in: input) { Int(String(decoding: $0, as: UTF8.self)) } ?? -1
            // `count <= n - firstKey`, not `firstKey + count <= n`: a client's count near Int.max
            // must not overflow (review of issue 10: that trapped the whole proxy).
            guard count > 0, count <= n - firstKey else {
                addLocal(Array((count > 0 ? "-ERR Number of keys can't be greater than number of args\r\n"
                                          : "-ERR numkeys should be greater than 0\r\n").utf8))
                return
            }
            var keys = Array(firstKey..<(firstKey + count))
            if firstKey > countAt + 1 { keys.insert(1, at: 0) }  // a destination key before the count
            forward(r, input, target(keys, input), cmd, keys: keys)
        case .split(let step, let merge):
            split(cmd, n, step: step, merge: merge, input)
        case .fanOut(let f):
            fanOut(r, n, input, f, cmd)
        case .blocking, .pubsub, .unsupported, .container, .local, .transaction:
            worker.stats.inc(stats.downstreamRqUnsupported)
            addLocal(cmd.unsupportedReply)
        case .closeSilently:
            closing = true
            connection.close()
            finish()
        }
    }

    /// Where a command with keys goes: a route (-1: the catch-all) and a shard of its cluster.
    private enum ShardPick: Equatable { case target(route: Int, shard: Int), none, cross }

    /// The one route and shard of every key at `indices`: `.none` when a key's shard is not
    /// live, `.cross` when they differ (Redis Cluster's CROSSSLOT rule; two prefix routes count
    /// as two places). A route that removes its prefix hashes the key without it.
    private func target(_ indices: [Int], _ input: UnsafeRawBufferPointer) -> ShardPick {
        var pick: ShardPick?
        for i in indices {
            let p: ShardPick = parser.withArgument(i, in: input) { key in
                let ri = router.route(key)
                let rt = router.at(ri)
                return rt.set.shard(forKey: rt.stripped(key)).map { .target(route: ri, shard: $0) } ?? .none
            }
            if p == .none { return .none }
            if let prev = pick, prev != p { return .cross }
            pick = p
        }
        return pick ?? .none
    }

    /// A request with keys at `keys` to its route's shard, keys without the route's prefix when
    /// it removes it, and a copy to each of the route's mirrors (reads skipped where a mirror
    /// excludes them; a multi-key command goes to its first key's shard there).
    private func forward(_ r: RespRequest, _ input: UnsafeRawBufferPointer, _ pick: ShardPick, _ cmd: RedisCommandID, keys: [Int]) {
        switch pick {
        case .none: return noUpstream()
        case .cross: return crossSlot()
        case .target(let ri, let shard):
            let rt = router.at(ri)
            sendToShard(shard, of: rt.set, ReplySlot(session: self, merge: .forward, parts: 1)) { b, p in
                RedisSession.write(r, input, p, route: rt, keys: keys, into: b)
            }
            guard !rt.mirrors.isEmpty, let first = keys.first else { return }
            let p = parser
            mirror(rt, cmd, key: first, input) { b in RedisSession.write(r, input, p, route: rt, keys: keys, into: b) }
        }
    }

    /// A copy of a request to each mirror of `route`; its reply is dropped.
    private func mirror(_ route: RedisRouter.Route, _ cmd: RedisCommandID, key k: Int, _ input: UnsafeRawBufferPointer, _ write: (Buffer) -> Void) {
        for m in route.mirrors where !(m.excludeReads && cmd.isReadOnly) {
            let shard = parser.withArgument(k, in: input) { m.set.shard(forKey: route.stripped($0)) }
            guard let shard, let c = m.set.connection(forShard: shard, lane: lane) else {
                worker.stats.inc(stats.mirrorFailed)
                continue
            }
            worker.stats.inc(stats.mirrorTotal)
            let slot = ReplySlot(discarding: 1)
            slot.errorStat = (worker.stats, stats.mirrorError)
            c.send(RedisOp(slot: slot, part: 0, deadlineMs: deadline()), write)
        }
    }

    /// The request's bytes: as the client sent them, or re-encoded (inline requests, keys
    /// without a removed prefix).
    static func write(_ r: RespRequest, _ input: UnsafeRawBufferPointer, _ p: RespRequestParser, route: RedisRouter.Route, keys: [Int], into b: Buffer) {
        if route.strip == 0 {
            if r.isInline { p.writeMultibulk(argCount: r.argCount, in: input, into: b) }
            else { b.append(UnsafeRawBufferPointer(rebasing: input[r.range])) }
            return
        }
        RespWriter.arrayHeader(r.argCount, into: b)
        for i in 0..<r.argCount {
            p.withArgument(i, in: input) { a in
                RespWriter.bulk(keys.contains(i) ? route.stripped(a) : a, into: b)
            }
        }
    }

    private func noUpstream() {
        worker.stats.inc(stats.downstreamRqNoUpstream)
        addLocal(Array("-ERR redis-proxy: no upstream host\r\n".utf8))
    }

    private func crossSlot() {
        worker.stats.inc(stats.downstreamRqCrossSlot)
        addLocal(Array("-CROSSSLOT Keys in request don't hash to the same shard\r\n".utf8))
    }

    private func deadline() -> UInt64 {
        factory.config.opTimeoutMs == 0 ? 0 : monotonicMs() &+ factory.config.opTimeoutMs
    }

    /// The whole request to one shard, as the client's bytes (inline requests re-encoded).
    private func forward(_ r: RespRequest, _ input: UnsafeRawBufferPointer, shard: Int) {
        sendToShard(shard, of: shards, ReplySlot(session: self, merge: .forward, parts: 1)) { b, p in
            if r.isInline { p.writeMultibulk(argCount: r.argCount, in: input, into: b) }
            else { b.append(UnsafeRawBufferPointer(rebasing: input[r.range])) }
        }
    }

    /// MGET/DEL/UNLINK/EXISTS/TOUCH per key, MSET per pair (as Envoy splits them), merged.
    private func split(_ cmd: RedisCommandID, _ n: Int, step: Int, merge: RedisMerge, _ input: UnsafeRawBufferPointer) {
        let count = (n - 1) / step
        let m: ReplySlot.Merge = switch merge { case .arrayInKeyOrder: .array; case .integerSum: .sum; case .ok: .allOK }
        let slot = ReplySlot(session: self, merge: m, parts: count)
        addSlot(slot)
        let verb: [UInt8] = merge == .arrayInKeyOrder ? Array("GET".utf8) : (merge == .ok ? Array("SET".utf8) : Array(cmd.name.uppercased().utf8))
        let dl = deadline()
        for part in 0..<count {
            let k = 1 + part * step
            let ri = router.simple ? -1 : parser.withArgument(k, in: input) { router.route($0) }
            let rt = router.at(ri)
            let shard = parser.withArgument(k, in: input) { rt.set.shard(forKey: rt.stripped($0)) }
            let p = parser
            let write = { (b: Buffer) in
                RespWriter.arrayHeader(step + 1, into: b)
                RespWriter.bulk(verb, into: b)
                for j in 0..<step {
                    p.withArgument(k + j, in: input) { a in RespWriter.bulk(j == 0 ? rt.stripped(a) : a, into: b) }
                }
            }
            if !rt.mirrors.isEmpty { mirror(rt, cmd, key: k, input, write) }
            guard let shard, let c = upstream(rt.set, shard) else {
                let e = shard == nil ? Array("-ERR redis-proxy: no upstream host\r\n".utf8) : ShardFailure.connectFailed.reply
                e.withUnsafeBytes { slot.partFailed(part, $0) }
                continue
            }
            c.send(RedisOp(slot: slot, part: part, deadlineMs: dl), write)
        }
    }

    /// Commands for every shard (FLUSHALL, DBSIZE, KEYS, INFO, SCRIPT LOAD/EXISTS/FLUSH,
    /// RANDOMKEY), merged; SCAN one shard at a time; `INFO SHARD <shard> [section ...]` to one.
    private func fanOut(_ r: RespRequest, _ n: Int, _ input: UnsafeRawBufferPointer, _ f: RedisFanOut, _ cmd: RedisCommandID) {
        let m: ReplySlot.Merge
        switch f {
        case .allOK: m = .allOK
        case .integerSum: m = .sum
        case .arrayConcat: m = .concat
        case .sameReply: m = .same
        case .arrayAllTrue: m = .allTrue
        case .firstNonNil: m = .firstNonNil
        case .scan: return scan(n, input, cmd)
        case .info:
            if n >= 3 && lowered(argument(1, input)) == "shard" {
                return toShard(named: argument(2, input), verb: "INFO", args: 3..<n, input, cmd)
            }
            m = .info
        }
        let count = shards.shardCount
        guard count > 0 else { return noUpstream() }
        let slot = ReplySlot(session: self, merge: m, parts: count)
        if m == .firstNonNil { slot.pickStart = Int(truncatingIfNeeded: shards.rng.next() % UInt64(count)) }
        if m == .info {
            let sections = (1..<n).map { lowered(argument($0, input)) }
            if sections.isEmpty || sections.contains(where: { ["all", "everything", "default", "proxy"].contains($0) }) {
                slot.infoExtra = "# Proxy\r\nproxy:redis-proxy\r\nproxy_version:\(toolkitVersion)\r\nshards:\(count)\r\n"
            }
        }
        addSlot(slot)
        let dl = deadline()
        let p = parser
        for shard in 0..<count {
            guard let c = upstream(shards, shard) else {
                ShardFailure.connectFailed.reply.withUnsafeBytes { slot.partFailed(shard, $0) }
                continue
            }
            c.send(RedisOp(slot: slot, part: shard, deadlineMs: dl)) { b in
                if r.isInline { p.writeMultibulk(argCount: r.argCount, in: input, into: b) }
                else { b.append(UnsafeRawBufferPointer(rebasing: input[r.range])) }
            }
        }
    }

    private func lowered(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self).lowercased() }

    /// A client's bytes quoted in an error reply: at most 128, control bytes as spaces (a CR or
    /// LF would end the reply early and let the client forge the next one).
    private func printable(_ b: [UInt8]) -> [UInt8] { b.prefix(128).map { $0 < 0x20 || $0 == 0x7F ? 0x20 : $0 } }

    /// SCAN over every shard in turn: the client's cursor names the shard and that shard's own
    /// cursor (`ReplyMerges.decodeScanCursor`); the reply's cursor leads to the next shard when
    /// one is done, and is 0 after the last. MATCH, COUNT and TYPE pass through.
    private func scan(_ n: Int, _ input: UnsafeRawBufferPointer, _ cmd: RedisCommandID) {
        let count = shards.shardCount
        guard count > 0 else { return noUpstream() }
        guard let (shard, cursor) = parser.withArgument(1, in: input, { ReplyMerges.decodeScanCursor($0, shards: count) }) else {
            addLocal(Array("-ERR invalid cursor\r\n".utf8))
            return
        }
        let slot = ReplySlot(session: self, merge: .scan, parts: 1)
        slot.scanShard = shard
        slot.scanShards = count
        sendToShard(shard, of: shards, slot) { b, p in
            RespWriter.arrayHeader(n, into: b)
            RespWriter.bulk(Array("SCAN".utf8), into: b)
            RespWriter.bulk(Array(String(cursor).utf8), into: b)
            for i in 2..<max(n, 2) { p.withArgument(i, in: input) { RespWriter.bulk($0, into: b) } }
        }
    }

    /// `PING SHARD <shard>`, `INFO SHARD <shard> [section ...]`: one shard, named by its index
    /// (0-based, in config order), its `name`/hash key, or its address.
    private func toShard(named id: [UInt8], verb: String, args: Range<Int>, _ input: UnsafeRawBufferPointer, _ cmd: RedisCommandID) {
        guard let shard = shards.shardIndex(named: id) else {
            addLocal(Array("-ERR redis-proxy: no shard named '".utf8) + printable(id) + Array("'\r\n".utf8))
            return
        }
        let slot = ReplySlot(session: self, merge: .forward, parts: 1)
        sendToShard(shard, of: shards, slot) { b, p in
            RespWriter.arrayHeader(1 + args.count, into: b)
            RespWriter.bulk(Array(verb.utf8), into: b)
            for i in args { p.withArgument(i, in: input) { RespWriter.bulk($0, into: b) } }
        }
    }

    /// The connection for this client's requests to `shard` of `set`: its WATCH connection, or
    /// the one it used for WATCH until that has sent everything queued on it (commands after
    /// EXEC must not overtake it: review of issue 10), else its lane of the shared ones.
    private func upstream(_ set: ShardSet, _ shard: Int) -> ShardConnection? {
        if let w = watch, w.set === set, w.shard == shard, !w.conn.closed { return w.conn }
        if let p = pinned, p.set === set, p.shard == shard, !p.conn.closed { return p.conn }
        return set.connection(forShard: shard, lane: lane)
    }

    /// One request to one shard of `set` for `slot` (added here), written by `write`.
    private func sendToShard(_ shard: Int, of set: ShardSet, _ slot: ReplySlot, _ write: (Buffer, RespRequestParser) -> Void) {
        addSlot(slot)
        guard let c = upstream(set, shard) else {
            ShardFailure.connectFailed.reply.withUnsafeBytes { slot.partFailed(0, $0) }
            return
        }
        let p = parser
        c.send(RedisOp(slot: slot, part: 0, deadlineMs: deadline())) { write($0, p) }
    }

    // MARK: - Transactions

    /// MULTI ... EXEC on one shard. The proxy queues the commands itself (`+QUEUED`, after
    /// checking each one's keys are on the transaction's shard) and at EXEC writes MULTI, the
    /// commands and EXEC to that shard in one go on one connection: Redis runs a connection's
    /// commands in order, so nothing of another client comes between them, and only EXEC's
    /// reply goes back. A command on another shard (or one the proxy cannot queue) fails the
    /// transaction as Redis fails one with a bad command: EXEC answers `-EXECABORT` and nothing
    /// reaches any shard.
    ///
    /// WATCH needs the watched keys' shard to see WATCH, the reads after it and EXEC on one
    /// connection: the first WATCH opens a connection of this client's own to that shard
    /// (every key of every WATCH on that one shard, else `-CROSSSLOT`), the client's commands
    /// for that shard use it until EXEC, DISCARD or UNWATCH, and then it closes (which is what
    /// unwatches). If it is lost before EXEC, EXEC answers a nil array, as Redis does when a
    /// watched key changed, so clients retry the transaction as they would then.
    final class Transaction {
        /// Where every key so far goes (route -1: the catch-all).
        var route = -1
        var shard: Int?
        let commands: Buffer
        var count = 0
        var failed = false
        init(_ b: Buffer) { commands = b }
    }
    private var txn: Transaction?
    /// The WATCH connection: this client's own, to `shard` of `set` (route `route`).
    private var watch: (route: Int, set: ShardSet, shard: Int, conn: ShardConnection)?
    /// The last WATCH connection after EXEC, DISCARD or UNWATCH: it closes once its queue is
    /// answered, and until then takes this client's requests for its shard, in order.
    private var pinned: (route: Int, set: ShardSet, shard: Int, conn: ShardConnection)?

    private func endWatch() {
        guard let w = watch else { return }
        watch = nil
        w.conn.closeWhenIdle()
        if !w.conn.closed { pinned = w }
    }

    private func transaction(_ r: RespRequest, _ cmd: RedisCommandID, _ n: Int, _ input: UnsafeRawBufferPointer) {
        switch cmd.name {
        case "multi":
            if txn != nil { addLocal(Array("-ERR MULTI calls can not be nested\r\n".utf8)); return }
            txn = Transaction(Buffer(pool: worker.blocks))
            txn?.shard = watch?.shard
            txn?.route = watch?.route ?? -1
            addLocal(Array("+OK\r\n".utf8))
        case "discard":
            guard let t = txn else { addLocal(Array("-ERR DISCARD without MULTI\r\n".utf8)); return }
            t.commands.release()
            txn = nil
            endWatch()
            addLocal(Array("+OK\r\n".utf8))
        case "exec":
            guard let t = txn else { addLocal(Array("-ERR EXEC without MULTI\r\n".utf8)); return }
            txn = nil
            let w = watch
            defer { endWatch() }
            if t.failed {
                t.commands.release()
                addLocal(Array("-EXECABORT Transaction discarded because of previous errors.\r\n".utf8))
                return
            }
            if let w, w.conn.closed { t.commands.release(); addLocal(Array("*-1\r\n".utf8)); return }
            if t.count == 0 && w == nil { t.commands.release(); addLocal(Array("*0\r\n".utf8)); return }
            let set = router.at(t.route).set
            guard let shard = t.shard ?? set.anyShard(), let c = w?.conn ?? upstream(set, shard) else {
                t.commands.release()
                return noUpstream()
            }
            let slot = ReplySlot(session: self, merge: .forward, parts: 1)
            addSlot(slot)
            let dl = deadline()
            // MULTI's and each command's `+OK`/`+QUEUED` go to a slot nobody reads.
            let ignored = ReplySlot(discarding: t.count + 1)
            c.send(RedisOp(slot: ignored, part: 0, deadlineMs: dl)) { RespWriter.arrayHeader(1, into: $0); RespWriter.bulk(Array("MULTI".utf8), into: $0) }
            for i in 0..<t.count {
                c.send(RedisOp(slot: ignored, part: i + 1, deadlineMs: dl)) { b in if i == 0 { b.moveAll(from: t.commands) } }
            }
            t.commands.release()
            c.send(RedisOp(slot: slot, part: 0, deadlineMs: dl)) { RespWriter.arrayHeader(1, into: $0); RespWriter.bulk(Array("EXEC".utf8), into: $0) }
        case "unwatch":
            // Inside MULTI it is queued like any command (harmless on a shared connection).
            if let t = txn { return queue(r, cmd, n, input, t) }
            endWatch()
            addLocal(Array("+OK\r\n".utf8))
        default:  // watch
            guard txn == nil else { addLocal(Array("-ERR WATCH inside MULTI is not allowed\r\n".utf8)); return }
            let keys = Array(1..<n)
            let pick = target(keys, input)
            guard case .target(let ri, let s) = pick else { return forward(r, input, pick, cmd, keys: keys) }
            if let w = watch, w.route != ri || w.shard != s { return crossSlot() }
            let set = router.at(ri).set
            if watch == nil, let p = pinned, p.set === set, p.shard == s, !p.conn.closed {
                p.conn.keep()  // the previous WATCH's connection, still sending: in order
                watch = p
                pinned = nil
            }
            if watch == nil {
                guard let c = set.dedicatedConnection(forShard: s) else {
                    addLocal(ShardFailure.connectFailed.reply)
                    return
                }
                watch = (ri, set, s, c)
            }
            guard let w = watch, !w.conn.closed else {
                addLocal(Array("-ERR redis-proxy: the WATCH connection to the shard was lost; EXEC will fail\r\n".utf8))
                return
            }
            let rt = router.at(ri)
            sendToShard(s, of: set, ReplySlot(session: self, merge: .forward, parts: 1)) { b, p in
                RedisSession.write(r, input, p, route: rt, keys: keys, into: b)
            }
        }
    }

    /// A command inside MULTI: checked, kept for EXEC, answered `+QUEUED`.
    private func queue(_ r: RespRequest, _ cmd: RedisCommandID, _ n: Int, _ input: UnsafeRawBufferPointer, _ t: Transaction) {
        var keys: [Int] = []
        switch cmd.kind {
        case .single(let k): keys = [k]
        case .eval:
            let numkeys = parser.withArgument(2, in: input) { Int(String(decoding: $0, as: UTF8.self)) } ?? -1
            if numkeys > 0 && numkeys <= n - 3 { keys = Array(3..<(3 + numkeys)) }
        case .sameShard(let first, let last, let step):
            let end = last < 0 ? n + last : last
            if first < n && end >= first { keys = Array(stride(from: first, through: end, by: step)) }
        case .sameShardNumkeys(let countAt, let firstKey):
            let count = parser.withArgument(countAt, in: input) { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
            if count > 0 && count <= n - firstKey { keys = Array(firstKey..<(firstKey + count)) + (firstKey > countAt + 1 ? [1] : []) }
        case .split(let step, _): keys = Array(stride(from: 1, to: n, by: step))
        case .anyShard: keys = []
        case .local where cmd.name == "ping" || cmd.name == "echo": keys = []
        case .transaction where cmd.name == "unwatch": keys = []
        case .local where cmd.name == "quit":
            // Redis closes at once; the transaction goes with the connection.
            addLocal(Array("+OK\r\n".utf8))
            closing = true
            return
        default:
            t.failed = true
            worker.stats.inc(stats.downstreamRqUnsupported)
            addLocal(Array("-ERR redis-proxy: '\(cmd.name)' cannot be part of a transaction\r\n".utf8))
            return
        }
        if !keys.isEmpty {
            switch target(keys, input) {
            case .none: t.failed = true; return noUpstream()
            case .cross: t.failed = true; return crossSlot()
            case .target(let ri, let s):
                if let ts = t.shard, ts != s || t.route != ri { t.failed = true; return crossSlot() }
                t.shard = s
                t.route = ri
            }
        }
        if t.commands.count + r.range.count > factory.config.limits.maxRequestBytes {
            t.failed = true
            addLocal(Array("-ERR redis-proxy: transaction too large\r\n".utf8))
            return
        }
        RedisSession.write(r, input, parser, route: router.at(t.route), keys: keys, into: t.commands)
        t.count += 1
        addLocal(Array("+QUEUED\r\n".utf8))
    }

    // MARK: - Commands the proxy answers

    private func local(_ cmd: RedisCommandID, _ n: Int, _ input: UnsafeRawBufferPointer) {
        let arg = { (i: Int) in self.argument(i, input) }
        switch cmd.name {
        case "ping":
            if n == 3 && lowered(arg(1)) == "shard" { return toShard(named: arg(2), verb: "PING", args: 0..<0, input, cmd) }
            guard n <= 2 else { addLocal(cmd.wrongArityReply); return }
            addLocal(n == 1 ? Array("+PONG\r\n".utf8) : bulk(arg(1)))
        case "echo":
            addLocal(bulk(arg(1)))
        case "quit":
            addLocal(Array("+OK\r\n".utf8))
            closing = true
        case "select":
            addLocal(Array((arg(1) == Array("0".utf8) ? "+OK\r\n" : "-ERR DB index is out of range (redis-proxy serves database 0)\r\n").utf8))
        case "command":
            if n >= 2 && lowered(arg(1)) == "count" { addLocal(Array(":\(RedisCommands.all.count)\r\n".utf8)) }
            else { addLocal(Array("*0\r\n".utf8)) }
        case "client|setname", "client|setinfo":
            if cmd.name == "client|setname" {
                let name = arg(2)
                if name.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) {
                    addLocal(Array("-ERR Client names cannot contain spaces, newlines or special characters.\r\n".utf8))
                    return
                }
                clientName = name.isEmpty ? nil : name
            }
            addLocal(Array("+OK\r\n".utf8))
        case "client|getname":
            addLocal(clientName.map(bulk) ?? Array("$-1\r\n".utf8))
        case "client|id":
            addLocal(Array(":\(context.connectionId)\r\n".utf8))
        case "auth":
            auth(user: n == 3 ? arg(1) : nil, password: arg(n - 1))
        case "hello":
            hello(n, arg)
        default:
            worker.stats.inc(stats.downstreamRqUnsupported)
            addLocal(cmd.unsupportedReply)
        }
    }

    private func bulk(_ b: [UInt8]) -> [UInt8] { Array("$\(b.count)\r\n".utf8) + b + [0x0D, 0x0A] }

    /// AUTH [username] password against `downstream_auth_passwords` (and the username when one
    /// is configured; "default" otherwise, as Redis's ACL default user).
    @discardableResult
    private func auth(user: [UInt8]?, password: [UInt8], reply: Bool = true) -> Bool {
        let c = factory.config
        guard !c.downstreamAuthPasswords.isEmpty else {
            // No password: the default user is `nopass`, as in Redis: AUTH default <anything>
            // passes, another user fails, the one-argument form is an error.
            if let user {
                if String(decoding: user, as: UTF8.self) == "default" { if reply { addLocal(Array("+OK\r\n".utf8)) }; return true }
                worker.stats.inc(stats.downstreamAuthFailed)
                if reply { addLocal(Array("-WRONGPASS invalid username-password pair or user is disabled.\r\n".utf8)) }
                return false
            }
            if reply {
                addLocal(Array("-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n".utf8))
            }
            return false
        }
        let userOK = user.map { String(decoding: $0, as: UTF8.self) == (c.downstreamAuthUsername ?? "default") } ?? (c.downstreamAuthUsername == nil)
        let passOK = c.downstreamAuthPasswords.contains { constantTimeEqual(Array($0.utf8), password) }
        if userOK && passOK {
            authenticated = true
            parser.unauthenticated = false
            if reply { addLocal(Array("+OK\r\n".utf8)) }
            return true
        }
        worker.stats.inc(stats.downstreamAuthFailed)
        if reply { addLocal(Array("-WRONGPASS invalid username-password pair or user is disabled.\r\n".utf8)) }
        return false
    }

    /// HELLO [2 [AUTH user pass] [SETNAME name]]: RESP2 only until RESP3 comes (`-NOPROTO`).
    /// Every option is checked before any takes effect, as Redis does: a syntax error after
    /// AUTH authenticates nobody.
    private func hello(_ n: Int, _ arg: (Int) -> [UInt8]) {
        if n >= 2 {
            let v = String(decoding: arg(1), as: UTF8.self)
            guard let proto = Int(v) else { addLocal(Array("-ERR Protocol version is not an integer or out of range\r\n".utf8)); return }
            guard proto == 2 else { addLocal(Array("-NOPROTO unsupported protocol version\r\n".utf8)); return }
        }
        var credentials: (user: [UInt8], password: [UInt8])?
        var name: [UInt8]?
        var i = 2
        while i < n {
            let opt = lowered(arg(i))
            if opt == "auth" && i + 2 < n {
                credentials = (arg(i + 1), arg(i + 2))
                i += 3
            } else if opt == "setname" && i + 1 < n {
                name = arg(i + 1)
                i += 2
            } else {
                addLocal(Array("-ERR Syntax error in HELLO option '".utf8) + printable(Array(opt.utf8)) + Array("'\r\n".utf8))
                return
            }
        }
        if let name, name.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) {
            addLocal(Array("-ERR Client names cannot contain spaces, newlines or special characters.\r\n".utf8))
            return
        }
        if let c = credentials, !auth(user: c.user, password: c.password, reply: false) {
            addLocal(Array("-WRONGPASS invalid username-password pair or user is disabled.\r\n".utf8))
            return
        }
        guard authenticated else {
            addLocal(Array("-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n".utf8))
            return
        }
        if let name { clientName = name.isEmpty ? nil : name }
        var b = Array("*14\r\n".utf8)
        for s in ["server", "redis", "version", "7.0.0", "proto"] { b += bulk(Array(s.utf8)) }
        b += Array(":2\r\n".utf8)
        b += bulk(Array("id".utf8)) + Array(":\(context.connectionId)\r\n".utf8)
        for s in ["mode", "proxy", "role", "master", "modules"] { b += bulk(Array(s.utf8)) }
        b += Array("*0\r\n".utf8)
        addLocal(b)
    }

    // MARK: - Replies in order

    private func addLocal(_ bytes: [UInt8]) {
        addSlot(ReplySlot(session: self, local: bytes))
    }

    private func addSlot(_ s: ReplySlot) {
        s.command = currentCommand
        slots.append(s)
        worker.stats.inc(stats.downstreamRqActive)
    }

    /// A slot finished. Inside this session's own read the flush comes at its end; otherwise
    /// (a shard's reply) the shard set flushes every touched session once its read is done, so
    /// replies that arrive together leave in one write.
    func slotDone() {
        if dispatchingData || flushQueued { return }
        flushQueued = true
        replies.add(self)
    }

    private var dispatchingData = false
    var flushQueued = false

    /// Writes every finished slot at the head of the FIFO, in order.
    func flushReplies() {
        flushQueued = false
        guard !finished else { return }
        var wrote = false
        while slotHead < slots.count && slots[slotHead].done {
            let s = slots[slotHead]
            slotHead += 1
            s.bytes.withUnsafeBytes { out.append($0) }
            worker.stats.dec(stats.downstreamRqActive)
            worker.stats.inc(s.isError ? stats.downstreamRqError : stats.downstreamRqSuccess)
            if let id = s.command {
                let cs = commandStats.get(id)
                worker.stats.inc(cs.total)
                worker.stats.inc(s.isError ? cs.error : cs.success)
                if s.startMs > 0 {
                    let ms = monotonicMs() &- s.startMs
                    worker.stats.record(stats.downstreamRqTime, ms)
                    worker.stats.record(cs.latency, ms)
                }
            } else if s.startMs > 0 { worker.stats.record(stats.downstreamRqTime, monotonicMs() &- s.startMs) }
            wrote = true
        }
        if slotHead > 64 && slotHead * 2 > slots.count { slots.removeFirst(slotHead); slotHead = 0 }
        if wrote { connection.write(out, endStream: false) }
        if paused && inFlight < factory.config.maxPipeline / 2 + 1 && !closing {
            paused = false
            connection.readEnable()
            if parseBuffered() { return }
        }
        if (closing || draining) && inFlight == 0 && connection.state != .closed {
            closing = true
            connection.closeAfterFlush()
            finish()
        }
    }

    /// Requests already read but not parsed when reading paused: the connection delivers only
    /// after a new read (and reads nothing while its buffer is at the limit), so they are
    /// picked up here. True when it parsed (and so flushed) again.
    private func parseBuffered() -> Bool {
        guard !connection.readBuffer.isEmpty && !dispatchingData && connection.state == .open else { return false }
        _ = onData(connection.readBuffer, endStream: connection.readEOF)
        return true
    }

    private var pausedForUpstream = false

    /// Every shard connection of the worker is below its low watermark again.
    func resumeAfterCongestion() {
        guard pausedForUpstream, !finished else { return }
        pausedForUpstream = false
        connection.readEnable()
        if !parseBuffered() { flushReplies() }
    }

    // MARK: - Connection events

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {}
    func onClose(_ connection: Connection, remote: Bool) { finish() }
    func onAboveWriteBufferHighWatermark(_ connection: Connection) {
        // A client that does not read its replies stops being read from.
        connection.readDisable()
    }
    func onBelowWriteBufferLowWatermark(_ connection: Connection) { connection.readEnable() }

    func forceClose() {
        connection.close()
        finish()
    }

    func onDrain() {
        draining = true
        flushReplies()
    }

    private func finish() {
        if finished { return }
        finished = true
        txn?.commands.release()
        txn = nil
        endWatch()
        pinned?.conn.closeWhenIdle()
        pinned = nil
        // Slots still waiting keep their place in the shards' FIFOs; their replies are dropped.
        for s in slots[slotHead...] {
            s.session = nil
            worker.stats.dec(stats.downstreamRqActive)
        }
        slots = []
        slotHead = 0
        out.release()
        worker.stats.dec(stats.downstreamCxActive)
        worker.downstreamClosed(context)
        worker.untrack(self)
    }
}

/// Compares secrets in time that does not depend on where they differ.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var diff = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<max(a.count, b.count) { diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0) }
    return diff == 0
}
