import CLibevent
import CShim
import Glibc
import Logging

/// What a binary plugs into the shared server.
public struct ProxyBinary: Sendable {
    /// Parses the binary's listener block.
    public let blockParser: FilterBlockParser
    /// The listener block that `--listen`/`--upstream` produce, given the cluster name.
    public let flagBlock: @Sendable (_ cluster: String) -> [(String, JSON)]
    /// Extra listener keys and cluster keys from the binary's own flags (with `--listen`).
    public let listenerFlags: [(String, JSON)]
    public let clusterFlags: [(String, JSON)]
    /// Builds a listener's filter factory for one config generation (main thread).
    /// Builds the factory of one filter chain (`chain`, one of `listener.chains`' blocks).
    public let makeFactory: @Sendable (_ listener: ListenerConfig, _ chain: any ListenerFilterConfig, _ clusters: [String: ClusterSnapshot], StatsStore) -> any FilterFactory
    /// The whole config from the binary's own flags (health-checker), when `--config` is absent.
    public var configFromFlags: (@Sendable () throws -> String)?
    /// Worker threads regardless of config (health-checker: 0, all work is on the main thread).
    public var fixedWorkers: Int?
    /// Redraw a table of hosts and their health every second when stdout is a terminal.
    public var watch = false

    public init(blockParser: FilterBlockParser,
                flagBlock: @escaping @Sendable (String) -> [(String, JSON)],
                listenerFlags: [(String, JSON)] = [], clusterFlags: [(String, JSON)] = [],
                makeFactory: @escaping @Sendable (ListenerConfig, any ListenerFilterConfig, [String: ClusterSnapshot], StatsStore) -> any FilterFactory) {
        self.blockParser = blockParser; self.flagBlock = flagBlock; self.makeFactory = makeFactory
        self.listenerFlags = listenerFlags; self.clusterFlags = clusterFlags
    }
}

/// The process: the main thread's loop (config, reload, admin, signals, drain) and the workers.
///
/// ```
/// main thread ── loads config → ServerSnapshot ──post──► worker 0..N-1 (apply, add/remove listeners)
///     │  binds every listening socket (SO_REUSEPORT: one per worker), writes --ready-file
///     └─ admin HTTP, SIGHUP reload, SIGTERM drain, SIGUSR1 reopen logs, stats merge on read
/// ```
public final class Server {
    public let binary: ProxyBinary
    let options: CommonOptions
    public let store: StatsStore
    public let serverStats: ServerStats
    let dispatcher = Dispatcher(name: "main")
    var logger: Logger
    public private(set) var snapshot: ServerSnapshot
    private var workers: [Worker] = []
    private var workerHandles: [WorkerHandle] = []
    private var threads: [OSThread] = []
    /// Bound sockets per listener name (kept across reloads when the address is unchanged).
    private var bound: [String: BoundListener] = [:]
    private var listenerCounts: [String: SharedCount] = [:]
    private var clusterCounts: [String: SharedCount] = [:]
    /// Circuit breaker counts that must outlive cluster snapshots: pending connects, retries.
    private var pendingCounts: [String: SharedCount] = [:]
    private var retryCounts: [String: SharedCount] = [:]
    /// Live cluster state on the main thread: endpoints (config or file), checks, watchers.
    private var clusterRuntimes: [String: ClusterRuntime] = [:]
    /// Health flips as JSON lines (`health_event_log`).
    private var healthLogFd: Int32 = 2
    private var signals: [SignalWatcher] = []
    private var admin: AdminServer?
    private var drainTimer: Timer?
    private var tickTimer: Timer?
    /// `server.days_until_first_cert_expiring` (Envoy's), registered once a certificate is loaded.
    private var certExpiryGauge: Gauge?
    private var watchTimer: Timer?
    let startWallMs = wallMs()
    let startMs = monotonicMs()
    /// `server.state` for /ready and /server_info.
    public private(set) var state = "LIVE"
    /// POST /healthcheck/fail sets this; /ready then answers 503.
    public var healthCheckFailed = false
    /// POST /drain_listeners stopped every listener: they stay stopped, across reloads too,
    /// until the process exits (a reload still updates clusters and listener settings).
    public private(set) var listenersStopped = false
    private var drainDeadline: UInt64 = 0
    private var exitCode: Int32 = 0

    struct BoundListener {
        let address: SocketAddress
        let balance: ConnectionBalance
        /// Actual address (port resolved when 0 was asked).
        let actual: SocketAddress
        /// For `exact`: the main thread's accepting socket.
        var exact: ExactBalancer?
    }

