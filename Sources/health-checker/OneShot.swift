import Common
import Glibc

/// `--once`: every host of every checked cluster gets one check, all at the same time; the
/// summary goes to stdout and the exit code follows Nagios plugins: 0 OK (all up),
/// 1 WARNING (some down), 2 CRITICAL (none up), 3 UNKNOWN (bad arguments or config).
struct OneShot {
    let config: ProxyConfig
    let output: String

    struct Row {
        let cluster: String
        let host: SocketAddress
        let check: String
        var result: CheckResult?
    }

    func run() -> Int32 {
        let checked = config.clusters.filter { $0.healthCheck != nil }
        if checked.isEmpty {
            FileHandleOut.stderr("UNKNOWN - no cluster has a health_check\n")
            return 3
        }
        let dispatcher = Dispatcher(name: "main")
        var rows: [Row] = []
        for c in checked { for e in c.endpoints { rows.append(Row(cluster: c.name, host: e.address, check: c.healthCheck!.summary)) } }
        if rows.isEmpty {
            FileHandleOut.stdout("CRITICAL - no hosts to check\n")
            return 2
        }
        var probes: [HealthProbe] = []
        var pending = rows.count
        for (i, row) in rows.enumerated() {
            let cfg = checked.first { $0.name == row.cluster }!.healthCheck!
            let p = HealthProbe(dispatcher: dispatcher, address: row.host, config: cfg) { r in
                rows[i].result = r
                pending -= 1
                if pending == 0 { dispatcher.exit() }
            }
            probes.append(p)
        }
        for p in probes { p.start() }
        if pending > 0 { dispatcher.run() }
        withExtendedLifetime(probes) {}

        let up = rows.filter { $0.result?.passed == true }.count
        let status = up == rows.count ? "OK" : up == 0 ? "CRITICAL" : "WARNING"
        let code: Int32 = up == rows.count ? 0 : up == 0 ? 2 : 1
        switch output {
        case "json":
            let hosts: [JSON] = rows.map { r in
                .object([("cluster", .string(r.cluster)), ("host", .string(r.host.description)), ("check", .string(r.check)),
                         ("healthy", .bool(r.result?.passed == true)), ("code", .string(r.result?.code ?? "")),
                         ("detail", .string(r.result?.detail ?? ""))])
            }
            let doc = JSON.object([("status", .string(status)), ("up", .int(Int64(up))), ("total", .int(Int64(rows.count))),
                                   ("hosts", .array(hosts))])
            FileHandleOut.stdout(doc.serialized(pretty: true) + "\n")
        case "table":
            var table = [["CLUSTER", "HOST", "CHECK", "STATE", "RESULT"]]
            for r in rows {
                table.append([r.cluster, r.host.description, r.check, r.result?.passed == true ? "UP" : "DOWN",
                              "\(r.result?.code ?? "") \(r.result?.detail ?? "")"])
            }
            FileHandleOut.stdout(renderTable(table) + "\(status) - \(up)/\(rows.count) hosts up\n")
        default:
            let down = rows.filter { $0.result?.passed != true }
            var line = "\(status) - \(up)/\(rows.count) hosts up"
            if !down.isEmpty {
                line += ": " + down.map { "\($0.host) \($0.result?.code ?? "") \($0.result?.detail ?? "")" }.joined(separator: "; ")
            }
            FileHandleOut.stdout(line + "\n")
        }
        return code
    }
}

/// Left-aligned columns separated by two spaces.
func renderTable(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = Array(repeating: 0, count: first.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    return rows.map { r in
        r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}
