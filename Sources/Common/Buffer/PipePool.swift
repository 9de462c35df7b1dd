import CShim
import Glibc

/// A worker's spare pipes for splice(2), so a bulk transfer does not pay pipe2/close per
/// connection. Only empty pipes come back. Confined to one worker.
public final class PipePool {
    /// Bytes a pipe holds (F_SETPIPE_SZ; the kernel may round up).
    public let capacity: Int
    private var free: [(Int32, Int32)] = []
    private let maxFree: Int
    /// pipe2 failed (EMFILE, or a kernel without splice): stop trying for a while.
    private var failedAt: UInt64 = 0

    public init(capacity: Int = 256 * 1024, maxFree: Int = 64) {
        self.capacity = capacity
        self.maxFree = maxFree
    }

    deinit { for (r, w) in free { close(r); close(w) } }

    public func take() -> (Int32, Int32)? {
        if let p = free.popLast() { return p }
        if failedAt != 0 && monotonicMs() &- failedAt < 1000 { return nil }
        var fds: [Int32] = [-1, -1]
        if cshim_pipe(&fds, Int32(capacity)) != 0 { failedAt = monotonicMs(); return nil }
        return (fds[0], fds[1])
    }

    public func give(_ p: (Int32, Int32)) {
        if free.count < maxFree { free.append(p) } else { close(p.0); close(p.1) }
    }
}
