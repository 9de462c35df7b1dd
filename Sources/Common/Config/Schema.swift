/// The process configuration: one YAML schema for every binary (see docs/config.md). Built on the
/// main thread, immutable, shared with workers as a snapshot.
public struct ProxyConfig: Sendable {
    /// `admin.address`; nil = no admin endpoint.
    public var adminAddress: SocketAddress?
    /// `workers`; nil = number of cores.
    public var workers: Int?
    /// `drain_timeout` (default 30s): how long SIGTERM waits for open connections.
    public var drainTimeoutMs: UInt64 = 30_000
    public var listeners: [ListenerConfig] = []
    public var clusters: [ClusterConfig] = []
    /// `health_event_log` (default /dev/stderr): health flips as JSON lines.
    public var healthEventLog = "/dev/stderr"

    public func cluster(named name: String) -> ClusterConfig? { clusters.first { $0.name == name } }
}

/// `listeners[i].proxy_protocol`: whether a PROXY protocol header is expected from clients.
public enum ProxyProtocolMode: String, Sendable {
    /// No header expected (default).
    case off
    /// Every connection must start with a v1 or v2 header; otherwise it is closed.
    case accept
    /// A header is used when present; connections without one are served as they are.
    case optional
}

/// `listeners[i].connection_balance`.
public enum ConnectionBalance: String, Sendable {
    /// One SO_REUSEPORT socket per worker; the kernel spreads connections (default).
    case kernel
    /// One socket; the main thread hands each connection to the least loaded worker.
    case exact
}

/// One listener: an address and the filter config of the binary's block.
public struct ListenerConfig: Sendable {
    public var name: String
    public var address: SocketAddress
    public var proxyProtocol: ProxyProtocolMode = .off
    /// `proxy_protocol_timeout` (default 5s): how long a client may take to send the header.
    public var proxyProtocolTimeoutMs: UInt64 = 5000
    /// `max_connections`; nil = unlimited.
    public var maxConnections: Int?
    public var connectionBalance: ConnectionBalance = .kernel
    /// `per_connection_buffer_limit` (default 1MiB, as Envoy): bytes buffered per direction
    /// before the proxy stops reading the other side.
    public var bufferLimit: Int = 1 << 20
    /// `backlog` (default 1024).
    public var backlog: Int = 1024
    public var accessLogs: [AccessLogConfig] = []
    /// A UDP listener (udp-proxy): one SO_REUSEPORT socket per worker, so the kernel's
    /// 4-tuple hash keeps a client's datagrams on one worker.
    public var datagram = false
    /// The filter chains: one (the binary's block under the listener) or several under
    /// `filter_chains`, picked per connection by the client's TLS server name.
    public var chains: [FilterChainConfig]
    /// `tls_inspector_timeout` (default 5s): how long a client on a listener with server-name
    /// chains may take to send its ClientHello before it gets the default chain.
    public var tlsInspectorTimeoutMs: UInt64 = 5000

    public init(name: String, address: SocketAddress, filter: any ListenerFilterConfig) {
        self.name = name; self.address = address
        chains = [FilterChainConfig(name: "default", path: "", serverNames: [], filter: filter)]
    }

    /// The first chain's block (the only one unless `filter_chains` is used).
    public var filter: any ListenerFilterConfig { chains[0].filter }
    /// True when a chain matches on server names: connections then pass the TLS inspector.
    public var inspectsTls: Bool { chains.contains { !$0.serverNames.isEmpty } }
}

/// A `tls` block: TLS termination with a certificate (Envoy's DownstreamTlsContext).
public struct TlsServerConfig: Sendable {
    public var cert: String
    public var key: String
    public var alpn: [String]
    public var minVersion: TlsVersion
    /// `handshake_timeout` (default 10s): a client slower than this to finish its handshake is
    /// closed before any upstream connection is made.
    public var handshakeTimeoutMs: UInt64 = 10_000
    /// Built when the config loads, so a bad file is a config error.
    public var context: TlsContext
    /// mTLS: `client_ca` (PEM bundle), `require_client_certificate`, `crl`, and
    /// `match_subject_alt_names` (a presented certificate must have a DNS or URI name matching one).
    public var clientCa: String?
    public var requireClientCertificate = false
    public var crl: String?
    public var matchSubjectAltNames: [SanMatcher] = []
    /// `session_ticket_keys` files (80 bytes each; the first encrypts) and `ocsp_staple` (DER).
    public var sessionTicketKeys: [String] = []
    public var ocspStaple: String?

