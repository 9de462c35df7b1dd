import Glibc
import Logging
import Synchronization

/// The process's log level, shared by every logger: `--log-level` sets it at start, admin
/// `POST /logging?level=` at run time (Envoy's admin path).
public final class LogLevelControl: Sendable {
    private let raw = Atomic<Int>(2)
    public static let shared = LogLevelControl()
    public var level: Logger.Level {
        get { Logger.Level.allCases[raw.load(ordering: .relaxed)] }
        set { raw.store(Logger.Level.allCases.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }
}

/// Text or JSON log lines on stderr. One write per line; logging is off the data path.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    /// Reads and sets the process-wide level, so a change reaches every logger at once.
    public var logLevel: Logger.Level {
        get { LogLevelControl.shared.level }
        set { LogLevelControl.shared.level = newValue }
    }
    let label: String
    let json: Bool

    public init(label: String, level: Logger.Level, json: Bool) {
        self.label = label; self.json = json
        LogLevelControl.shared.level = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let ts = iso8601(wallMs())
        var all = metadata
        if let m = event.metadata { all.merge(m) { $1 } }
        var line: String
        if json {
            var fields: [(String, JSON)] = [("time", .string(ts)), ("level", .string(event.level.rawValue)),
                                            ("logger", .string(label)), ("msg", .string("\(event.message)"))]
            for (k, v) in all.sorted(by: { $0.key < $1.key }) { fields.append((k, .string("\(v)"))) }
            line = JSON.object(fields).serialized()
        } else {
            line = "\(ts) \(event.level.rawValue) [\(label)] \(event.message)"
            for (k, v) in all.sorted(by: { $0.key < $1.key }) { line += " \(k)=\(v)" }
        }
        line += "\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

extension Logger.Level {
    static func parse(_ s: String) -> Logger.Level? { Logger.Level(rawValue: s.lowercased()) }
}
