import Common
import Synchronization

/// Session counts per listener name that outlive config generations (max_sessions holds
/// across reloads). Factories are built on the main thread; the counts are shared atomics.
final class SessionCounts: Sendable {
    private let counts = Mutex<[String: SharedCount]>([:])
    func count(for listener: String) -> SharedCount {
        counts.withLock { c in
            if let x = c[listener] { return x }
            let x = SharedCount()
            c[listener] = x
            return x
        }
    }
}
