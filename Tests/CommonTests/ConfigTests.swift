import Testing
@testable import Common

/// A stand-in block for a fake binary: `echo: { cluster: NAME }`.
struct EchoBlock: ListenerFilterConfig {
    var cluster: String
    var path: String
    var clusterReferences: [(path: String, name: String)] { [(path, cluster)] }
    var dump: JSON { .object([("cluster", .string(cluster))]) }
}

let echoParser = FilterBlockParser(binary: "echo-proxy", key: "tcp") { (m: ConfigMap, _: String) throws(ConfigError) -> any ListenerFilterConfig in
    let c = try m.required("cluster")
    return EchoBlock(cluster: try c.string(), path: c.path)
}

private func load(_ yaml: String) throws(ConfigError) -> ProxyConfig {
    try ConfigLoader.load(yaml: yaml, parser: echoParser)
}

private func error(_ yaml: String) -> String {
    do { _ = try load(yaml); return "no error" } catch { return error.description }
}

let base = """
listeners:
  - name: a
    address: 127.0.0.1:1000
    tcp: { cluster: c }
clusters:
  - name: c
    endpoints: ["127.0.0.1:1", { address: "[::1]:2", weight: 5 }]

"""

@Test func goodConfigLoadsWithDefaults() throws {
    let c = try load(base)
    #expect(c.listeners.count == 1 && c.clusters.count == 1)
    #expect(c.listeners[0].bufferLimit == 1 << 20)
    #expect(c.clusters[0].connectTimeoutMs == 5000)
    #expect(c.clusters[0].endpoints[1].weight == 5)
    #expect(c.drainTimeoutMs == 30_000)
}

@Test func errorsNameKeyPaths() {
    #expect(error(base.replacingOccurrences(of: "127.0.0.1:1\"", with: "127.0.0.1:70000\"")).hasPrefix("clusters[0].endpoints[0]: \"127.0.0.1:70000\": port out of range"))
    #expect(error(base + "workerz: 2\n").hasPrefix("workerz: unknown key"))
    #expect(error(base.replacingOccurrences(of: "cluster: c }", with: "cluster: d }")).hasPrefix("listeners[0].tcp.cluster: unknown cluster \"d\""))
    #expect(error(base + "drain_timeout: 5\n").hasPrefix("drain_timeout: \"5\" is not a duration"))
    #expect(error(base + "workers: [1]\n").hasPrefix("workers: expected an integer, got a list"))
    #expect(error("clusters: []\n").hasPrefix("listeners: missing required key"))
    #expect(error(base.replacingOccurrences(of: "weight: 5", with: "weight: 500")).hasPrefix("clusters[0].endpoints[1].weight: 500 is out of range"))
}

@Test func durationsAndSizes() {
    #expect(parseDurationMs("250ms") == 250)
    #expect(parseDurationMs("1.5s") == 1500)
    #expect(parseDurationMs("2m") == 120_000)
    #expect(parseDurationMs("1h") == 3_600_000)
    #expect(parseDurationMs("0") == 0)
    #expect(parseDurationMs("5") == nil)
    #expect(parseDurationMs("-1s") == nil)
    #expect(parseDurationMs("ms") == nil)
    #expect(parseSize("64KiB") == 65536)
    #expect(parseSize("1MiB") == 1 << 20)
    #expect(parseSize("12") == 12)
    #expect(parseSize("1MB") == nil)
    #expect(formatDuration(90_000) == "90s")
    #expect(formatDuration(3_600_000) == "1h")
}

@Test func addressesParse() throws {
    #expect(try SocketAddress.parse("127.0.0.1:80").description == "127.0.0.1:80")
    #expect(try SocketAddress.parse("[::1]:443").description == "[::1]:443")
    #expect(try SocketAddress.parse(":8080").description == "0.0.0.0:8080")
    #expect(try SocketAddress.parse("localhost:1").description == "127.0.0.1:1")
    #expect(try SocketAddress.parse("unix:/tmp/x.sock").description == "unix:/tmp/x.sock")
    #expect(throws: AddressError.self) { try SocketAddress.parse("::1:80") }
    #expect(throws: AddressError.self) { try SocketAddress.parse("example.com:80") }
    #expect(throws: AddressError.self) { try SocketAddress.parse("1.2.3.4") }
}

@Test func accessLogFormat() throws {
    var e = AccessLogEntry()
    e.bytesReceived = 10; e.bytesSent = 20; e.cluster = "c"; e.responseFlags = "UF"
    e.downstreamRemote = try SocketAddress.parse("10.0.0.1:5")
    let f = try AccessLogFormat("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_CLUSTER% %BYTES_RECEIVED%/%BYTES_SENT% %RESPONSE_FLAGS% 100%%")
    var out = ""
    f.format(e, into: &out)
    #expect(out == "10.0.0.1 c 10/20 UF 100%")
    #expect(throws: AccessLogFormat.ParseError.self) { try AccessLogFormat("%NOPE%") }
    #expect(iso8601(0) == "1970-01-01T00:00:00.000Z")
}

/// A binary's own cluster options, as redis-proxy will add them.
private struct DepthOptions: ClusterOptionsConfig {
    var depth: Int
    var configKey: String { "echo" }
    var dump: JSON { .object([("depth", .int(Int64(depth)))]) }
}

@Test func aBinaryAddsItsOwnClusterKeys() throws {
    var withOptions = echoParser
    withOptions.clusterOptions = ClusterOptionsParser(key: "echo") { (v: ConfigValue) throws(ConfigError) -> any ClusterOptionsConfig in
        let m = try v.mapping()
        let d = try m.required("depth").int(min: 1, max: 10)
        try m.finish()
        return DepthOptions(depth: d)
    }
    let yaml = """
    listeners:
      - name: a
        address: 127.0.0.1:1000
        tcp: { cluster: c }
    clusters:
      - name: c
        endpoints: [ "127.0.0.1:2000" ]
        echo: { depth: 3 }
    """
    let cfg = try ConfigLoader.load(yaml: yaml, parser: withOptions)
    #expect((cfg.clusters[0].binaryOptions as? DepthOptions)?.depth == 3)
    // Errors inside the binary's block name their key path; other binaries refuse the key.
    func err(_ text: String, _ p: FilterBlockParser) -> String {
        do { _ = try ConfigLoader.load(yaml: text, parser: p); return "no error" } catch { return error.description }
    }
    #expect(err(yaml.replacingOccurrences(of: "depth: 3", with: "depth: 30"), withOptions).hasPrefix("clusters[0].echo.depth: 30 is out of range"))
    #expect(err(yaml, echoParser).hasPrefix("clusters[0].echo: unknown key"))
}
