import CLibevent
import CShim
import Glibc
import Synchronization

/// One event loop (`event_base`) confined to one thread: the main thread or a worker.
///
/// Threading contract: every method except `post` runs on the loop's own thread. Other threads
/// talk to a loop only through `post`, handing it a `Sendable` closure; the data crossing is
/// immutable (snapshots). Objects that use a dispatcher are non-`Sendable` and live on its thread.
public final class Dispatcher {
    /// The libevent loop. Owned; freed in deinit.
    public let base: OpaquePointer
    /// The thread-safe part: posting work and stopping the loop.
    public let handle: DispatcherHandle
    /// Objects whose release waits until the current callbacks finished (Envoy's deferredDelete).
    private var graveyard: [AnyObject] = []
    /// Clears `graveyard` after the current round of callbacks.
    private var graveyardEvent: OpaquePointer?
    /// A name for logs ("main", "worker_0", ...).
    public let name: String

    /// Must run once, before any loop exists, so loops can be woken from other threads.
    public static let threadingReady: Bool = { evthread_use_pthreads() == 0 }()

    public init(name: String) {
        _ = Dispatcher.threadingReady
        let cfg = event_config_new()
        // One thread per base and no locks needed inside it, except for cross-thread activation,
        // which evthread_use_pthreads makes safe.
        event_config_set_flag(cfg, Int32(EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST.rawValue))
        guard let b = event_base_new_with_config(cfg) else {
            preconditionFailure("event_base_new failed: out of memory or no backend")
        }
        event_config_free(cfg)
        self.base = b
        self.name = name
        handle = DispatcherHandle(base: b)
        let ctx = Unmanaged.passUnretained(self).toOpaque()
        graveyardEvent = event_new(base, -1, 0, { _, _, ctx in
            Unmanaged<Dispatcher>.fromOpaque(ctx!).takeUnretainedValue().graveyard.removeAll(keepingCapacity: true)
        }, ctx)
    }

    deinit {
        handle.free()
        if let e = graveyardEvent { event_free(e) }
        event_base_free(base)
    }

    /// Runs `work` on this loop's thread. Safe from any thread.
    public func post(_ work: @escaping @Sendable () -> Void) { handle.post(work) }

    /// Keeps `object` alive until the callbacks of this loop iteration returned. Use it when an
    /// object ends its own life inside one of its callbacks.
    public func deferredRelease(_ object: AnyObject) {
        if graveyard.isEmpty { event_active(graveyardEvent, 0, 0) }
        graveyard.append(object)
    }

    /// Runs the loop until `exit()`. Returns when no events remain or exit was asked.
    public func run() {
        event_base_loop(base, Int32(EVLOOP_NO_EXIT_ON_EMPTY))
    }

    /// Stops the loop after the current callbacks. Safe from any thread.
    public func exit() { handle.exit() }
}

/// The thread-safe face of a dispatcher: post work, stop the loop.
public final class DispatcherHandle: @unchecked Sendable {  // C boundary: event_active/loopbreak are thread-safe after evthread_use_pthreads; the queue is under a Mutex
    private let base: OpaquePointer
    private let inbox = Locked<[@Sendable () -> Void]>([])
    private var inboxEvent: OpaquePointer?

    init(base: OpaquePointer) {
        self.base = base
        inboxEvent = event_new(base, -1, 0, { _, _, ctx in
            Unmanaged<DispatcherHandle>.fromOpaque(ctx!).takeUnretainedValue().drainInbox()
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    func free() { if let e = inboxEvent { event_free(e); inboxEvent = nil } }

    /// Runs `work` on the loop's thread, in posting order.
    public func post(_ work: @escaping @Sendable () -> Void) {
        let wasEmpty = inbox.withLock { q in
            q.append(work)
            return q.count == 1
        }
        if wasEmpty { event_active(inboxEvent, 0, 0) }
    }

    private func drainInbox() {
        let work = inbox.withLock { q -> [@Sendable () -> Void] in
            let w = q
            q.removeAll(keepingCapacity: true)
            return w
        }
        for w in work { w() }
    }

    /// Stops the loop after the current callbacks.
    public func exit() { event_base_loopbreak(base) }
}
