import CLibevent
import CShim
import Glibc
import Logging

/// The health-checker's `--watch` screen.
extension Server {
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
}
