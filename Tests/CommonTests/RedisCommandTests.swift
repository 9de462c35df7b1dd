import Testing
@testable import RedisProtocol

private func lookup(_ name: String) -> RedisCommandID? { Array(name.utf8).withUnsafeBytes { RedisCommands.lookup($0) } }
private func lookup(_ sub: String, of container: String) -> RedisCommandID? {
    guard let c = lookup(container) else { return nil }
    return Array(sub.utf8).withUnsafeBytes { RedisCommands.lookup(subcommand: $0, of: c) }
}
private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// The keys of `args` as `RedisCommandID.keys` finds them.
private func keys(_ args: [String]) -> [String] {
    guard let id = lookup(args[0]) else { return [] }
    return id.keys(argCount: args.count) { i in
        Array(args[i].utf8).withUnsafeBytes { string2ll($0.baseAddress!, $0.count) }
    }.map { args[$0] }
}

@Test func everyCommandIsFoundByItsNameInAnyCase() {
    for (i, c) in RedisCommands.all.enumerated() {
        let parts = c.name.split(separator: "|").map(String.init)
        let id = parts.count == 1 ? lookup(c.name.uppercased()) : lookup(parts[1].uppercased(), of: parts[0])
        #expect(id?.index == Int16(i), "\(c.name)")
    }
    #expect(Set(RedisCommands.all.map(\.name)).count == RedisCommands.all.count)
    #expect(lookup("gEt")?.kind == .single(key: 1))
    #expect(lookup("GETX") == nil && lookup("") == nil && lookup("ge") == nil && lookup("get\0") == nil)
    #expect(lookup("client|setname") != nil)  // a full name is how stats name it; clients send two words
}

