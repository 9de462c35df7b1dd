import Testing
@testable import Common

@Test func riseAndFallApplyToEveryFailureKind() {
    var s = HealthState(rise: 2, fall: 3)
    #expect(s.healthy)
    // A bad HTTP status counts like any failure: no immediate ejection.
    let results: [CheckResult] = [.l7Response("HTTP status 503"), .l4Connect("connection refused"), .l7Timeout,
                                  .passed(latencyMs: 1), .l4Timeout, .passed(latencyMs: 1), .passed(latencyMs: 1)]
    var flips: [Bool] = []
    var healthy: [Bool] = []
    for r in results {
        flips.append(s.record(r))
        healthy.append(s.healthy)
    }
    #expect(flips == [false, false, true, false, false, false, true])
    // Down after the third failure; a failure resets the rise streak; up after two passes.
    #expect(healthy == [true, true, false, false, false, false, true])
}

@Test func edgeAndUnhealthyIntervals() {
    var c = HealthCheckConfig(kind: .tcp)
    c.intervalMs = 5000; c.unhealthyIntervalMs = 10_000; c.edgeIntervalMs = 500
    var s = HealthState(rise: 2, fall: 2)
    let steady = c.interval(for: s)
    _ = s.record(.l4Timeout)
    let edge = c.interval(for: s)
    _ = s.record(.l4Timeout)
    let down = c.interval(for: s)
    #expect(steady == 5000 && edge == 500 && down == 10_000 && !s.healthy)
}

@Test func matchers() {
    let b = { (s: String) in Array(s.utf8) }
    #expect(Matcher.httpStatus([200...299]).judge(b("HTTP/1.1 204 No Content\r\n"), eof: false) == .pass)
    #expect(Matcher.httpStatus([200...299]).judge(b("HTTP/1.1 503 Busy\r\n"), eof: false) == .fail("HTTP status 503"))
    #expect(Matcher.httpStatus([200...299]).judge(b("HTTP/1.1 2"), eof: false) == .needMore)
    if case .fail = Matcher.httpStatus([200...299]).judge(b("SSH-2.0-OpenSSH\r\n"), eof: false) {} else { Issue.record("accepted SSH") }
    #expect(Matcher.redisSimple("PONG").judge(b("+PONG\r\n"), eof: false) == .pass)
    #expect(Matcher.redisSimple("PONG").judge(b("-ERR auth\r\n"), eof: false) == .fail("Redis replied -ERR auth"))
    #expect(Matcher.redisInteger(0).judge(b(":1\r\n"), eof: false) == .fail("Redis replied :1"))
    #expect(Matcher.prefix(b("+OK")).judge(b("+O"), eof: false) == .needMore)
    #expect(Matcher.prefix(b("+OK")).judge(b("+O"), eof: true) == .fail("short response"))
    #expect(Matcher.contains(b("pong")).judge(b("ping pong"), eof: true) == .pass)
    #expect(HealthCheckConfig.redis(key: "k").count == 4)
}

@Test func healthCheckConfigErrorsNameTheKey() {
    func err(_ yaml: String) -> String {
        do { _ = try ConfigLoader.parseHealthCheck(try ConfigValue.parse(yaml: yaml)); return "ok" } catch { return error.description }
    }
    #expect(err("{ interval: 1s, http: { path: /x } }") == "ok")
    #expect(err("{ tcp: {}, http: {} }").contains("give one check kind, not tcp and http"))
    #expect(err("{ interval: 1s }").contains("give one check kind"))
    #expect(err("{ http: { path: x } }").hasPrefix("http.path:"))
    #expect(err("{ http: { expected_statuses: [\"700\"] } }").hasPrefix("http.expected_statuses[0]:"))
    #expect(err("{ tcp: { send: \"a\\\\q\" } }").hasPrefix("tcp.send: unknown escape"))
    #expect(err("{ tcp: { send_hex: \"0g\" } }").hasPrefix("tcp.send_hex: not hex"))
    #expect(err("{ udp: {} }").hasPrefix("udp.send: a UDP check needs something to send"))
    #expect(err("{ interval: 1s, timeout: 2s, tcp: {} }").hasPrefix("timeout: must not exceed interval"))
    #expect(err("{ rise: 0, tcp: {} }").hasPrefix("rise: 0 is out of range"))
}

@Test func endpointsFileRoundTrip() throws {
    let a = try SocketAddress.parse("10.0.0.1:80"), b = try SocketAddress.parse("[::1]:81")
    let text = EndpointsFile.render(cluster: "c", endpoints: [(EndpointConfig(address: a, weight: 2), true, "ok"),
                                                              (EndpointConfig(address: b, priority: 1), false, "L4CON")])
    let eps = try EndpointsFile.parse(text)
    #expect(eps == [EndpointConfig(address: a, weight: 2, healthy: true), EndpointConfig(address: b, weight: 1, healthy: false, priority: 1)])
    #expect(throws: ConfigError.self) { try EndpointsFile.parse("{\"endpoints\": [{\"address\": \"1.2.3.4:1\", \"health_status\": \"MEH\"}]}") }
}