    /// Parses options, loads the config and runs until drained. Never returns.
    public static func main(options: CommonOptions, binary: ProxyBinary) -> Never {
        var level = Logger.Level.parse(options.logLevel)
        if level == nil {
            FileHandleOut.stderr("--log-level: \"\(options.logLevel)\" is not one of trace, debug, info, notice, warning, error, critical\n")
            exit(1)
        }
        guard options.logFormat == "text" || options.logFormat == "json" else {
            FileHandleOut.stderr("--log-format: \"\(options.logFormat)\" is not one of text, json\n")
            exit(1)
        }
        let json = options.logFormat == "json"
        let lvl = level!
        LoggingSystem.bootstrap { StderrLogHandler(label: $0, level: lvl, json: json) }
        level = nil
        let config: ProxyConfig
        do {
            config = try loadConfig(options: options, binary: binary)
        } catch {
            FileHandleOut.stderr("\(binary.blockParser.binary): invalid config: \(error)\n")
            exit(1)
        }
        if options.validate {
            FileHandleOut.stdout("config OK: \(config.listeners.count) listener(s), \(config.clusters.count) cluster(s)\n")
            exit(0)
        }
        signal(SIGPIPE, SIG_IGN)
        // Each proxied connection needs two descriptors: use the hard limit, as HAProxy does.
        _ = cshim_raise_nofile()
        cshim_tune_malloc()
        let server = Server(options: options, binary: binary, config: config)
        exit(server.run())
    }

    /// Reads `--config`, or builds the config from `--listen`/`--upstream`, then applies the
    /// flags that override the file (`--workers`, `--admin`, `--drain-timeout`).
    public static func loadConfig(options: CommonOptions, binary: ProxyBinary) throws -> ProxyConfig {
        var cfg: ProxyConfig
        if let path = options.config {
            if options.listen != nil || options.upstream != nil || options.lb != nil {
                throw ConfigError("--config", "use either a config file or --listen/--upstream/--lb, not both")
            }
            guard let text = readFile(path) else { throw ConfigError("--config", "cannot read \"\(path)\"") }
            cfg = try ConfigLoader.load(yaml: text, parser: binary.blockParser)
        } else if let fromFlags = binary.configFromFlags {
            let doc = try fromFlags()
            do {
                cfg = try ConfigLoader.load(yaml: doc, parser: binary.blockParser)
            } catch {
                throw ConfigError(error.path, error.message + " (from flags)")
            }
        } else {
            guard let listen = options.listen else { throw ConfigError("--listen", "give --config FILE, or --listen ADDR with --upstream LIST") }
            guard let upstream = options.upstream else { throw ConfigError("--upstream", "--listen needs --upstream LIST") }
            let eps: [JSON] = upstream.split(separator: ",").map { item in
                let parts = item.split(separator: "=", maxSplits: 1)
                if parts.count == 2 {
                    return .object([("address", .string(String(parts[0]))), ("weight", .string(String(parts[1])))])
                }
                return .string(String(item))
            }
            var cluster: [(String, JSON)] = [("name", .string("upstream")), ("endpoints", .array(eps))]
            if let lb = options.lb { cluster.append(("lb_policy", .string(lb))) }
            cluster += binary.clusterFlags
            let listener: [(String, JSON)] = [("name", .string("main")), ("address", .string(listen)),
                                              (binary.blockParser.key, .object(binary.flagBlock("upstream")))] + binary.listenerFlags
            let doc = JSON.object([
                ("listeners", .array([.object(listener)])),
                ("clusters", .array([.object(cluster)])),
            ])
            do {
                cfg = try ConfigLoader.load(yaml: doc.serialized(), parser: binary.blockParser)
            } catch {
                throw ConfigError(error.path, error.message + " (from flags)")
            }
        }
        if let w = options.workers {
            guard (1...256).contains(w) else { throw ConfigError("--workers", "\(w) is out of range 1...256") }
            cfg.workers = w
        }
        if let a = options.admin {
            do { cfg.adminAddress = try SocketAddress.parse(a) } catch { throw ConfigError("--admin", error.description) }
        }
        if let d = options.drainTimeout {
            guard let ms = parseDurationMs(d) else { throw ConfigError("--drain-timeout", "\"\(d)\" is not a duration") }
            cfg.drainTimeoutMs = ms
        }
        return cfg
    }

    init(options: CommonOptions, binary: ProxyBinary, config: ProxyConfig) {
        self.options = options
        self.binary = binary
        let n = binary.fixedWorkers ?? config.workers ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        self.store = StatsStore(threads: n + 1)
        self.serverStats = ServerStats(store: store)
        self.logger = Logger(label: binary.blockParser.binary)
        self.snapshot = ServerSnapshot(generation: 0, config: config, listeners: [:], clusters: [:])
        for i in 0..<n {
            let w = Worker(index: i, stats: store.slabs[i + 1], serverStats: serverStats)
            workers.append(w)
            workerHandles.append(w.handle)
        }
        store.mainSlab.set(serverStats.concurrency, n)
        store.mainSlab.set(serverStats.live, 1)
    }

    /// Builds a generation from a config (stats handles, cluster tables, filter factories).
    func buildSnapshot(_ config: ProxyConfig, generation: Int) -> ServerSnapshot {
        syncClusters(config)
        let clusters = clusterSnapshots()
        var listeners: [String: ListenerRuntime] = [:]
        for l in config.listeners {
            let count = listenerCounts[l.name] ?? SharedCount()
            listenerCounts[l.name] = count
            listeners[l.name] = ListenerRuntime(config: l, stats: ListenerStats(store: store, listener: l.name),
                                                openConnections: count,
                                                factories: l.chains.map { binary.makeFactory(l, $0.filter, clusters, store) })
        }
        return ServerSnapshot(generation: generation, config: config, listeners: listeners, clusters: clusters)
    }

