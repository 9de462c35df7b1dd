import CLibevent
import CShim

/// A one-shot or repeating timer on a dispatcher. Confined to the dispatcher's thread.
/// The callback must not capture the timer's owner strongly (use `[unowned self]`).
public final class Timer {
    private var event: OpaquePointer?
    private let callback: () -> Void

    public init(_ dispatcher: Dispatcher, _ callback: @escaping () -> Void) {
        self.callback = callback
        event = cshim_evtimer_new(dispatcher.base, { _, _, ctx in
            Unmanaged<Timer>.fromOpaque(ctx!).takeUnretainedValue().callback()
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { if let e = event { event_free(e) } }

    /// (Re)arms the timer to fire once after `ms` milliseconds.
    public func arm(ms: UInt64) {
        var tv = timeval(tv_sec: Int(ms / 1000), tv_usec: Int((ms % 1000) * 1000))
        event_add(event, &tv)
    }

    public func cancel() { event_del(event) }

    public var isArmed: Bool { event_pending(event, Int16(EV_TIMEOUT), nil) != 0 }
}

/// Monotonic time in milliseconds (coarse clock; good to a few ms).
@inline(__always) public func monotonicMs() -> UInt64 { cshim_now_ms() }
/// Wall-clock time in milliseconds since the epoch.
@inline(__always) public func wallMs() -> UInt64 { cshim_wall_ms() }
