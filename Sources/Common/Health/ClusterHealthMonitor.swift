import CShim

/// Envoy's health check stats for one cluster, `cluster.<name>.health_check.*`.
struct HealthCheckStats: Sendable {
    let attempt: Counter
    let success: Counter
    let failure: Counter
    let networkFailure: Counter
    let healthy: Gauge

    init(store: StatsStore, cluster: String) {
        let p = "cluster.\(cluster).health_check."
        attempt = store.counter(p + "attempt")
        success = store.counter(p + "success")
        failure = store.counter(p + "failure")
        networkFailure = store.counter(p + "network_failure")
        healthy = store.gauge(p + "healthy")
    }
}

/// Runs one cluster's active health checks on the main thread: one timer and at most one
/// probe in flight per host. Hosts report only flips (rise/fall decide), so logs show
/// transitions, not every check.
public final class ClusterHealthMonitor {
    /// One host's checking state.
    final class HostChecker {
        let address: SocketAddress
        var state: HealthState
        var timer: Timer?
        var probe: HealthProbe?
        var lastChangeWallMs = wallMs()
        init(address: SocketAddress, state: HealthState) { self.address = address; self.state = state }
    }

    public let cluster: String
    public let config: HealthCheckConfig
    private let dispatcher: Dispatcher
    private let stats: HealthCheckStats
    private let slab: StatsSlab
    private var hosts: [SocketAddress: HostChecker] = [:]
    private var rng = FastRandom(seed: wallMs())
    /// Called on every flip: host, now healthy, the result that decided it.
    private let onChange: (SocketAddress, Bool, CheckResult) -> Void
    /// Called on every passing check (outlier detection un-ejects on it).
    public var onPass: ((SocketAddress) -> Void)?

    public init(cluster: String, config: HealthCheckConfig, dispatcher: Dispatcher, store: StatsStore,
                onChange: @escaping (SocketAddress, Bool, CheckResult) -> Void) {
        self.cluster = cluster; self.config = config; self.dispatcher = dispatcher
        self.stats = HealthCheckStats(store: store, cluster: cluster)
        self.slab = store.mainSlab
        self.onChange = onChange
    }

    deinit { for h in hosts.values { h.timer?.cancel() } }

    /// Checks exactly these hosts from now on. Hosts already known keep their state (a
    /// reload or an endpoints file update does not reset rise/fall); `previous` offers
    /// states from a monitor this one replaces.
    public func setHosts(_ addresses: [SocketAddress], previous: ClusterHealthMonitor? = nil) {
        let wanted = Set(addresses)
        for (a, h) in hosts where !wanted.contains(a) { h.timer?.cancel(); h.probe = nil; hosts.removeValue(forKey: a) }
        for a in addresses where hosts[a] == nil {
            let state = previous?.hosts[a]?.state ?? HealthState(rise: config.rise, fall: config.fall)
            let h = HostChecker(address: a, state: HealthState(rise: config.rise, fall: config.fall, healthy: state.healthy))
            hosts[a] = h
            h.timer = Timer(dispatcher) { [unowned self, unowned h] in runCheck(h) }
            h.timer?.arm(ms: config.initialJitterMs > 0 ? UInt64(rng.below(Int(config.initialJitterMs) + 1)) : 0)
        }
        updateGauge()
    }

    /// Whether `address` passes (unknown hosts count as healthy).
    public func isHealthy(_ address: SocketAddress) -> Bool { hosts[address]?.state.healthy ?? true }

    /// The last result for a host, for /clusters and tables.
    public func lastResult(_ address: SocketAddress) -> CheckResult? { hosts[address]?.state.last }

    /// When the host last flipped (or started being checked), wall-clock ms.
    public func lastChange(_ address: SocketAddress) -> UInt64? { hosts[address]?.lastChangeWallMs }

    private func runCheck(_ h: HostChecker) {
        slab.inc(stats.attempt)
        let probe = HealthProbe(dispatcher: dispatcher, address: h.address, config: config) { [unowned self, unowned h] r in
            h.probe = nil
            record(h, r)
        }
        h.probe = probe
        probe.start()
    }

    private func record(_ h: HostChecker, _ r: CheckResult) {
        if r.passed { slab.inc(stats.success); onPass?(h.address) } else {
            slab.inc(stats.failure)
            if case .l4Connect = r { slab.inc(stats.networkFailure) }
            if case .l4Timeout = r { slab.inc(stats.networkFailure) }
        }
        if h.state.record(r) {
            h.lastChangeWallMs = wallMs()
            updateGauge()
            onChange(h.address, h.state.healthy, r)
        }
        guard hosts[h.address] === h else { return }  // removed meanwhile
        var next = config.interval(for: h.state)
        if config.intervalJitterMs > 0 { next += UInt64(rng.below(Int(config.intervalJitterMs) + 1)) }
        h.timer?.arm(ms: next)
    }

    private func updateGauge() {
        slab.set(stats.healthy, hosts.values.filter { $0.state.healthy }.count)
    }
}

/// Watches one file for replacement (rename into place, as Envoy's path config sources
/// expect, or a rewrite) with inotify on its directory; calls back on the main thread.
public final class FileWatcher {
    private var fd: Int32 = -1
    private var event: OpaquePointer?
    private let name: String
    private let onChange: () -> Void

    public init?(path: String, dispatcher: Dispatcher, onChange: @escaping () -> Void) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { path[..<$0].isEmpty ? "/" : String(path[..<$0]) } ?? "."
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        self.onChange = onChange
        fd = cshim_inotify_watch_dir(dir)
        if fd < 0 { return nil }
        event = event_new(dispatcher.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, ctx in
            let w = Unmanaged<FileWatcher>.fromOpaque(ctx!).takeUnretainedValue()
            if cshim_inotify_drain(w.fd, w.name) != 0 { w.onChange() }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit {
        if let e = event { event_free(e) }
        if fd >= 0 { close(fd) }
    }
}

import CLibevent
import Glibc