    /// Makes `clusterRuntimes` match `config`: endpoints, health monitors (keeping each known
    /// host's rise/fall state), file watchers.
    private func syncClusters(_ config: ProxyConfig) {
        var next: [String: ClusterRuntime] = [:]
        for c in config.clusters {
            let old = clusterRuntimes[c.name]
            var initial = c.endpoints
            // A reload keeps the addresses DNS gave so far until the next answer.
            let dnsKind = c.discovery == "strict_dns" || c.discovery == "logical_dns"
            if dnsKind, let old, old.config.discovery == c.discovery { initial = old.endpoints }
            let rt = ClusterRuntime(config: c, endpoints: initial, stats: ClusterDiscoveryStats(store: store, cluster: c.name))
            if let old { rt.hostStats = old.hostStats }
            syncHostStats(rt)
            if let hc = c.healthCheck {
                let name = c.name
                let m = ClusterHealthMonitor(cluster: name, config: hc, dispatcher: dispatcher, store: store) { [unowned self] a, up, r in
                    healthChanged(cluster: name, address: a, healthy: up, result: r)
                }
                m.onPass = { [unowned self] a in activeCheckPassed(cluster: name, address: a) }
                m.setHosts(c.endpoints.map(\.address), previous: old?.monitor)
                rt.monitor = m
            }
            if dnsKind {
                let name = c.name
                rt.dns = StrictDnsDiscovery(
                    dispatcher: dispatcher, targets: c.dnsTargets, resolvers: c.dnsResolvers, family: c.dnsLookupFamily,
                    refreshMs: c.dnsRefreshMs, respectTtl: c.respectDnsTtl, initial: initial,
                    logical: c.discovery == "logical_dns",
                    onUpdate: { [unowned self] eps in endpointsChanged(cluster: name, eps) },
                    onFailure: { [unowned self] why in
                        if let rt = clusterRuntimes[name] { store.mainSlab.inc(rt.stats.updateFailure) }
                        logger.warning("DNS lookup failed, keeping the last good addresses", metadata: ["cluster": "\(name)", "error": "\(why)"])
                    })
                if rt.dns == nil { logger.error("cluster \(name): cannot start DNS resolution") }
            }
            if c.discovery == "file", let path = c.path {
                let name = c.name
                rt.watcher = FileWatcher(path: path, dispatcher: dispatcher) { [unowned self] in endpointsFileChanged(cluster: name) }
                if rt.watcher == nil { logger.warning("cannot watch \(path); cluster \(name) will not see changes") }
            }
            if c.outlierDetection != nil {
                rt.outlierStats = OutlierStats(store: store, cluster: c.name)
                if let old, old.config.outlierDetection != nil {
                    // Keep streaks and running ejections across a reload.
                    rt.outlierCounters = old.outlierCounters
                    rt.ejected = old.ejected
                    rt.ejectionCounts = old.ejectionCounts
                }
                syncOutlierCounters(rt)
                let od = c.outlierDetection!
                rt.decayTimer = Timer(dispatcher) { [unowned rt] in
                    for (a, n) in rt.ejectionCounts where rt.ejected[a] == nil {
                        if n <= 1 { rt.ejectionCounts.removeValue(forKey: a) } else { rt.ejectionCounts[a] = n - 1 }
                    }
                    rt.decayTimer?.arm(ms: od.intervalMs)
                }
                rt.decayTimer?.arm(ms: od.intervalMs)
            }
            next[c.name] = rt
        }
        // Ejections of clusters that lost outlier detection (or went away) end here.
        for (name, old) in clusterRuntimes where next[name]?.config.outlierDetection == nil {
            for t in old.ejected.values {
                t.cancel()
                if let st = old.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
            }
            old.ejected.removeAll()
        }
        clusterRuntimes = next
        for rt in next.values { writeEndpointsOut(rt) }
    }

    /// Gives every host of `rt.endpoints` its counters (kept ones stay) and forgets removed hosts'.
    private func syncHostStats(_ rt: ClusterRuntime) {
        var next: [SocketAddress: HostStats] = [:]
        next.reserveCapacity(rt.endpoints.count)
        for e in rt.endpoints { next[e.address] = rt.hostStats[e.address] ?? HostStats(threads: store.slabs.count) }
        rt.hostStats = next
    }

    /// Snapshots of every cluster; with `only`, the others are reused as they are (a health
    /// flip rebuilds one cluster's tables, not all of them).
    private func clusterSnapshots(only: String? = nil) -> [String: ClusterSnapshot] {
        var out: [String: ClusterSnapshot] = [:]
        for (name, rt) in clusterRuntimes {
            if let only, only != name, let keep = snapshot.clusters[name] { out[name] = keep; continue }
            let count = clusterCounts[name] ?? SharedCount()
            clusterCounts[name] = count
            let pending = pendingCounts[name] ?? SharedCount(), retries = retryCounts[name] ?? SharedCount()
            pendingCounts[name] = pending
            retryCounts[name] = retries
            let monitor = rt.monitor
            out[name] = ClusterSnapshot(config: rt.config, endpoints: rt.endpoints,
                                        healthy: { monitor?.isHealthy($0) ?? true },
                                        outlier: { (rt.outlierCounters[$0], rt.ejected[$0] != nil) },
                                        hostStats: { rt.hostStats[$0] ?? HostStats(threads: self.store.slabs.count) },
                                        store: store, openConnections: count, pending: pending, retries: retries)
        }
        return out
    }

