/// Two connections pumping bytes to each other: the core's byte relay, for a connection that
/// leaves its protocol behind (an HTTP Upgrade such as WebSocket, a CONNECT tunnel, later Redis
/// pub/sub). Half-close is honoured (a FIN one way is passed on once flushed; the other way
/// keeps flowing), each side's write buffer over its high watermark pauses reading on the
/// other side, and an abnormal end of one side lets the other flush what it has and close.
///
/// ```
/// a.readBuffer ──► b.write        a's queue over its watermark ⇒ b.readDisable
/// b.readBuffer ──► a.write        FIN from a ⇒ b half-closed once flushed
/// ```
///
/// The relay becomes both connections' `callbacks` (and the reader of `a`: its read filters
/// are dropped). Bytes already read on either side are sent on at once. The owner hears
/// `relayFinished` once, when both sides are closed, and keeps the relay alive until then.
/// Confined to one worker.
public final class Relay: ConnectionCallbacks {
    public let a: Connection
    public let b: Connection
    private unowned(unsafe) let owner: RelayOwner
    public private(set) var bytesAtoB: UInt64 = 0
    public private(set) var bytesBtoA: UInt64 = 0
    /// Last time a byte moved either way (for the owner's idle timeout).
    public private(set) var lastActivityMs: UInt64
    private var finished = false

    public init(a: Connection, b: Connection, owner: RelayOwner) {
        self.a = a; self.b = b; self.owner = owner
        lastActivityMs = monotonicMs()
    }

    /// Takes both connections over and sends on what they already hold.
    public func start() {
        a.readFilters = []
        a.callbacks = self
        b.callbacks = self
        if !a.readBuffer.isEmpty || a.readEOF { onData(a, a.readBuffer, endStream: a.readEOF) }
        if !b.readBuffer.isEmpty || b.readEOF { onData(b, b.readBuffer, endStream: b.readEOF) }
        if finished { return }
        a.continueReading()
        b.continueReading()
    }

    /// Ends both sides now (owner's timeout, drain timeout).
    public func close() {
        if a.state != .closed { a.close() }
        if b.state != .closed { b.close() }
        finishIfDone()
    }

    // MARK: - ConnectionCallbacks

    public func onConnected(_ connection: Connection) {}
    public func onConnectFailed(_ connection: Connection, errno: Int32) {}

    public func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        let peer = connection === a ? b : a
        let n = buffer.count
        if n > 0 { lastActivityMs = monotonicMs() }
        if connection === a { bytesAtoB &+= UInt64(n) } else { bytesBtoA &+= UInt64(n) }
        if peer.state == .closed { buffer.release(); return }
        peer.write(buffer, endStream: endStream)
    }

    public func onClose(_ connection: Connection, remote: Bool) {
        let peer = connection === a ? b : a
        if peer.state != .closed {
            // A clean end (FIN both ways) closes the other side too once it is flushed; an
            // abnormal one lets it deliver what it has queued, then close.
            peer.closeAfterFlush()
        }
        finishIfDone()
    }

    public func onAboveWriteBufferHighWatermark(_ connection: Connection) {
        (connection === a ? b : a).readDisable()
    }

    public func onBelowWriteBufferLowWatermark(_ connection: Connection) {
        (connection === a ? b : a).readEnable()
    }

    private func finishIfDone() {
        guard !finished, a.state == .closed, b.state == .closed else { return }
        finished = true
        a.callbacks = nil
        b.callbacks = nil
        owner.relayFinished(self)
    }
}

/// Who started a relay and learns when it ends (both sides closed). Called on the relay's worker.
public protocol RelayOwner: AnyObject {
    func relayFinished(_ relay: Relay)
}