@Test func kindsFollowTheIssue() {
    #expect(lookup("mget")?.kind == .split(step: 1, merge: .arrayInKeyOrder))
    #expect(lookup("mset")?.kind == .split(step: 2, merge: .ok))
    for c in ["del", "unlink", "exists", "touch"] { #expect(lookup(c)?.kind == .split(step: 1, merge: .integerSum)) }
    #expect(lookup("dbsize")?.kind == .fanOut(.integerSum))
    #expect(lookup("keys")?.kind == .fanOut(.arrayConcat))
    #expect(lookup("load", of: "script")?.kind == .fanOut(.sameReply))
    #expect(lookup("exists", of: "script")?.kind == .fanOut(.arrayAllTrue))
    #expect(lookup("SetInfo", of: "CLIENT")?.kind == .local)
    #expect(lookup("kill", of: "client")?.kind == .unsupported)
    #expect(lookup("nope", of: "client") == nil)
    for c in ["ping", "echo", "quit", "select", "command", "hello", "auth"] { #expect(lookup(c)?.kind == .local, "\(c)") }
    for c in ["multi", "exec", "discard", "watch", "unwatch"] { #expect(lookup(c)?.kind == .transaction, "\(c)") }
    for c in ["blpop", "brpop", "bzpopmin", "blmove", "xread", "wait"] { #expect(lookup(c)?.kind == .blocking, "\(c)") }
    for c in ["subscribe", "publish", "psubscribe", "pubsub"] { #expect(lookup(c)?.kind == .pubsub, "\(c)") }
    for c in ["config", "client", "script", "object"] { #expect(lookup(c)?.kind == .container, "\(c)") }
    for c in ["monitor", "shutdown", "move", "migrate", "swapdb", "sync"] { #expect(lookup(c)?.kind == .unsupported, "\(c)") }
    for c in ["eval", "evalsha", "fcall", "fcall_ro"] { #expect(lookup(c)?.kind == .eval, "\(c)") }
    // Envoy's families, a sample of each: strings, hashes, lists, sets, sorted sets, streams, geo, hll, bitmaps, expiry.
    for c in ["get", "set", "incrbyfloat", "hset", "hgetall", "lpush", "lrange", "sadd", "smembers", "zadd", "zrangebyscore",
              "xadd", "xrange", "geoadd", "georadius_ro", "pfadd", "setbit", "bitcount", "expire", "ttl", "persist"] {
        #expect(lookup(c)?.kind == .single(key: 1), "\(c)")
    }
    #expect(lookup("stream", of: "xinfo")?.kind == .single(key: 2))
    #expect(lookup("host:")?.kind == .closeSilently)
}

@Test func arityMatchesRedis() {
    #expect(lookup("get")?.arityAccepts(2) == true)
    #expect(lookup("get")?.arityAccepts(1) == false && lookup("get")?.arityAccepts(3) == false)
    #expect(lookup("set")?.arityAccepts(3) == true && lookup("set")?.arityAccepts(9) == true)
    #expect(lookup("mset")?.arityAccepts(3) == true && lookup("mset")?.arityAccepts(4) == false)
    #expect(lookup("mset")?.arityAccepts(2) == false && lookup("msetnx")?.arityAccepts(4) == false)
    #expect(lookup("ping")?.arityAccepts(1) == true)
    // Texts captured from redis-server 7.0.15.
    #expect(lookup("get").map { text($0.wrongArityReply) } == "-ERR wrong number of arguments for 'get' command\r\n")
    #expect(lookup("setname", of: "client").map { text($0.wrongArityReply) }
            == "-ERR wrong number of arguments for 'client|setname' command\r\n")
    #expect(text(RedisCommands.unknownCommandReply(argCount: 3) { [Array("FOO".utf8), Array("a".utf8), Array("b".utf8)][$0] })
            == "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n")
    let long = RedisCommands.unknownCommandReply(argCount: 2) { $0 == 0 ? Array("FOO".utf8) : [UInt8](repeating: 0x61, count: 200) }
    #expect(text(long) == "-ERR unknown command 'FOO', with args beginning with: '" + String(repeating: "a", count: 128) + "' \r\n")
    #expect(lookup("client").map { text(RedisCommands.unknownSubcommandReply(Array("FOO".utf8), of: $0)) }
            == "-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n")
}

@Test func keysAreWhereRedisSaysTheyAre() {
    #expect(keys(["GET", "k"]) == ["k"])
    #expect(keys(["MGET", "a", "b", "c"]) == ["a", "b", "c"])
    #expect(keys(["MSET", "a", "1", "b", "2"]) == ["a", "b"])
    #expect(keys(["EVAL", "return 1", "2", "k1", "k2", "arg"]) == ["k1", "k2"])
    #expect(keys(["EVAL", "return 1", "0", "arg"]) == [])
    #expect(keys(["EVAL", "return 1", "5", "k1"]) == ["k1"])
    #expect(keys(["EVAL", "return 1", "x", "k1"]) == [])
    #expect(keys(["RENAME", "a", "b"]) == ["a", "b"])
    #expect(keys(["SUNIONSTORE", "d", "a", "b"]) == ["d", "a", "b"])
    #expect(keys(["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]) == ["a", "b"])
    #expect(keys(["MSETNX", "a", "1", "b", "2"]) == ["a", "b"])
    #expect(keys(["PING"]) == [])
}

@Test func hashTagFollowsTwemproxy() {
    let tag = HashTag("{}")
    #expect(tag != nil && HashTag("{") == nil && HashTag("{}}") == nil)
    func part(_ key: String) -> String {
        Array(key.utf8).withUnsafeBytes { k in String(decoding: tag!.hashedPart(of: k), as: UTF8.self) }
    }
    #expect(part("user:{42}:name") == "42")
    #expect(part("{a}{b}") == "a")
    #expect(part("a{}b{c}") == "a{}b{c}")     // empty tag: the whole key (the later {c} is not looked at)
    #expect(part("a{b") == "a{b")
    #expect(part("a}b{") == "a}b{")
    #expect(part("{}") == "{}")
    #expect(part("x{{y}") == "{y")
    #expect(part("ab") == "ab")
}
