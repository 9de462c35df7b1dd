import CLibevent
import CShim
import Glibc

/// Delivers a POSIX signal as a callback on a dispatcher (libevent's signal events).
public final class SignalWatcher {
    private var event: OpaquePointer?
    private let callback: () -> Void

    public init(_ dispatcher: Dispatcher, signal: Int32, _ callback: @escaping () -> Void) {
        self.callback = callback
        event = cshim_evsignal_new(dispatcher.base, signal, { _, _, ctx in
            Unmanaged<SignalWatcher>.fromOpaque(ctx!).takeUnretainedValue().callback()
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit { if let e = event { event_del(e); event_free(e) } }
}
