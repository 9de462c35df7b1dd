import Synchronization
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
    /// `configFromFlags` reads a file (redis-proxy's `--twemproxy`): SIGHUP calls it again.
    public var reloadsConfigFromFlags = false
    /// Worker threads regardless of config (health-checker: 0, all work is on the main thread).
    public var fixedWorkers: Int?
    /// Redraw a table of hosts and their health every second when stdout is a terminal.
    public var watch = false
    /// More clusters from the binary's own flags (http-proxy's `--route PREFIX=LIST`), each
    /// built like `upstream` from a `host:port[=weight]` list, with `--lb` and `clusterFlags`.
    /// With any, `--upstream` is optional (`flagBlock` is still called with "upstream": the
    /// binary knows whether it gave one).
    public var flagClusters: [(name: String, endpoints: String)] = []
    /// `--listen` may come without `--upstream` (http-proxy's `--https-redirect`: every
    /// request is answered by the proxy).
    public var listenNeedsNoUpstream = false
    /// Admin pages of the binary's own (redis-proxy's `/redis/shards`), listed in `/help`.
    public var adminPages: [AdminPage] = []

    public init(blockParser: FilterBlockParser,
                flagBlock: @escaping @Sendable (String) -> [(String, JSON)],
                listenerFlags: [(String, JSON)] = [], clusterFlags: [(String, JSON)] = [],
                makeFactory: @escaping @Sendable (ListenerConfig, any ListenerFilterConfig, [String: ClusterSnapshot], StatsStore) -> any FilterFactory) {
        self.blockParser = blockParser; self.flagBlock = flagBlock; self.makeFactory = makeFactory
        self.listenerFlags = listenerFlags; self.clusterFlags = clusterFlags
    }
}

/// A binary's own admin page: rendered on the main thread from the running snapshot.
public struct AdminPage: Sendable {
    public let path: String
    /// One line for `/help`.
    public let help: String
    /// (status, content type, body) for the snapshot and the query's parameters.
    public let render: @Sendable (ServerSnapshot, [String: String]) -> (Int, String, String)

    public init(path: String, help: String, render: @escaping @Sendable (ServerSnapshot, [String: String]) -> (Int, String, String)) {
        self.path = path; self.help = help; self.render = render
    }
}

/// The server's life, as Envoy's `server.state` names it (shown by /ready and /server_info).
public enum ServerState: String, Sendable {
    case live = "LIVE"
    case draining = "DRAINING"
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
    public internal(set) var snapshot: ServerSnapshot
    var workers: [Worker] = []
    var workerHandles: [WorkerHandle] = []
    var threads: [OSThread] = []
    /// Bound sockets per listener name (kept across reloads when the address is unchanged).
    var bound: [String: BoundListener] = [:]
    var listenerCounts: [String: SharedCount] = [:]
    var clusterCounts: [String: SharedCount] = [:]
    /// Circuit breaker counts that must outlive cluster snapshots: pending connects, retries.
    var pendingCounts: [String: SharedCount] = [:]
    var retryCounts: [String: SharedCount] = [:]
    /// Each cluster name's slot in the workers' cluster tables, for the process's life.
    var clusterSlots: [String: Int] = [:]
    /// Live cluster state on the main thread: endpoints (config or file), checks, watchers.
    var clusterRuntimes: [String: ClusterRuntime] = [:]
    /// Health flips as JSON lines (`health_event_log`).
    var healthLogFd: Int32 = 2
    var signals: [SignalWatcher] = []
    var admin: AdminServer?
    var drainTimer: Timer?
    var tickTimer: Timer?
    /// `server.days_until_first_cert_expiring` (Envoy's), registered once a certificate is loaded.
    var certExpiryGauge: Gauge?
    var watchTimer: Timer?
    let startWallMs = wallMs()
    let startMs = monotonicMs()
    /// `server.state` for /ready and /server_info.
    public internal(set) var state = ServerState.live
    /// POST /healthcheck/fail sets this; /ready then answers 503 (and so does http-proxy's
    /// health_check filter, read on the workers through `ServerHealth`).
    public var healthCheckFailed: Bool {
        get { ServerHealth.failed.load(ordering: .relaxed) }
        set { ServerHealth.failed.store(newValue, ordering: .relaxed) }
    }
    /// POST /drain_listeners stopped every listener: they stay stopped, across reloads too,
    /// until the process exits (a reload still updates clusters and listener settings).
    public internal(set) var listenersStopped = false
    var drainDeadline: UInt64 = 0
    var exitCode: Int32 = 0

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
        watchTlsFiles()
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