    // MARK: - Outlier detection (main thread)

    /// Gives every current endpoint a streak counter; forgets hosts that left (and their ejections).
    private func syncOutlierCounters(_ rt: ClusterRuntime) {
        guard let od = rt.config.outlierDetection else { return }
        let name = rt.config.name
        let me = MainThreadRef(self)
        let main = dispatcher.handle
        let live = Set(rt.endpoints.map(\.address))
        for a in rt.outlierCounters.keys where !live.contains(a) { rt.outlierCounters.removeValue(forKey: a) }
        for a in rt.ejected.keys where !live.contains(a) {
            rt.ejected.removeValue(forKey: a)?.cancel()
            if let st = rt.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
        }
        for e in rt.endpoints where rt.outlierCounters[e.address] == nil {
            let address = e.address
            rt.outlierCounters[address] = OutlierCounter(threshold: od.consecutiveFailures) {
                main.post { me.object.eject(cluster: name, address: address) }
            }
        }
    }

    /// A host reached its failure streak: eject it, unless too many hosts are out already.
    func eject(cluster: String, address: SocketAddress) {
        guard let rt = clusterRuntimes[cluster], let od = rt.config.outlierDetection, let st = rt.outlierStats,
              rt.ejected[address] == nil, let counter = rt.outlierCounters[address] else { return }
        let cap = max(1, rt.endpoints.count * od.maxEjectionPercent / 100)
        if rt.ejected.count >= cap {
            store.mainSlab.inc(st.ejectionsOverflow)
            counter.reset()
            return
        }
        let times = (rt.ejectionCounts[address] ?? 0) + 1
        rt.ejectionCounts[address] = times
        let duration = min(od.baseEjectionMs * UInt64(times), od.maxEjectionMs)
        let timer = Timer(dispatcher) { [unowned self] in uneject(cluster: cluster, address: address, cause: "ejection time over") }
        timer.arm(ms: duration)
        rt.ejected[address] = timer
        store.mainSlab.inc(st.ejectionsTotal)
        store.mainSlab.inc(st.ejectionsEnforcedConsecutiveFailure)
        store.mainSlab.inc(st.ejectionsActive)
        logHealthEvent(cluster: cluster, address: address, from: "healthy", to: "ejected",
                       cause: "outlier: \(od.consecutiveFailures) consecutive failures, ejected for \(formatDuration(duration))")
        publishClusters(cluster)
    }

    private func uneject(cluster: String, address: SocketAddress, cause: String) {
        guard let rt = clusterRuntimes[cluster], let timer = rt.ejected.removeValue(forKey: address) else { return }
        timer.cancel()
        rt.outlierCounters[address]?.reset()
        if let st = rt.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
        logHealthEvent(cluster: cluster, address: address, from: "ejected", to: "healthy", cause: cause)
        publishClusters(cluster)
    }

    /// An active check passed: an ejected host comes back at once (Envoy's default).
    private func activeCheckPassed(cluster: String, address: SocketAddress) {
        if clusterRuntimes[cluster]?.ejected[address] != nil {
            uneject(cluster: cluster, address: address, cause: "active health check passed")
        }
    }

    private func logHealthEvent(cluster: String, address: SocketAddress, from: String, to: String, cause: String) {
        var line = JSON.object([
            ("time", .string(iso8601(wallMs()))), ("cluster", .string(cluster)), ("host", .string(address.description)),
            ("from", .string(from)), ("to", .string(to)), ("cause", .string(cause)),
        ]).serialized() + "\n"
        line.withUTF8 { _ = Glibc.write(healthLogFd, $0.baseAddress, $0.count) }
    }

    /// Sends workers the current cluster snapshots (same config generation).
    private func publishClusters(_ changed: String) {
        let s = snapshot
        snapshot = ServerSnapshot(generation: s.generation, config: s.config, listeners: s.listeners, clusters: clusterSnapshots(only: changed))
        let snap = snapshot
        for h in workerHandles { h.post { $0.apply(snap) } }
    }

    private func healthChanged(cluster: String, address: SocketAddress, healthy: Bool, result: CheckResult) {
        logHealthEvent(cluster: cluster, address: address, from: healthy ? "unhealthy" : "healthy",
                       to: healthy ? "healthy" : "unhealthy", cause: "\(result.code) \(result.detail)")
        publishClusters(cluster)
        if let rt = clusterRuntimes[cluster] { writeEndpointsOut(rt) }
    }

