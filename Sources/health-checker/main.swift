import ArgumentParser
import Common
import Glibc

/// health-checker: active checks of clusters for people, scripts and proxies
/// (docs/health-checker.md). Exit codes follow Nagios plugins in --once mode.
struct HealthCheckerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health-checker",
        abstract: "Check hosts once (Nagios exit codes) or keep checking and feed proxies an endpoints file.",
        version: toolkitVersion)

    @OptionGroup var common: CommonOptions

    @Option(help: "Check kind: tcp, http, redis, udp, grpc.")
    var check: String = "tcp"
    @Option(help: "http: request path.") var path: String?
    @Option(help: "http: Host header.") var host: String?
    @Option(help: "http: method (GET, HEAD, POST, OPTIONS).") var method: String?
    @Option(help: "http: expected statuses, e.g. 200,301-302 (default 200-299).") var expectStatus: String?
    @Option(help: "tcp/udp: bytes to send (escapes \\r \\n \\t \\0).") var send: String?
    @Option(help: "tcp/udp: bytes to send, as hex.") var sendHex: String?
    @Option(help: "tcp: the reply must start with this; udp: contain it.") var expect: String?
    @Option(help: "tcp/udp: expected bytes, as hex.") var expectHex: String?
    @Option(help: "redis: EXISTS this key must answer 0 (set it to drain the host).") var key: String?
    @Option(help: "grpc: the service to ask about (default: the whole server).") var service: String?
    @Option(help: "Between checks (default 5s).") var interval: String?
    @Option(help: "Per check (default 1s).") var timeout: String?
    @Option(help: "Passes in a row to mark a host up (default 2).") var rise: Int?
    @Option(help: "Failures in a row to mark a host down (default 3).") var fall: Int?
    @Flag(help: "Check every host once, print, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN.") var once = false
    @Option(help: "--once output: line, table or json.") var output: String = "line"
    @Flag(help: "Daemon: redraw a table of hosts and states every second (when stdout is a terminal).") var watch = false
    @Option(help: "Daemon: write the hosts and their health here (atomically) on every change.") var endpointsOut: String?
    @Option(help: "Name of the cluster built from --upstream.") var cluster: String = "upstream"
    @Flag(help: "Check over TLS (https, redis over TLS, gRPC over TLS), verifying the host's certificate.") var tls = false
    @Option(help: "With --tls: the server name to send and verify.") var tlsSni: String?
    @Option(help: "With --tls: verify against these CA certificates (PEM; default: the system's).") var tlsCa: String?
    @Flag(help: "With --tls: do not verify the host's certificate.") var tlsInsecure = false

    /// The config document the flags describe (when --config is absent).
    func flagConfig() throws -> String {
        guard let upstream = common.upstream else {
            throw ConfigError("--upstream", "give --upstream LIST (or --config FILE)")
        }
        var block: [(String, JSON)] = []
        func add(_ k: String, _ v: String?) { if let v { block.append((k, .string(v))) } }
        switch check {
        case "http":
            add("path", path); add("host", host); add("method", method)
            if let s = expectStatus {
                block.append(("expected_statuses", .array(s.split(separator: ",").map { .string(String($0)) })))
            }
        case "tcp", "udp":
            add("send", send); add("send_hex", sendHex); add("expect", expect); add("expect_hex", expectHex)
        case "redis":
            add("key", key)
        case "grpc":
            add("service", service); add("authority", host)
        default:
            throw ConfigError("--check", "\"\(check)\" is not one of tcp, http, redis, udp, grpc")
        }
        var hc: [(String, JSON)] = [(check, .object(block))]
        if let interval { hc.append(("interval", .string(interval))) }
        if let timeout { hc.append(("timeout", .string(timeout))) }
        if let rise { hc.append(("rise", .int(Int64(rise)))) }
        if let fall { hc.append(("fall", .int(Int64(fall)))) }
        var c: [(String, JSON)] = [
            ("name", .string(cluster)),
            ("endpoints", .array(upstream.split(separator: ",").map { .string(String($0)) })),
            ("health_check", .object(hc)),
        ]
        if let endpointsOut { c.append(("endpoints_out", .string(endpointsOut))) }
        if tls {
            var t: [(String, JSON)] = [("verify", .bool(!tlsInsecure))]
            if let tlsSni { t.append(("sni", .string(tlsSni))) }
            if let tlsCa { t.append(("ca", .string(tlsCa))) }
            c.append(("tls", .object(t)))
        } else if tlsSni != nil || tlsCa != nil || tlsInsecure {
            throw ConfigError("--tls", "--tls-sni, --tls-ca and --tls-insecure go with --tls")
        }
        return JSON.object([("clusters", .array([.object(c)]))]).serialized()
    }

    func run() throws {
        let usesCheckFlags = path != nil || host != nil || method != nil || expectStatus != nil || send != nil || sendHex != nil
            || expect != nil || expectHex != nil || key != nil || service != nil || interval != nil || timeout != nil || rise != nil
            || fall != nil || endpointsOut != nil || tls || tlsSni != nil || tlsCa != nil || tlsInsecure
        if common.config != nil && (common.upstream != nil || usesCheckFlags) {
            throw ValidationError("check flags go with --upstream; with --config set them in the file")
        }
        if common.listen != nil { throw ValidationError("health-checker has no listeners: --listen does not apply") }
        guard ["line", "table", "json"].contains(output) else { throw ValidationError("--output: line, table or json") }
        var binary = ProxyBinary(
            blockParser: FilterBlockParser(binary: "health-checker", key: "health", hasListeners: false, parse: noListenerBlock),
            flagBlock: { _ in [] },
            makeFactory: { _, _, _, _ in preconditionFailure("health-checker has no listeners") })
        if common.config == nil {
            let doc = Result { try flagConfig() }
            binary.configFromFlags = { try doc.get() }
        }
        binary.fixedWorkers = 0
        binary.watch = watch
        if once && watch { throw ValidationError("--watch is for the daemon; --once prints once") }
        if once {
            let config: ProxyConfig
            do { config = try Server.loadConfig(options: common, binary: binary) } catch {
                FileHandleOut.stderr("UNKNOWN - invalid config: \(error)\n")
                Glibc.exit(3)
            }
            Glibc.exit(OneShot(config: config, output: output).run())
        }
        Server.main(options: common, binary: binary)
    }
}

/// health-checker has no listener blocks (the loader refuses `listeners` before asking).
@Sendable func noListenerBlock(_ m: ConfigMap, _ name: String) throws(ConfigError) -> any ListenerFilterConfig {
    throw ConfigError(m.path, "health-checker has no listeners")
}

// Nagios: a usage error is UNKNOWN (3), not ArgumentParser's 64.
do {
    var command = try HealthCheckerCommand.parseAsRoot()
    try command.run()
} catch {
    let code = HealthCheckerCommand.exitCode(for: error)
    if code == .success {
        HealthCheckerCommand.exit(withError: error)
    }
    FileHandleOut.stderr("UNKNOWN - " + HealthCheckerCommand.fullMessage(for: error) + "\n")
    Glibc.exit(3)
}