    var dump: JSON {
        var f: [(String, JSON)] = [("cert", .string(cert)), ("key", .string(key)), ("alpn", .array(alpn.map { .string($0) })),
                                   ("min_version", .string(minVersion.rawValue)), ("handshake_timeout", .string(formatDuration(handshakeTimeoutMs)))]
        if let clientCa {
            f.append(("client_ca", .string(clientCa)))
            f.append(("require_client_certificate", .bool(requireClientCertificate)))
            if let crl { f.append(("crl", .string(crl))) }
            if !matchSubjectAltNames.isEmpty { f.append(("match_subject_alt_names", .array(matchSubjectAltNames.map(\.dump)))) }
        }
        if !sessionTicketKeys.isEmpty { f.append(("session_ticket_keys", .array(sessionTicketKeys.map { .string($0) }))) }
        if let ocspStaple { f.append(("ocsp_staple", .string(ocspStaple))) }
        return .object(f)
    }
}

/// A cluster's `tls` block: TLS to the upstream hosts (Envoy's UpstreamTlsContext, HAProxy's
/// `server ... ssl`).
public struct TlsClientConfig: Sendable {
    public var sni: String?
    /// `auto_sni`: send (and verify) the client's own server name, when it gave one.
    public var autoSni = false
    public var verify = true
    public var ca: String?
    public var alpn: [String] = []
    public var minVersion = TlsVersion.tls12
    public var context: TlsContext
    /// `cert`/`key`: the certificate the proxy presents to hosts that ask (upstream mTLS).
    public var clientCert: String?
    public var clientKey: String?

    var dump: JSON {
        var f: [(String, JSON)] = []
        if let clientCert, let clientKey { f.append(("cert", .string(clientCert))); f.append(("key", .string(clientKey))) }
        if let sni { f.append(("sni", .string(sni))) }
        if autoSni { f.append(("auto_sni", .bool(true))) }
        f.append(("verify", .bool(verify)))
        if let ca { f.append(("ca", .string(ca))) }
        f.append(("alpn", .array(alpn.map { .string($0) })))
        f.append(("min_version", .string(minVersion.rawValue)))
        return .object(f)
    }
}

/// One filter chain of a listener (Envoy's filter_chains[i]).
public struct FilterChainConfig: Sendable {
    public var name: String
    /// The block's key path, for messages.
    public var path: String
    /// `match.server_names`: lowercased host names or `*.suffix` wildcards; empty = the default chain.
    public var serverNames: [String]
    public var filter: any ListenerFilterConfig
    /// `tls`: terminate TLS on this chain's connections (nil: bytes pass as they come).
    public var tls: TlsServerConfig?

    public init(name: String, path: String, serverNames: [String], filter: any ListenerFilterConfig) {
        self.name = name; self.path = path; self.serverNames = serverNames; self.filter = filter
    }
}

/// The per-binary listener block. Implemented by each binary's filter config.
public protocol ListenerFilterConfig: Sendable {
    /// Clusters referenced, with the key path of each reference (checked to exist).
    var clusterReferences: [(path: String, name: String)] { get }
    /// The effective block, for /config_dump.
    var dump: JSON { get }
    /// Checks that need the clusters (e.g. a hash policy needs a hashing balancer).
    /// `path` is the block's key path.
    func validate(clusters: [ClusterConfig], path: String) throws(ConfigError)
}

extension ListenerFilterConfig {
    public func validate(clusters: [ClusterConfig], path: String) throws(ConfigError) {}
}

/// A binary's own options of a cluster, parsed by its `ClusterOptionsParser`.
public protocol ClusterOptionsConfig: Sendable {
    /// The key they were given under (`ClusterOptionsParser.key`).
    var configKey: String { get }
    /// The effective options, for /config_dump.
    var dump: JSON { get }
    /// The ALPN protocols the cluster's `tls` offers when its block names none (http-proxy:
    /// `h2` for HTTP/2 upstreams). Nil: none.
    var defaultAlpn: [String]? { get }
}

extension ClusterOptionsConfig {
    public var defaultAlpn: [String]? { nil }
}

/// `clusters[i].lb_policy`.
public enum LbPolicy: String, Sendable, CaseIterable {
    case roundRobin = "round_robin"
    case random
    case leastRequest = "least_request"
    case maglev
    case ringHash = "ring_hash"

    /// Places keys consistently (what a `hash_policy` needs).
    public var hashesKeys: Bool { self == .maglev || self == .ringHash }
}

/// `clusters[i].send_proxy_protocol`.
public enum ProxyProtocolVersion: String, Sendable { case v1, v2 }