    /// New endpoints from discovery (file or DNS): checks, streaks and workers follow.
    private func endpointsChanged(cluster: String, _ eps: [EndpointConfig]) {
        guard let rt = clusterRuntimes[cluster], eps != rt.endpoints else { return }
        if eps.count > rt.config.maxHosts {
            // A runaway file or DNS answer: keep serving the last good set.
            store.mainSlab.inc(rt.stats.updateFailure)
            store.mainSlab.inc(rt.stats.updateRejected)
            logger.error("endpoints update rejected, keeping the last good set", metadata: [
                "cluster": "\(cluster)", "error": "\(eps.count) endpoints, over max_hosts (\(rt.config.maxHosts))"])
            return
        }
        rt.endpoints = eps
        syncHostStats(rt)
        rt.monitor?.setHosts(eps.map(\.address))
        syncOutlierCounters(rt)
        store.mainSlab.inc(rt.stats.updateSuccess)
        // The first hosts only: a 100,000-host set must not make a megabyte log line.
        let shown = eps.prefix(10).map(\.address.description).joined(separator: ",") + (eps.count > 10 ? ",..." : "")
        logger.info("endpoints updated", metadata: ["cluster": "\(cluster)", "count": "\(eps.count)", "hosts": "\(shown)"])
        publishClusters(cluster)
        writeEndpointsOut(rt)
    }

    private func endpointsFileChanged(cluster: String) {
        guard let rt = clusterRuntimes[cluster], let path = rt.config.path else { return }
        do {
            endpointsChanged(cluster: cluster, try EndpointsFile.load(path: path, keyPath: "clusters.\(cluster).path"))
        } catch {
            // Keep the last good set: a half-written or broken file never empties a cluster.
            store.mainSlab.inc(rt.stats.updateFailure)
            logger.error("endpoints file rejected, keeping the last good set: \(error)")
        }
    }

    private func writeEndpointsOut(_ rt: ClusterRuntime) {
        guard let path = rt.config.endpointsOut else { return }
        let eps = rt.endpoints.map { e -> (EndpointConfig, Bool, String) in
            let r = rt.monitor?.lastResult(e.address)
            let up = e.healthy && (rt.monitor?.isHealthy(e.address) ?? true)
            return (e, up, r.map { "\($0.code) \($0.detail)" } ?? "not checked yet")
        }
        let text = EndpointsFile.render(cluster: rt.config.name, endpoints: eps)
        if !writeFile(path, text) { logger.error("cannot write endpoints file \(path)") }
    }

