import CLibevent
import Glibc

/// One `host:port` of a strict_dns cluster.
public struct DnsTarget: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var weight: Int = 1
    public var hashKey: String?
    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    /// Parses `name:port`, `[v6]:port` or `ip:port`.
    public static func parse(_ text: String) -> DnsTarget? {
        if text.hasPrefix("["), let a = try? SocketAddress.parse(text) { return DnsTarget(host: a.host, port: a.port) }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":"), host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) else { return nil }
        return DnsTarget(host: host, port: port)
    }
}

/// `clusters[i].dns_lookup_family`.
public enum DnsLookupFamily: String, Sendable { case v4Only = "v4_only", v6Only = "v6_only", all }

/// strict_dns discovery (Envoy's), and logical_dns (one host at the first address): every A/AAAA record of every target is a host; names are
/// re-resolved every `dns_refresh_rate` (or at the records' TTL with `respect_dns_ttl`).
/// A name whose lookup fails or comes back empty keeps its last good addresses, so a DNS
/// outage never empties a cluster. Uses libevent's evdns on the main thread, never blocking it.
public final class StrictDnsDiscovery {
    private let dns: OpaquePointer
    private var targets: [DnsTarget]
    /// Last good addresses per target and family.
    private var v4: [[SocketAddress]]
    private var v6: [[SocketAddress]]
    private let family: DnsLookupFamily
    private let refreshMs: UInt64
    private let respectTtl: Bool
    private var timer: Timer?
    private var pending = 0
    private var roundFailures: [String] = []
    private var roundMinTtl = UInt32.max
    private let onUpdate: ([EndpointConfig]) -> Void
    private let onFailure: (String) -> Void
    private var last: [EndpointConfig]?
    /// logical_dns: one host, the first address of the answer (Envoy's logical DNS cluster).
    private let logical: Bool

    /// One query in flight; holds its owner weakly (freeing the evdns base fails pending queries).
    final class Query {
        weak var owner: StrictDnsDiscovery?
        let target: Int
        let v6: Bool
        init(owner: StrictDnsDiscovery, target: Int, v6: Bool) { self.owner = owner; self.target = target; self.v6 = v6 }
    }

    public init?(dispatcher: Dispatcher, targets: [DnsTarget], resolvers: [SocketAddress], family: DnsLookupFamily,
                 refreshMs: UInt64, respectTtl: Bool, initial: [EndpointConfig], logical: Bool = false,
                 onUpdate: @escaping ([EndpointConfig]) -> Void, onFailure: @escaping (String) -> Void) {
        guard let d = evdns_base_new(dispatcher.base, resolvers.isEmpty ? Int32(EVDNS_BASE_INITIALIZE_NAMESERVERS) : 0) else { return nil }
        dns = d
        for r in resolvers { _ = evdns_base_nameserver_ip_add(d, r.description) }
        _ = evdns_base_set_option(d, "timeout:", "1")
        _ = evdns_base_set_option(d, "attempts:", "2")
        self.targets = targets
        self.family = family
        self.refreshMs = refreshMs
        self.respectTtl = respectTtl
        self.onUpdate = onUpdate
        self.onFailure = onFailure
        self.logical = logical
        // Start from what the cluster had (a reload), per target.
        v4 = targets.map { t in initial.filter { $0.address.port == t.port && $0.address.family == .inet }.map(\.address) }
        v6 = targets.map { t in initial.filter { $0.address.port == t.port && $0.address.family == .inet6 }.map(\.address) }
        if !initial.isEmpty { last = initial }
        timer = Timer(dispatcher) { [unowned self] in resolveAll() }
        timer?.arm(ms: 0)
    }

    deinit {
        timer?.cancel()
        evdns_base_free(dns, 1)
    }

    private func resolveAll() {
        roundFailures = []
        roundMinTtl = .max
        for (i, t) in targets.enumerated() {
            // Numeric hosts need no lookup.
            if let a = try? SocketAddress.parse(t.host.contains(":") ? "[\(t.host)]:\(t.port)" : "\(t.host):\(t.port)") {
                if a.family == .inet { v4[i] = [a] } else { v6[i] = [a] }
                continue
            }
            if family != .v6Only { query(i, v6: false) }
            if family != .v4Only { query(i, v6: true) }
        }
        if pending == 0 { finishRound() }
    }

    private func query(_ i: Int, v6: Bool) {
        let q = Unmanaged.passRetained(Query(owner: self, target: i, v6: v6)).toOpaque()
        pending += 1
        let cb: evdns_callback_type = { result, type, count, ttl, addrs, arg in
            let q = Unmanaged<Query>.fromOpaque(arg!).takeRetainedValue()
            q.owner?.answer(q, result: result, count: Int(count), ttl: ttl, addrs: addrs)
        }
        let req = targets[i].host.withCString { name in
            v6 ? evdns_base_resolve_ipv6(dns, name, Int32(DNS_QUERY_NO_SEARCH), cb, q)
               : evdns_base_resolve_ipv4(dns, name, Int32(DNS_QUERY_NO_SEARCH), cb, q)
        }
        if req == nil {  // refused at once (callback not called)
            Unmanaged<Query>.fromOpaque(q).release()
            pending -= 1
            roundFailures.append("\(targets[i].host): lookup could not start")
        }
    }

    private func answer(_ q: Query, result: Int32, count: Int, ttl: Int32, addrs: UnsafeMutableRawPointer?) {
        pending -= 1
        let t = targets[q.target]
        if result == DNS_ERR_NONE, count > 0, let addrs {
            var got: [SocketAddress] = []
            for k in 0..<count {
                if q.v6 {
                    got.append(SocketAddress(ipv6: addrs.load(fromByteOffset: k * 16, as: in6_addr.self), port: t.port))
                } else {
                    got.append(SocketAddress(ipv4: addrs.load(fromByteOffset: k * 4, as: in_addr.self), port: t.port))
                }
            }
            if q.v6 { v6[q.target] = got } else { v4[q.target] = got }
            roundMinTtl = min(roundMinTtl, UInt32(max(ttl, 0)))
        } else if !(q.v6 && family == .all) || v4[q.target].isEmpty {
            // An AAAA miss next to A records is normal; anything else keeps the last good set.
            let why = result == DNS_ERR_NONE ? "no records" : String(cString: evdns_err_to_string(result))
            roundFailures.append("\(t.host) \(q.v6 ? "AAAA" : "A"): \(why)")
        }
        if pending == 0 { finishRound() }
    }

    private func finishRound() {
        var eps: [EndpointConfig] = []
        var seen = Set<SocketAddress>()
        for (i, t) in targets.enumerated() {
            for a in v4[i] + v6[i] where seen.insert(a).inserted {
                eps.append(EndpointConfig(address: a, weight: t.weight, healthy: true, hashKey: t.hashKey))
            }
        }
        if logical { eps = Array(eps.prefix(1)) }
        if !roundFailures.isEmpty { onFailure(roundFailures.joined(separator: "; ")) }
        if eps != last {
            last = eps
            onUpdate(eps)
        }
        var next = refreshMs
        if respectTtl && roundMinTtl != .max { next = max(UInt64(roundMinTtl) * 1000, 1000) }
        timer?.arm(ms: next)
    }
}
