import CShim
import Glibc

/// Starts a detached-from-Swift-concurrency OS thread running `body`, and joins it later.
/// `body` runs the thread's loop; the objects it owns are created on that thread.
public final class OSThread {
    private var tid = pthread_t()
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    public init(name: String, _ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box({ cshim_set_thread_name(name); body() })).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    public func join() { pthread_join(tid, nil) }
}