/// One upstream cluster.
public struct ClusterConfig: Sendable {
    public var name: String
    /// `discovery` (default static): `static` (the `endpoints` list) or `file` (an endpoints
    /// file at `path`, re-read when replaced; the health checker writes these).
    public var discovery: String = "static"
    /// `path`: the endpoints file for `file` discovery.
    public var path: String?
    /// strict_dns: the names to resolve, how often, through which servers.
    public var dnsTargets: [DnsTarget] = []
    /// `dns_refresh_rate` (default 5s, as Envoy).
    public var dnsRefreshMs: UInt64 = 5000
    /// `respect_dns_ttl` (default false): re-resolve at the records' TTL (at least 1s) instead.
    public var respectDnsTtl = false
    /// `dns_lookup_family` (default all: A and AAAA).
    public var dnsLookupFamily: DnsLookupFamily = .all
    /// `dns_resolvers` (default: /etc/resolv.conf).
    public var dnsResolvers: [SocketAddress] = []
    /// `health_check`: active checks run by the main thread; hosts that fail are skipped.
    public var healthCheck: HealthCheckConfig?
    /// `outlier_detection`: passive ejection of failing hosts.
    public var outlierDetection: OutlierDetectionConfig?
    /// `endpoints_out`: write this cluster's hosts with their health to this file (atomically)
    /// whenever it changes, for other proxies' `file` discovery.
    public var endpointsOut: String?
    public var endpoints: [EndpointConfig] = []
    public var lbPolicy: LbPolicy = .roundRobin
    /// `connect_timeout` (default 5s, as Envoy).
    public var connectTimeoutMs: UInt64 = 5000
    /// `send_proxy_protocol`: a PROXY header sent on each new upstream connection.
    public var sendProxyProtocol: ProxyProtocolVersion?
    /// `tls`: connect to the hosts with TLS (after the PROXY header, if any).
    public var tls: TlsClientConfig?
    /// `circuit_breakers.max_connections` (default unlimited).
    public var maxConnections: Int?
    /// `circuit_breakers.max_pending_requests` (default unlimited): upstream connects in
    /// progress (tcp-proxy) or requests waiting for a connection (http, redis).
    public var maxPending: Int?
    /// `circuit_breakers.max_retries` (default unlimited): retries in flight at once.
    public var maxRetries: Int?
    /// `overprovisioning_factor` (default 140, Envoy's): a priority level at 72% health or more
    /// (72 × 1.4 ≥ 100) keeps all its traffic; below, the rest spills to the next level.
    public var overprovisioningFactor = 140
    /// `panic_threshold` (percent, default 0 = off): when fewer hosts than this are healthy,
    /// balance over all hosts, healthy or not. Off by default, unlike Envoy's silent 50%.
    public var panicThreshold = 0
    /// `max_hosts` (default 100,000; at most 1,000,000): the most hosts the cluster may have.
    /// A config over it is refused; a discovery result over it (an endpoints file, a DNS answer)
    /// is rejected with `update_rejected` and the last good set stays.
    public var maxHosts = ClusterConfig.defaultMaxHosts
    /// The binary's own options for this cluster (`FilterBlockParser.clusterOptions`), if any.
    public var binaryOptions: (any ClusterOptionsConfig)?
    public static let defaultMaxHosts = 100_000
}

/// One endpoint of a cluster.
public struct EndpointConfig: Sendable, Hashable {
    public var address: SocketAddress
    /// `weight` (default 1, 1...128 as Envoy's load balancing weights).
    public var weight: Int = 1
    /// `health_status` from an endpoints file (default healthy); static endpoints are healthy.
    public var healthy: Bool = true
    /// `hash_key`: the name hashing balancers use for this host (default "ip:port").
    public var hashKey: String?
    /// `priority` (default 0, the first to use): higher levels take traffic as lower ones lose health.
    public var priority: Int = 0
    public init(address: SocketAddress, weight: Int = 1, healthy: Bool = true, hashKey: String? = nil, priority: Int = 0) {
        self.address = address; self.weight = weight; self.healthy = healthy; self.hashKey = hashKey; self.priority = priority
    }
}

/// `listeners[i].access_log[j]`.
public struct AccessLogConfig: Sendable {
    /// A file path; "/dev/stdout" and "/dev/stderr" are fine.
    public var path: String
    /// Envoy-style format string; nil = the default format.
    public var format: String?
    /// JSON lines: field name to format string.
    public var jsonFormat: [(String, String)]?
}
