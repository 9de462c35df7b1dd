import COpenSSL

/// A ketama ring (libketama, as twemproxy builds it, so keys land where nutcracker put them):
/// each live host gets `160 × weight share × hosts` points, four per MD5 of "`hash_key`-i",
/// each point a little-endian 32-bit slice of the digest; a key goes to the first point at or
/// after its hash, wrapping around. Adding a host moves about 1/N of the keys.
public struct KetamaRing: Sendable {
    /// Sorted point values and, in step, the host index each belongs to.
    public let points: [UInt32]
    public let owners: [Int32]

    public static let pointsPerServer: Float = 160

    public init(hosts: [Host]) {
        let live = hosts.indices.filter { hosts[$0].healthy }
        var pairs: [(UInt32, Int32)] = []
        let total = Float(live.reduce(0) { $0 + hosts[$1].weight })
        for i in live {
            let share = Float(hosts[i].weight) / total
            // Float arithmetic as twemproxy does it, so the point counts match exactly.
            let perServer = UInt32(((share * KetamaRing.pointsPerServer / 4 * Float(live.count) + 0.0000000001) as Float).rounded(.down)) * 4
            let name = hosts[i].hashKey
            for p in 0..<(perServer / 4) {
                let digest = md5(Array("\(name)-\(p)".utf8))
                for x in 0..<4 {
                    let v = UInt32(digest[4 * x]) | UInt32(digest[4 * x + 1]) << 8 | UInt32(digest[4 * x + 2]) << 16 | UInt32(digest[4 * x + 3]) << 24
                    pairs.append((v, Int32(i)))
                }
            }
        }
        pairs.sort { $0.0 < $1.0 }
        points = pairs.map(\.0)
        owners = pairs.map(\.1)
    }

    /// The host index for a 32-bit key hash; nil when no host is live.
    public func lookup(_ hash: UInt32) -> Int? {
        if points.isEmpty { return nil }
        var lo = 0, hi = points.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if points[mid] < hash { lo = mid + 1 } else { hi = mid }
        }
        return Int(owners[lo == points.count ? 0 : lo])
    }
}

/// MD5 of `bytes` (OpenSSL). Used for ring points only, never for security.
public func md5(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 16)
    var len: UInt32 = 0
    _ = bytes.withUnsafeBytes { b in EVP_Digest(b.baseAddress, b.count, &out, &len, EVP_md5(), nil) }
    return out
}

/// twemproxy's `fnv1a_64` key hash (see `TwemproxyHash`), for keys to land where nutcracker's
/// `hash: fnv1a_64` puts them.
public func twemproxyFnv1a64(_ key: [UInt8]) -> UInt32 {
    key.withUnsafeBytes { TwemproxyHash.fnv1a_64.hash($0) }
}

/// Ring hash balancing over a ketama ring. Without a hash key it picks a random point.
public final class RingHashLoadBalancer: LoadBalancer {
    private let ring: KetamaRing
    private var rng: FastRandom

    public init(ring: KetamaRing, seed: UInt64) { self.ring = ring; rng = FastRandom(seed: seed) }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        var h = UInt32(truncatingIfNeeded: hashKey ?? rng.next())
        for _ in 0..<8 {
            guard let i = ring.lookup(h) else { return nil }
            if !attempted.contains(i) { return i }
            h = UInt32(truncatingIfNeeded: mix64(UInt64(h)))
        }
        return ring.lookup(h)
    }
}