    /// SIGHUP: load the config file again. A valid one takes effect for new connections; open
    /// ones finish on the generation they started with. An invalid one changes nothing.
    public func reload(tlsFilesChanged: Bool = false) {
        guard state == .live else {
            logger.notice("reload: ignored while \(state)")
            return
        }
        // A changed certificate reloads a flag-built config too (it re-reads the files).
        guard options.config != nil || binary.reloadsConfigFromFlags || tlsFilesChanged else {
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
        watchTlsFiles()
        logger.info("reloaded", metadata: ["generation": "\(snap.generation)"])
    }

    // MARK: - Certificate files

    private var tlsWatchers: [String: FileWatcher] = [:]
    private var tlsReloadTimer: Timer?

    /// Every file a listener's TLS reads (certificates, keys, client CAs, CRLs, OCSP responses,
    /// ticket keys) is watched: replacing one (a rename into place, as cert-manager and certbot
    /// do, or a rewrite) reloads the config as SIGHUP does, after 200 ms of quiet so that a
    /// certificate and its key written one after the other load together. A file that does not
    /// load leaves the running config (`server.reload_rejected`).
    private func watchTlsFiles() {
        var paths = Set<String>()
        for l in snapshot.config.listeners {
            for c in l.chains {
                guard let t = c.tls else { continue }
                paths.insert(t.cert); paths.insert(t.key)
                if let x = t.clientCa { paths.insert(x) }
                if let x = t.crl { paths.insert(x) }
                if let x = t.ocspStaple { paths.insert(x) }
                for k in t.sessionTicketKeys { paths.insert(k) }
            }
        }
        for p in tlsWatchers.keys where !paths.contains(p) { tlsWatchers.removeValue(forKey: p) }
        for p in paths where tlsWatchers[p] == nil {
            tlsWatchers[p] = FileWatcher(path: p, dispatcher: dispatcher) { [unowned self] in
                logger.info("TLS file changed, reloading soon", metadata: ["path": "\(p)"])
                let t = tlsReloadTimer ?? Timer(dispatcher) { [unowned self] in reload(tlsFilesChanged: true) }
                tlsReloadTimer = t
                t.arm(ms: 200)
            }
        }
    }

    /// SIGTERM/SIGINT: stop accepting, wait for open connections up to drain_timeout, exit 0.
    public func beginDrain(reason: String) {
        if state == .draining { return }
        state = .draining
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
        writeReadyFile()  // its `listeners` is now empty (docs/config.md)
    }

    func checkDrain() {
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
        state = .draining
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

    func updateCertExpiry() {
        let now = Int64(wallMs() / 1000)
        let days = certificates.compactMap { $0.tls.context.certificate?.daysUntilExpiration(nowSeconds: now) }.min()
        guard let days else { return }
        if certExpiryGauge == nil { certExpiryGauge = store.gauge("server.days_until_first_cert_expiring") }
        if let g = certExpiryGauge { store.mainSlab.set(g, Int(days)) }
    }

    public var uptimeSeconds: UInt64 { (monotonicMs() - startMs) / 1000 }

    func writeReadyFile() {
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

/// Process-wide health the admin sets and any thread reads (one relaxed load).
public enum ServerHealth {
    /// `POST /healthcheck/fail` was called (and not undone by `/healthcheck/ok`).
    public static let failed = Atomic<Bool>(false)
}
