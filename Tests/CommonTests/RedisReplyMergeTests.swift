import Testing
@testable import RedisProtocol

private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
private func bulk(_ s: String) -> [UInt8] { bytes("$\(s.utf8.count)\r\n\(s)\r\n") }
private func decode(_ s: String, _ n: Int) -> (shard: Int, cursor: UInt64)? {
    bytes(s).withUnsafeBytes { ReplyMerges.decodeScanCursor($0, shards: n) }
}
private func scan(_ reply: String, shard: Int, of n: Int) -> String {
    text(bytes(reply).withUnsafeBytes { ReplyMerges.scanReply($0, shard: shard, shards: n) })
}

@Test func scanCursorsWalkEveryShardInTurnAndRoundTrip() {
    // Shard 1 of 3 still scanning at its cursor 5: the proxy's cursor encodes both.
    #expect(scan("*2\r\n$1\r\n5\r\n*1\r\n$1\r\na\r\n", shard: 1, of: 3) == "*2\r\n$2\r\n16\r\n*1\r\n$1\r\na\r\n")
    #expect(decode("16", 3)! == (1, 5))
    // A shard done: the next shard's start; the last shard done: 0.
    #expect(scan("*2\r\n$1\r\n0\r\n*0\r\n", shard: 1, of: 3) == "*2\r\n$1\r\n2\r\n*0\r\n")
    #expect(decode("2", 3)! == (2, 0))
    #expect(scan("*2\r\n$1\r\n0\r\n*0\r\n", shard: 2, of: 3) == "*2\r\n$1\r\n0\r\n*0\r\n")
    // Refused: not a number, over 2^64, a sign; a shard cursor too large to encode; junk.
    #expect(decode("abc", 3) == nil && decode("18446744073709551616", 3) == nil && decode("-1", 3) == nil && decode("", 3) == nil)
    #expect(scan("*2\r\n$20\r\n18446744073709551615\r\n*0\r\n", shard: 0, of: 3).hasPrefix("-ERR redis-proxy: a shard's SCAN cursor is too large"))
    #expect(scan("*2\r\n$9\r\n5\r\n*0\r\n", shard: 0, of: 3).hasPrefix("-ERR redis-proxy: unexpected reply"))
    #expect(scan("-ERR nope\r\n", shard: 0, of: 3) == "-ERR nope\r\n")
}

@Test func scriptExistsIsTrueOnlyWhereEveryShardHasTheScript() {
    #expect(text(ReplyMerges.allTrue([bytes("*2\r\n:1\r\n:1\r\n"), bytes("*2\r\n:1\r\n:0\r\n")])) == "*2\r\n:1\r\n:0\r\n")
    #expect(text(ReplyMerges.allTrue([bytes("*2\r\n:1\r\n:1\r\n"), bytes("-ERR x\r\n")])) == "-ERR x\r\n")
    #expect(text(ReplyMerges.allTrue([bytes("*2\r\n:1\r\n:1\r\n"), bytes("*1\r\n:1\r\n")])).hasPrefix("-ERR redis-proxy"))
    #expect(text(ReplyMerges.allTrue([bytes("*3\r\n:1\r\n")])).hasPrefix("-ERR redis-proxy"))
}

@Test func randomKeyTakesAKeyFromTheStartShardOnAndNilWhenAllAreEmpty() {
    let parts = [bytes("$-1\r\n"), bulk("b"), bulk("c")]
    #expect(text(ReplyMerges.firstNonNil(parts, start: 0)) == "$1\r\nb\r\n")
    #expect(text(ReplyMerges.firstNonNil(parts, start: 2)) == "$1\r\nc\r\n")
    #expect(text(ReplyMerges.firstNonNil([bytes("$-1\r\n"), bytes("$-1\r\n")], start: 1)) == "$-1\r\n")
    #expect(text(ReplyMerges.firstNonNil([bytes("$-1\r\n"), bytes("-ERR down\r\n")], start: 0)) == "-ERR down\r\n")
}

@Test func infoSumsCountersKeyspaceAndCommandStatsOverShards() {
    let a = bulk("# Server\r\nredis_version:7.0.15\r\ntcp_port:1\r\n\r\n# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\n\r\n# Commandstats\r\ncmdstat_get:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=50\r\n")
    let b = bulk("# Server\r\nredis_version:7.0.15\r\ntcp_port:2\r\n\r\n# Memory\r\nused_memory:2048\r\nused_memory_human:2.00K\r\n\r\n# Commandstats\r\ncmdstat_get:calls=1,usec=10,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\ncmdstat_set:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=0,avg_ttl=90\r\ndb1:keys=1,expires=0,avg_ttl=0\r\n")
    let out = text(ReplyMerges.info([a, b, bytes("-ERR down\r\n")], extra: "# Proxy\r\nshards:3\r\n"))
    let body = out.split(separator: "\r\n", maxSplits: 1)[1]
    #expect(out.hasPrefix("$\(body.utf8.count - 2)\r\n"))
    for line in ["redis_version:7.0.15", "tcp_port:1", "used_memory:3072", "used_memory_human:3.00K",
                 "cmdstat_get:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=0",
                 "cmdstat_set:calls=1,usec=5,usec_per_call=5.00", "db0:keys=7,expires=1,avg_ttl=90", "db1:keys=1",
                 "# Proxy", "shards:3", "shards_replied:2"] {
        #expect(out.contains(line), "missing \(line)")
    }
    #expect(text(ReplyMerges.info([bytes("-ERR a\r\n"), bytes("-ERR b\r\n")], extra: "")) == "-ERR a\r\n")
    #expect(text(ReplyMerges.info([bytes("$99\r\nshort\r\n")], extra: "")).hasPrefix("-ERR redis-proxy"))
}