    /// The --watch screen: every host of every cluster with its state and last check.
    func watchTable() -> String {
        let now = wallMs()
        var rows = [["CLUSTER", "HOST", "STATE", "SINCE", "LAST CHECK"]]
        var up = 0, total = 0
        for name in clusterRuntimes.keys.sorted() {
            let rt = clusterRuntimes[name]!
            for e in rt.endpoints {
                let ejected = rt.ejected[e.address] != nil
                let healthy = e.healthy && (rt.monitor?.isHealthy(e.address) ?? true) && !ejected
                total += 1
                if healthy { up += 1 }
                let since = rt.monitor?.lastChange(e.address).map { formatDuration(((now &- $0) / 1000) * 1000) } ?? "-"
                let last = rt.monitor?.lastResult(e.address).map { "\($0.code) \($0.detail)" } ?? "not checked yet"
                rows.append([name, e.address.description, ejected ? "EJECTED" : healthy ? "UP" : "DOWN", since, last])
            }
        }
        var widths = Array(repeating: 0, count: rows[0].count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = "\(binary.blockParser.binary) \(toolkitVersion)   \(iso8601(now))   \(up)/\(total) hosts up\n\n"
        for r in rows {
            out += r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
                .joined(separator: "  ") + "\n"
        }
        return out
    }

    /// How many times in a row, less decay, a host was ejected (admin /clusters).
    func ejectionMultiplier(cluster: String, address: SocketAddress) -> Int? {
        guard let rt = clusterRuntimes[cluster], rt.config.outlierDetection != nil else { return nil }
        return rt.ejectionCounts[address] ?? 0
    }

    /// The last active check of a host (admin /clusters).
    func lastCheck(cluster: String, address: SocketAddress) -> CheckResult? {
        clusterRuntimes[cluster]?.monitor?.lastResult(address)
    }

    /// Binds what `config` needs and `bound` lacks. All or nothing: on failure the new sockets
    /// are closed and the error names the listener.
    func bindListeners(_ config: ProxyConfig) throws(ConfigError) -> [String: (BoundListener, [Int32])] {
        var made: [String: (BoundListener, [Int32])] = [:]
        func rollback() { for (_, (_, fds)) in made { for fd in fds { close(fd) } } }
        for (i, l) in config.listeners.enumerated() {
            if let b = bound[l.name], b.address == l.address, b.balance == l.connectionBalance { continue }
            // A changed listener whose old socket holds the same concrete port must be released first.
            var fds: [Int32] = []
            var actual = l.address
            let count = l.connectionBalance == .exact ? 1 : workers.count
            // Unix sockets have no SO_REUSEPORT: one socket, and each worker accepts on a dup.
            let unix = l.address.family == .unix
            for k in 0..<count {
                let fd = unix && k > 0 ? dup(fds[0])
                    : l.datagram ? actual.withSockAddr { cshim_udp_bind($0, $1, 1) }
                    : actual.withSockAddr { cshim_listen($0, $1, l.connectionBalance == .kernel && !unix ? 1 : 0, Int32(l.backlog)) }
                if fd < 0 {
                    for f in fds { close(f) }
                    rollback()
                    throw ConfigError("listeners[\(i)].address", "cannot listen on \(actual): \(String(cString: strerror(-fd)))")
                }
                if unix && k > 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
                if actual.port == 0 && !unix, let real = SocketAddress.local(of: fd) { actual = real }
                fds.append(fd)
            }
            made[l.name] = (BoundListener(address: l.address, balance: l.connectionBalance, actual: actual, exact: nil), fds)
        }
        return made
    }

    func run() -> Int32 {
        let config = snapshot.config
        if config.healthEventLog != "/dev/stderr" {
            healthLogFd = config.healthEventLog == "/dev/stdout" ? 1 : open(config.healthEventLog, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            if healthLogFd < 0 { logger.error("cannot open health_event_log \(config.healthEventLog)"); return 1 }
        }
        let made: [String: (BoundListener, [Int32])]
        do { made = try bindListeners(config) } catch {
            logger.error("\(error)")
            return 1
        }
        snapshot = buildSnapshot(config, generation: 1)
        let snap = snapshot
        for h in workerHandles { h.post { $0.apply(snap) } }
        install(made)

        if let a = config.adminAddress {
            do { admin = try AdminServer(server: self, dispatcher: dispatcher, address: a) } catch {
                logger.error("admin: \(error)")
                return 1
            }
            if let a = admin, !a.address.isLoopback {
                logger.warning("admin endpoint is not on loopback: anyone who can reach it can stop, drain or fail this proxy; bind it to 127.0.0.1",
                               metadata: ["address": "\(a.address)"])
            }
        }
        for w in workers {
            threads.append(OSThread(name: "worker_\(w.index)") { w.run() })
        }
        signals.append(SignalWatcher(dispatcher, signal: SIGTERM) { [unowned self] in beginDrain(reason: "SIGTERM") })
        signals.append(SignalWatcher(dispatcher, signal: SIGINT) { [unowned self] in beginDrain(reason: "SIGINT") })
        signals.append(SignalWatcher(dispatcher, signal: SIGHUP) { [unowned self] in reload() })
        signals.append(SignalWatcher(dispatcher, signal: SIGUSR1) { [unowned self] in
            for h in workerHandles { h.post { $0.reopenAccessLogs() } }
        })
        tickTimer = Timer(dispatcher) { [unowned self] in
            store.mainSlab.set(serverStats.uptime, Int((monotonicMs() - startMs) / 1000))
            updateCertExpiry()
            tickTimer?.arm(ms: 1000)
        }
        tickTimer?.arm(ms: 1000)
        writeReadyFile()
        if binary.watch {
            if isatty(1) != 0 {
                watchTimer = Timer(dispatcher) { [unowned self] in
                    FileHandleOut.stdout("\u{1B}[H\u{1B}[2J" + watchTable())
                    watchTimer?.arm(ms: 1000)
                }
                watchTimer?.arm(ms: 0)
            } else {
                logger.notice("--watch: stdout is not a terminal; health changes are logged instead")
            }
        }
        logger.info("started", metadata: ["workers": "\(workers.count)",
                                          "listeners": "\(bound.map { "\($0.key)=\($0.value.actual)" }.sorted().joined(separator: ","))",
                                          "admin": "\(admin?.address.description ?? "off")"])
        dispatcher.run()
        // Loop exited: stop workers and wait for them.
        for h in workerHandles { h.post { w in w.closeAll(); w.flushAccessLogs(); w.dispatcher.exit() } }
        for t in threads { t.join() }
        // Unix socket files we created go with us.
        for l in snapshot.config.listeners where l.address.family == .unix { _ = unlink(l.address.host) }
        logger.info("exited", metadata: ["code": "\(exitCode)"])
        return exitCode
    }

    /// Hands freshly bound sockets to workers (or to the main thread's exact balancer).
    private func install(_ made: [String: (BoundListener, [Int32])]) {
        for (name, (b, fds)) in made {
            var b = b
            if b.balance == .exact {
                b.exact = ExactBalancer(server: self, fd: fds[0], listener: name)
            } else {
                for (i, h) in workerHandles.enumerated() {
                    let fd = fds[i]
                    h.post { $0.addListener(name: name, fd: fd) }
                }
            }
            bound[name] = b
        }
    }

    /// Stops and forgets listeners no longer in `config` (or whose address changed).
    private func unbindRemoved(_ config: ProxyConfig) {
        for (name, b) in bound {
            let keep = config.listeners.contains { $0.name == name && $0.address == b.address && $0.connectionBalance == b.balance }
            if keep { continue }
            b.exact?.stop()
            for h in workerHandles { h.post { $0.removeListener(name: name) } }
            bound.removeValue(forKey: name)
        }
    }

    /// SIGHUP: load the config file again. A valid one takes effect for new connections; open
    /// ones finish on the generation they started with. An invalid one changes nothing.
    public func reload() {
        guard state == "LIVE" else {
            logger.notice("reload: ignored while \(state)")
            return
        }
        guard options.config != nil else {
            logger.notice("reload: running from flags, nothing to reload")
            return
        }
        let newConfig: ProxyConfig
        do {
            newConfig = try Server.loadConfig(options: options, binary: binary)
            if let w = newConfig.workers, w != workers.count {
                throw ConfigError("workers", "changing the worker count needs a restart (running \(workers.count))")
            }
        } catch {
            store.mainSlab.inc(serverStats.reloadRejected)
            logger.error("reload rejected, keeping the running config: \(error)")
            return
        }
        // Bind what is new first (SO_REUSEPORT lets a moved listener overlap its old port), so
        // a failed bind leaves the running listeners untouched; then retire the old ones.
        // Listeners stopped by /drain_listeners stay stopped: nothing is bound.
        var made: [String: (BoundListener, [Int32])] = [:]
        if listenersStopped {
            logger.notice("reload: listeners stay stopped after /drain_listeners")
        } else {
            do { made = try bindListeners(newConfig) } catch {
                store.mainSlab.inc(serverStats.reloadRejected)
                logger.error("reload rejected, keeping the running config: \(error)")
                return
            }
        }
        unbindRemoved(newConfig)
        snapshot = buildSnapshot(newConfig, generation: snapshot.generation + 1)
        let snap = snapshot
        for h in workerHandles { h.post { $0.apply(snap) } }
        install(made)
        store.mainSlab.inc(serverStats.reloadSuccess)
        writeReadyFile()
        logger.info("reloaded", metadata: ["generation": "\(snap.generation)"])
    }

    /// SIGTERM/SIGINT: stop accepting, wait for open connections up to drain_timeout, exit 0.
    public func beginDrain(reason: String) {
        if state == "DRAINING" { return }
        state = "DRAINING"
        logger.info("draining", metadata: ["reason": "\(reason)", "timeout": "\(formatDuration(snapshot.config.drainTimeoutMs))"])
        stopListening(drainSessions: true)
        drainDeadline = monotonicMs() + snapshot.config.drainTimeoutMs
        drainTimer = Timer(dispatcher) { [unowned self] in checkDrain() }
        checkDrain()
    }

    /// POST /drain_listeners (and the start of a drain): stop accepting; open connections
    /// continue. The listeners stay stopped until exit: a reload does not bind them again.
    /// `drainSessions` (SIGTERM, `/drain_listeners?graceful`, as Envoy's option): every open
    /// session also hears `onDrain` (HTTP answers `Connection: close`, HTTP/2 sends GOAWAY).
    public func stopListening(drainSessions: Bool) {
        listenersStopped = true
        for (_, b) in bound { b.exact?.stop() }
        bound.removeAll()
        for h in workerHandles { h.post { w in w.stopListening(); if drainSessions { w.drain() } } }
    }

    private func checkDrain() {
        let open = store.value("server.total_connections") ?? 0
        if open <= 0 {
            logger.info("drained")
            dispatcher.exit()
        } else if monotonicMs() >= drainDeadline {
            logger.warning("drain timeout, closing open connections", metadata: ["open": "\(open)"])
            dispatcher.exit()
        } else {
            drainTimer?.arm(ms: 50)
        }
    }

    /// POST /quitquitquit: close everything and exit 0 now.
    public func quit() {
        state = "DRAINING"
        dispatcher.exit()
    }

    /// Addresses actually bound, by listener name.
    public var boundAddresses: [(String, SocketAddress)] {
        bound.map { ($0.key, $0.value.actual) }.sorted { $0.0 < $1.0 }
    }

    /// The certificates of the running config's TLS listeners and chains.
    var certificates: [(listener: String, chain: String, tls: TlsServerConfig)] {
        snapshot.config.listeners.flatMap { l in l.chains.compactMap { c in c.tls.map { (l.name, c.name, $0) } } }
    }

    private func updateCertExpiry() {
        let now = Int64(wallMs() / 1000)
        let days = certificates.compactMap { $0.tls.context.certificate?.daysUntilExpiration(nowSeconds: now) }.min()
        guard let days else { return }
        if certExpiryGauge == nil { certExpiryGauge = store.gauge("server.days_until_first_cert_expiring") }
        if let g = certExpiryGauge { store.mainSlab.set(g, Int(days)) }
    }

    public var uptimeSeconds: UInt64 { (monotonicMs() - startMs) / 1000 }

    /// The least loaded worker (by open connections), for the exact balancer.
    func leastLoadedWorker() -> WorkerHandle {
        var best = 0
        var bestLoad = Int64.max
        for (i, _) in workerHandles.enumerated() {
            let load = Int64(bitPattern: store.slabs[i + 1].load(serverStats.totalConnections.slot))
            if load < bestLoad { best = i; bestLoad = load }
        }
        return workerHandles[best]
    }

    private func writeReadyFile() {
        guard let path = options.readyFile else { return }
        var ls: [(String, JSON)] = []
        for (name, a) in boundAddresses { ls.append((name, .string(a.description))) }
        var fields: [(String, JSON)] = [("pid", .int(Int64(getpid()))), ("listeners", .object(ls))]
        if let a = admin { fields.append(("admin", .string(a.address.description))) }
        fields.append(("generation", .int(Int64(snapshot.generation))))
        let text = JSON.object(fields).serialized(pretty: true) + "\n"
        guard writeFile(path, text) else {
            logger.error("cannot write ready file \(path)")
            return
        }
    }
}

/// Envoy's discovery stats, `cluster.<name>.update_*`.
struct ClusterDiscoveryStats: Sendable {
    let updateSuccess: Counter
    let updateFailure: Counter
    /// Updates refused for exceeding a limit (`max_hosts`); also counted in update_failure.
    let updateRejected: Counter
    init(store: StatsStore, cluster: String) {
        updateSuccess = store.counter("cluster.\(cluster).update_success")
        updateFailure = store.counter("cluster.\(cluster).update_failure")
        updateRejected = store.counter("cluster.\(cluster).update_rejected")
    }
}

/// A cluster's live state on the main thread.
final class ClusterRuntime {
    let config: ClusterConfig
    /// The current endpoints: the config's, or the endpoints file's last good read.
    var endpoints: [EndpointConfig]
    var monitor: ClusterHealthMonitor?
    var watcher: FileWatcher?
    var dns: StrictDnsDiscovery?
    let stats: ClusterDiscoveryStats
    /// Outlier detection: each host's streak, the hosts ejected now (with their un-eject
    /// timers), and how many times each host was ejected (the time multiplier).
    var outlierCounters: [SocketAddress: OutlierCounter] = [:]
    var ejected: [SocketAddress: Timer] = [:]
    var ejectionCounts: [SocketAddress: Int] = [:]
    var outlierStats: OutlierStats?
    /// Each host's counters, by address: kept while the host is in `endpoints` (across health
    /// flips and reloads), dropped when discovery removes it.
    var hostStats: [SocketAddress: HostStats] = [:]
    /// Lowers the ejection multipliers of hosts that stayed in, every outlier interval.
    var decayTimer: Timer?
    init(config: ClusterConfig, endpoints: [EndpointConfig], stats: ClusterDiscoveryStats) {
        self.config = config; self.endpoints = endpoints; self.stats = stats
    }
}

/// `exact` connection balance: one accepting socket on the main thread; each connection goes
/// to the worker with the fewest open connections.
final class ExactBalancer {
    private var acceptor: Acceptor?

    init(server: Server, fd: Int32, listener: String) {
        acceptor = Acceptor(dispatcher: server.dispatcher, fd: fd, onAccept: { [unowned server] c, remote in
            server.leastLoadedWorker().post { w in
                guard let r = w.snapshot?.listeners[listener] else { close(c); return }
                w.accepted(fd: c, remote: remote, runtime: r)
            }
        }, onResourceError: { [unowned server] in
            if let r = server.snapshot.listeners[listener] { server.store.mainSlab.inc(r.stats.downstreamCxAcceptError) }
        })
    }

    func stop() { acceptor?.stop() }
}

/// Small file helpers (config, ready file), off the data path.
public func readFile(_ path: String) -> String? {
    readFileBytes(path).map { String(decoding: $0, as: UTF8.self) }
}

/// A file's bytes (at most 64 MiB; nil when it cannot be read or is larger).
public func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { break }
        bytes += chunk[0..<n]
        if bytes.count > 64 << 20 { return nil }
    }
    return bytes
}

