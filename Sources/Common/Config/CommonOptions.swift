import ArgumentParser

/// The flags every binary shares (docs/config.md, "Flags"). Flags alone run the common case;
/// `--config` runs from a YAML file.
public struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "YAML config file (see docs/config.md).")
    public var config: String?

    @Option(name: .long, help: "Listen address (host:port, [v6]:port, :port). Builds a one-listener config with --upstream.")
    public var listen: String?

    @Option(name: .long, help: "Comma-separated upstream endpoints (host:port[=weight]).")
    public var upstream: String?

    @Option(name: .long, help: "Load balancing policy: round_robin, random, least_request, maglev.")
    public var lb: String?

    @Option(name: .long, help: "Worker threads (default: number of cores).")
    public var workers: Int?

    @Option(name: .long, help: "Admin endpoint address, e.g. 127.0.0.1:9901 (port 0 picks one).")
    public var admin: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: String = "info"

    @Option(name: .long, help: "Log format: text or json.")
    public var logFormat: String = "text"

    @Flag(name: .long, help: "Check the config and exit: 0 if good, 1 with the key path of the first problem.")
    public var validate = false

    @Option(name: .long, help: "Write this JSON file (pid, bound addresses) once every listener is bound.")
    public var readyFile: String?

    @Option(name: .long, help: "How long SIGTERM waits for open connections (e.g. 30s).")
    public var drainTimeout: String?

    public init() {}
}

/// `--tls-cert`/`--tls-key` for the binaries that terminate TLS on a flag-built listener
/// (tcp-proxy, http-proxy): one definition of the flags, their pairing and the `tls` key.
public struct TlsListenerOptions: ParsableArguments {
    @Option(help: "With --listen: terminate TLS with this PEM certificate chain (and --tls-key).")
    public var tlsCert: String?
    @Option(help: "With --listen: the PEM private key for --tls-cert.")
    public var tlsKey: String?

    public init() {}

    /// Either flag was given.
    public var isSet: Bool { tlsCert != nil || tlsKey != nil }

    /// The listener's `tls` key, or nothing; both flags or neither.
    public func listenerFlags() throws -> [(String, JSON)] {
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        guard let tlsCert, let tlsKey else { return [] }
        return [("tls", .object([("cert", .string(tlsCert)), ("key", .string(tlsKey))]))]
    }
}
