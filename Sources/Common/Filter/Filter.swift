/// Whether the filter manager calls the next filter.
public enum FilterStatus: Sendable { case `continue`, stopIteration }

/// A read-path connection filter. One instance per connection; every method runs on that
/// connection's worker. Read filters run in the order configured (FIFO); the last one is the
/// terminal filter (tcp_proxy, the HTTP connection manager, redis_proxy) that consumes data.
/// Do no I/O in `initialize(connection:)`; start it in `onNewConnection()`.
public protocol ReadFilter: AnyObject {
    func initialize(connection: Connection)
    /// Called once, after every filter was initialized.
    func onNewConnection() -> FilterStatus
    /// New bytes are in `connection.readBuffer`; a filter consumes what it handles (drains it).
    /// `endStream`: the peer half-closed; no more bytes will come.
    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus
}

extension ReadFilter {
    public func initialize(connection: Connection) {}
    public func onNewConnection() -> FilterStatus { .continue }
}

/// A write-path filter: sees bytes on their way out, in reverse order of configuration (LIFO),
/// so the filter nearest the socket sees them last.
public protocol WriteFilter: AnyObject {
    func onWrite(_ buffer: Buffer, endStream: Bool) -> FilterStatus
}

/// Events of a connection, delivered to its owner (the terminal filter or the upstream user).
public protocol ConnectionCallbacks: AnyObject {
    /// An outbound connection finished connecting.
    func onConnected(_ connection: Connection)
    /// An outbound connect failed (refused, unreachable, reset). Not called after success.
    func onConnectFailed(_ connection: Connection, errno: Int32)
    /// Bytes arrived on a connection that has no read filters (upstream side).
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool)
    /// The connection closed; `remote`: the peer reset or errored, not us.
    func onClose(_ connection: Connection, remote: Bool)
    /// The connection's write buffer went over its high watermark: stop feeding it.
    func onAboveWriteBufferHighWatermark(_ connection: Connection)
    /// ... and back under its low watermark: feed it again.
    func onBelowWriteBufferLowWatermark(_ connection: Connection)
    /// `bytes` went from this connection straight to its splice target (no filter saw them).
    func onSpliced(_ connection: Connection, bytes: Int)
    /// The TLS handshake finished (`Connection.startTls`).
    func onTlsHandshake(_ connection: Connection)
}

extension ConnectionCallbacks {
    public func onSpliced(_ connection: Connection, bytes: Int) {}
    public func onTlsHandshake(_ connection: Connection) {}
}