/// Replaces the file at `path` with `text` (main thread, off the data path): the ready file,
/// `endpoints_out`. The bytes go to a fresh temp file in the same directory, created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name (a new name on a clash), which is then
/// renamed over `path`. So a reader sees the old file or the new one, never half of one, and
/// a symlink another local user planted at a predictable name (`path.tmp`) is never written
/// through. A symlink at `path` itself is replaced, not followed. On failure the temp file is
/// removed and `path` is unchanged. No fsync: after a power loss the file may be the old one.
public func writeFile(_ path: String, _ text: String) -> Bool {
    let slash = path.lastIndex(of: "/")
    let dir = slash.map { String(path[...$0]) } ?? ""
    let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
    var tmp = ""
    var fd: Int32 = -1
    for _ in 0..<16 {
        tmp = dir + "." + base + ".tmp-" + String(UInt64.random(in: 0 ... .max), radix: 36)
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        if fd >= 0 || errno != EEXIST { break }
    }
    guard fd >= 0 else { return false }
    var ok = true
    var t = text
    t.withUTF8 { p in
        var off = 0
        while off < p.count {
            let n = write(fd, p.baseAddress! + off, p.count - off)
            if n <= 0 { if n < 0 && errno == EINTR { continue }; ok = false; return }
            off += n
        }
    }
    if close(fd) != 0 { ok = false }
    if ok && rename(tmp, path) == 0 { return true }
    _ = unlink(tmp)
    return false
}

/// stdout/stderr writes without Foundation.
public enum FileHandleOut {
    public static func stdout(_ s: String) { var t = s; t.withUTF8 { _ = write(1, $0.baseAddress, $0.count) } }
    public static func stderr(_ s: String) { var t = s; t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }
}
