import Glibc

/// A pthread mutex protecting a value. Used instead of `Synchronization.Mutex` where threads
/// meet (the dispatcher inbox, the stats registry): Mutex is futex-based on Linux and
/// ThreadSanitizer cannot see it synchronise, so every use reported a false race.
public final class Locked<Value>: @unchecked Sendable {  // C boundary: every access to `value` holds `mutex`
    private var mutex = pthread_mutex_t()
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body(&value)
    }
}
