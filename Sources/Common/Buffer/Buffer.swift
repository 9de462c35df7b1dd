import Glibc

/// A pool of fixed-size memory blocks for buffers, one per worker (not thread-safe). Idle
/// connections hold no block; a block is taken on the first read and returned when the buffer
/// drains, so memory follows the data in flight, not the connection count (as HAProxy's pools).
public final class BlockPool {
    /// Size of every block.
    public let blockSize: Int
    /// Free blocks kept for reuse, at most `maxFree`.
    private var free: [UnsafeMutableRawPointer] = []
    private let maxFree: Int

    public init(blockSize: Int = 64 * 1024, maxFree: Int = 256) {
        self.blockSize = blockSize
        self.maxFree = maxFree
    }

    deinit { for b in free { Glibc.free(b) } }

    @inline(__always) public func take() -> UnsafeMutableRawPointer {
        if let b = free.popLast() { return b }
        guard let b = malloc(blockSize) else { preconditionFailure("out of memory") }
        return b
    }

    @inline(__always) public func give(_ block: UnsafeMutableRawPointer) {
        if free.count < maxFree { free.append(block) } else { Glibc.free(block) }
    }
}

/// A byte queue: bytes are appended at the tail and consumed from the head. Storage is one
/// pooled block while the content fits, a malloc'ed larger region beyond (bounded by the
/// owner's watermarks), and nothing at all while empty. Confined to one worker.
public final class Buffer {
    /// The storage, or nil when empty and released.
    @usableFromInline var base: UnsafeMutableRawPointer?
    /// Capacity of `base`.
    @usableFromInline var capacity = 0
    /// Offset of the first unread byte.
    @usableFromInline var head = 0
    /// Offset one past the last byte.
    @usableFromInline var tail = 0
    /// Where blocks come from and go back to.
    public let pool: BlockPool

    public init(pool: BlockPool) { self.pool = pool }

    deinit { release() }

    /// Bytes queued.
    @inlinable public var count: Int { tail - head }
    @inlinable public var isEmpty: Bool { tail == head }

    /// The queued bytes, valid until the buffer next changes.
    @inlinable public var readable: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { $0 + head }, count: tail - head)
    }

    /// Makes room for at least `min` bytes at the tail and returns the writable region.
    public func reserve(_ min: Int) -> UnsafeMutableRawBufferPointer {
        if base == nil {
            if min <= pool.blockSize {
                base = pool.take(); capacity = pool.blockSize
            } else {
                base = malloc(min); capacity = min
            }
            head = 0; tail = 0
        } else if capacity - tail < min {
            let used = tail - head
            if used + min <= capacity {
                memmove(base!, base! + head, used)
            } else {
                let newCap = Swift.max(capacity * 2, used + min)
                let nb = malloc(newCap)!
                memcpy(nb, base! + head, used)
                freeStorage()
                base = nb; capacity = newCap
            }
            head = 0; tail = used
        }
        return UnsafeMutableRawBufferPointer(start: base! + tail, count: capacity - tail)
    }

    /// Marks `n` bytes written into the region `reserve` returned.
    @inlinable public func commit(_ n: Int) { tail += n }

    /// Appends a copy of `bytes`.
    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let dst = reserve(bytes.count)
        dst.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        tail += bytes.count
    }

    public func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    /// Moves all of `other`'s bytes to the tail of this buffer: the storage itself when this one
    /// is empty (no copy), a copy otherwise. `other` ends empty.
    public func moveAll(from other: Buffer) {
        if other.isEmpty { return }
        if base == nil && other.pool === pool {
            base = other.base; capacity = other.capacity; head = other.head; tail = other.tail
            other.base = nil; other.capacity = 0; other.head = 0; other.tail = 0
            return
        }
        append(other.readable)
        other.drain(other.count)
    }

    /// Discards `n` bytes from the head; releases the storage once empty.
    @inlinable public func drain(_ n: Int) {
        head += n
        if head == tail { release() }
    }

    /// Returns the storage to the pool (or frees it) and empties the buffer.
    public func release() {
        if base != nil { freeStorage() }
        base = nil; capacity = 0; head = 0; tail = 0
    }

    private func freeStorage() {
        if capacity == pool.blockSize { pool.give(base!) } else { free(base!) }
    }
}
