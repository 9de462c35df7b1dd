import Testing
@testable import Common

@Test func jsonParserReadsWhatTheSerializerWrites() throws {
    let v = JSON.object([("a", .array([.int(1), .int(-2), .double(2.5), .bool(true), .null])),
                         ("s", .string("q\"\\\n\u{1}é😀"))])
    #expect(try JSONParser.parse(v.serialized()) == v)
    #expect(try JSONParser.parse(v.serialized(pretty: true)) == v)
    #expect(try JSONParser.parse(#" "\ud83d\ude00\u00e9" "#) == .string("😀é"))
}

@Test func jsonParserRefusesWhatIsNotJSON() {
    for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "tru", "\"\\x\"", "\"\u{1}\"", "\"\\ud800\"",
                "{} x", "1e999", "[" + String(repeating: "[", count: 70) + String(repeating: "]", count: 71)] {
        #expect(throws: JSONParser.Failure.self, "\(bad)") { _ = try JSONParser.parse(bad) }
    }
}

@Test func endpointsFileJSONAndYAMLAgree() throws {
    let json = #"{"cluster": "c", "endpoints": [{"address": "10.0.0.1:80", "weight": 3, "health_status": "UNHEALTHY", "priority": 1, "hash_key": "a", "detail": "x"}, {"address": "10.0.0.2:81", "weight": null}]}"#
    let yaml = """
    cluster: c
    endpoints:
      - { address: "10.0.0.1:80", weight: 3, health_status: UNHEALTHY, priority: 1, hash_key: a, detail: x }
      - { address: "10.0.0.2:81" }
    """
    let a = try EndpointsFile.parse(json), b = try EndpointsFile.parse(yaml)
    #expect(a == b)
    #expect(a.count == 2 && a[0].weight == 3 && !a[0].healthy && a[0].priority == 1 && a[1].weight == 1)
    func err(_ t: String) -> String { do { _ = try EndpointsFile.parse(t); return "no error" } catch { return error.description } }
    #expect(err(#"{"endpoints": [{"address": "10.0.0.1:80", "wieght": 1}]}"#).hasPrefix("endpoints[0].wieght: unknown key"))
    #expect(err(#"{"endpoints": [{"address": "10.0.0.1:80", "weight": 1, "weight": 2}]}"#) == "endpoints[0].weight: duplicate key")
    #expect(err(#"{"endpoints": [{"address": "10.0.0.1:80", "weight": 0}]}"#) == "endpoints[0].weight: 0 is out of range 1...128")
    #expect(err(#"{"endpoints": [{"address": "10.0.0.1"}]}"#).hasPrefix("endpoints[0].address: "))
    #expect(err(#"{"cluster": "c"}"#) == "endpoints: missing required key")
    #expect(err(#"{"endpoints": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]}"#)
            == "endpoints[1].address: 10.0.0.1:80 is listed twice")
    #expect(err("endpoints: [ \"10.0.0.1:80\" ]").contains("expected a mapping"))
    // Flow-style YAML starts with '{' too: not JSON, so read as YAML.
    #expect(try EndpointsFile.parse(#"{endpoints: [{address: "10.0.0.1:80"}]}"#).count == 1)
}

@Test func endpointsFilesRefuseInvalidUTF8() throws {
    let bad: [UInt8] = Array(#"{"endpoints": [{"address": "10.0.0.1:80", "hash_key": "a"#.utf8) + [0xC0, 0xAF] + Array(#""}]}"#.utf8)
    #expect(throws: ConfigError.self) { _ = try EndpointsFile.parse(bytes: bad) }
    #expect(try EndpointsFile.parse(bytes: Array(#"{"endpoints": [{"address": "10.0.0.1:80", "hash_key": "é"}]}"#.utf8)).count == 1)
}

@Test func statsStoreFullCountsOverflowInsteadOfTrapping() {
    let store = StatsStore(threads: 2)
    var last = Counter(slot: 0)
    for i in 0..<(StatsStore.capacity + 10) { last = store.counter("c\(i)") }
    store.slabs[1].inc(last)  // lands in the sink: harmless
    #expect((store.value("server.stats_overflow") ?? 0) > 0)
    // Host stats live outside the store: any number of hosts, freed with their hosts.
    let h = HostStats(threads: 2)
    h.inc(.cxTotal, store.slabs[1]); h.inc(.cxActive, store.slabs[0]); h.dec(.cxActive, store.slabs[1])
    #expect(h.value(.cxTotal) == 1 && h.value(.cxActive) == 0)
}
