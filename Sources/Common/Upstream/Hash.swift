/// FNV-1a 64-bit: stable across runs and machines (host placement must not change on restart).
@inlinable public func fnv1a64<C: Collection>(_ bytes: C, seed: UInt64 = 0xcbf29ce484222325) -> UInt64 where C.Element == UInt8 {
    var h = seed
    for b in bytes { h ^= UInt64(b); h &*= 0x100000001b3 }
    return h
}

/// A 64-bit finaliser (splitmix64) to spread FNV's low bits.
@inlinable public func mix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9e3779b97f4a7c15
    z = (z ^ (z >> 30)) &* 0xbf58476d1ce4e5b9
    z = (z ^ (z >> 27)) &* 0x94d049bb133111eb
    return z ^ (z >> 31)
}

/// A small, fast per-worker PRNG (xorshift64*). Not for secrets.
public struct FastRandom {
    var state: UInt64
    public init(seed: UInt64) { state = seed == 0 ? 0x9e3779b97f4a7c15 : seed }
    public mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 2685821657736338717
    }
    /// Uniform in 0..<n.
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
