import COpenSSL

/// Random 64-bit values from OpenSSL's CSPRNG (`RAND_bytes`), fetched 4 KiB at a time so a
/// value costs a load, not a call. For values a peer must not predict from earlier ones
/// (`X-Request-Id`); `FastRandom` stays for balancing and jitter, where speed matters and
/// prediction does not. One per worker; not thread-safe.
public final class SecureRandom {
    private let words: UnsafeMutablePointer<UInt64>
    private let count = 512
    private var next = 512

    public init() { words = .allocate(capacity: count) }
    deinit { words.deallocate() }

    public func nextUInt64() -> UInt64 {
        if next == count {
            if RAND_bytes(UnsafeMutableRawPointer(words).assumingMemoryBound(to: UInt8.self), Int32(count * 8)) != 1 {
                // OpenSSL's DRBG does not fail once seeded; should it, fall back to the kernel.
                _ = getrandom(words, count * 8, 0)
            }
            next = 0
        }
        defer { next += 1 }
        return words[next]
    }
}
