import COpenSSL

/// twemproxy's key hash functions (`hash:` in nutcracker.yml), computed exactly as nutcracker
/// 0.5.0 does on x86-64, C quirks included, so keys land where nutcracker put them:
/// - several functions read the key through a signed `char`, so bytes ≥ 0x80 enter sign-extended
///   (one_at_a_time, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh's 3-byte tail);
/// - 64-bit FNV results are truncated to 32 bits (and fnv1a_64 works in 32 bits throughout);
/// - `crc16` keeps a 32-bit register (bits above 16 included);
/// - `crc32` is libmemcached's (bits 16..30 of the CRC), `crc32a` the standard CRC-32;
/// - murmur and jenkins read little-endian words, as on the x86 machines nutcracker runs on.
/// Checked key by key against a running nutcracker (Tests/Fixtures/redis/gen_twemproxy_vectors.py).
public enum TwemproxyHash: String, CaseIterable, Sendable {
    case oneAtATime = "one_at_a_time"
    case md5
    case crc16
    case crc32
    case crc32a
    case fnv1_64
    case fnv1a_64
    case fnv1_32
    case fnv1a_32
    case hsieh
    case murmur
    case jenkins

    /// twemproxy's default (`hash:` unset).
    public static let `default` = TwemproxyHash.fnv1a_64

    /// The key's hash as nutcracker's `server_pool_hash` computes it: 0 for an empty key
    /// (the function is not called), else the function's value.
    public func poolHash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        key.isEmpty ? 0 : hash(key)
    }

    /// The function itself.
    public func hash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        switch self {
        case .oneAtATime: return Self.oneAtATime(key)
        case .md5: return Self.md5First32(key)
        case .crc16: return Self.crc16(key)
        case .crc32: return (~Self.crc32Raw(key) >> 16) & 0x7fff
        case .crc32a: return ~Self.crc32Raw(key)
        case .fnv1_64:
            // The 64-bit product's low 32 bits depend only on the operands' low 32 bits.
            var h: UInt32 = 0x84222325
            for b in key { h = h &* 0x000001b3; h ^= signExtended(b) }
            return h
        case .fnv1a_64:
            var h: UInt32 = 0x84222325  // (uint32_t) 0xcbf29ce484222325
            for b in key { h ^= signExtended(b); h = h &* 0x000001b3 }  // (uint32_t) 0x100000001b3
            return h
        case .fnv1_32:
            var h: UInt32 = 2166136261
            for b in key { h = h &* 16777619; h ^= signExtended(b) }
            return h
        case .fnv1a_32:
            var h: UInt32 = 2166136261
            for b in key { h ^= signExtended(b); h = h &* 16777619 }
            return h
        case .hsieh: return Self.hsieh(key)
        case .murmur: return Self.murmur(key)
        case .jenkins: return Self.jenkins(key)
        }
    }

    /// A byte read through C's signed `char` and converted to uint32_t.
    @inline(__always) private func signExtended(_ b: UInt8) -> UInt32 { UInt32(bitPattern: Int32(Int8(bitPattern: b))) }

    private static func oneAtATime(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var v: UInt32 = 0
        for b in key {
            v = v &+ UInt32(bitPattern: Int32(Int8(bitPattern: b)))
            v = v &+ (v << 10)
            v ^= v >> 6
        }
        v = v &+ (v << 3)
        v ^= v >> 11
        v = v &+ (v << 15)
        return v
    }

    private static func md5First32(_ key: UnsafeRawBufferPointer) -> UInt32 {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { out in
            var len: UInt32 = 0
            _ = EVP_Digest(key.baseAddress, key.count, out.baseAddress, &len, EVP_md5(), nil)
            return UInt32(out[0]) | UInt32(out[1]) << 8 | UInt32(out[2]) << 16 | UInt32(out[3]) << 24
        }
    }

    /// nutcracker 0.5.0's crc16: the XMODEM/CCITT table (poly 0x1021, init 0), but with a
    /// 32-bit register that is shifted left and never masked, so the bits above 16 pile up
    /// into the result. (Later twemproxy sources have a different, kernel-table crc16; the
    /// placement fixture settles which one Debian's 0.5.0 runs: this one, 298 of 298 keys.)
    private static func crc16(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0
        for b in key {
            var x = (((crc >> 8) ^ UInt32(b)) & 0xff) << 8
            for _ in 0..<8 { x = x & 0x8000 != 0 ? (x << 1) ^ 0x1021 : x << 1 }
            crc = (crc << 8) ^ (x & 0xffff)
        }
        return crc
    }

    /// The CRC-32 register (poly 0xEDB88320 reflected, init all ones), before the final inversion.
    private static func crc32Raw(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in key {
            var x = (crc ^ UInt32(b)) & 0xff
            for _ in 0..<8 { x = x & 1 != 0 ? (x >> 1) ^ 0xEDB8_8320 : x >> 1 }
            crc = (crc >> 8) ^ x
        }
        return crc
    }

    @inline(__always) private static func get16(_ k: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(k[i]) | UInt32(k[i + 1]) << 8
    }

    private static func hsieh(_ key: UnsafeRawBufferPointer) -> UInt32 {
        if key.isEmpty { return 0 }
        var hash: UInt32 = 0
        let rem = key.count & 3
        var i = 0
        for _ in 0..<(key.count >> 2) {
            hash = hash &+ get16(key, i)
            let tmp = (get16(key, i + 2) << 11) ^ hash
            hash = (hash << 16) ^ tmp
            i += 4
            hash = hash &+ (hash >> 11)
        }
        switch rem {
        case 3:
            hash = hash &+ get16(key, i)
            hash ^= hash << 16
            hash ^= UInt32(bitPattern: Int32(Int8(bitPattern: key[i + 2]))) << 18  // a signed char
            hash = hash &+ (hash >> 11)
        case 2:
            hash = hash &+ get16(key, i)
            hash ^= hash << 11
            hash = hash &+ (hash >> 17)
        case 1:
            hash = hash &+ UInt32(key[i])
            hash ^= hash << 10
            hash = hash &+ (hash >> 1)
        default: break
        }
        hash ^= hash << 3
        hash = hash &+ (hash >> 5)
        hash ^= hash << 4
        hash = hash &+ (hash >> 17)
        hash ^= hash << 25
        hash = hash &+ (hash >> 6)
        return hash
    }

    @inline(__always) private static func le32(_ k: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(k[i]) | UInt32(k[i + 1]) << 8 | UInt32(k[i + 2]) << 16 | UInt32(k[i + 3]) << 24
    }

    /// MurmurHash2 with nutcracker's seed (0xdeadbeef × length).
    private static func murmur(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let m: UInt32 = 0x5bd1e995
        let length = UInt32(truncatingIfNeeded: key.count)
        var h = (0xdeadbeef &* length) ^ length
        var i = 0
        var left = key.count
        while left >= 4 {
            var k = le32(key, i)
            k = k &* m; k ^= k >> 24; k = k &* m
            h = h &* m; h ^= k
            i += 4; left -= 4
        }
        if left == 3 { h ^= UInt32(key[i + 2]) << 16 }
        if left >= 2 { h ^= UInt32(key[i + 1]) << 8 }
        if left >= 1 { h ^= UInt32(key[i]); h = h &* m }
        h ^= h >> 13
        h = h &* m
        h ^= h >> 15
        return h
    }

    @inline(__always) private static func rot(_ x: UInt32, _ k: UInt32) -> UInt32 { (x << k) | (x >> (32 - k)) }

    /// Bob Jenkins' lookup3 hashlittle, initval 13 (the aligned and unaligned paths of
    /// nutcracker's copy give the same value on little-endian machines; this is the byte path).
    private static func jenkins(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var a = 0xdeadbeef &+ UInt32(truncatingIfNeeded: key.count) &+ 13
        var b = a, c = a
        var i = 0
        var length = key.count
        while length > 12 {
            a = a &+ le32(key, i); b = b &+ le32(key, i + 4); c = c &+ le32(key, i + 8)
            a = a &- c; a ^= rot(c, 4); c = c &+ b
            b = b &- a; b ^= rot(a, 6); a = a &+ c
            c = c &- b; c ^= rot(b, 8); b = b &+ a
            a = a &- c; a ^= rot(c, 16); c = c &+ b
            b = b &- a; b ^= rot(a, 19); a = a &+ c
            c = c &- b; c ^= rot(b, 4); b = b &+ a
            length -= 12; i += 12
        }
        if length == 0 { return c }
        // The last 1...12 bytes, little-endian into a, b, c.
        for j in 0..<length {
            let v = UInt32(key[i + j]) << (UInt32(j % 4) * 8)
            switch j / 4 {
            case 0: a = a &+ v
            case 1: b = b &+ v
            default: c = c &+ v
            }
        }
        c ^= b; c = c &- rot(b, 14)
        a ^= c; a = a &- rot(c, 11)
        b ^= a; b = b &- rot(a, 25)
        c ^= b; c = c &- rot(b, 16)
        a ^= c; a = a &- rot(c, 4)
        b ^= a; b = b &- rot(a, 14)
        c ^= b; c = c &- rot(b, 24)
        return c
    }
}

/// twemproxy's `distribution: modula`: the live servers, each repeated `weight` times in
/// config order, and a key goes to slot `hash % slots` (nc_modula.c).
public struct TwemproxyModula: Sendable {
    /// Slot → server index.
    public let slots: [Int32]

    /// `weights[i]` of server i (in config order); `live[i]` false leaves it out (an ejected host).
    public init(weights: [Int], live: [Bool]? = nil) {
        var s: [Int32] = []
        for (i, w) in weights.enumerated() where live?[i] ?? true {
            for _ in 0..<max(w, 0) { s.append(Int32(i)) }
        }
        slots = s
    }

    /// The server for a key hash; nil when no server is live.
    public func lookup(_ hash: UInt32) -> Int? {
        slots.isEmpty ? nil : Int(slots[Int(hash % UInt32(slots.count))])
    }
}

/// twemproxy's `distribution: random`: any live server, uniformly, weights ignored (nc_random.c).
public struct TwemproxyRandom: Sendable {
    /// Live server indices.
    public let servers: [Int32]

    public init(count: Int, live: [Bool]? = nil) {
        servers = (0..<count).filter { live?[$0] ?? true }.map { Int32($0) }
    }

    /// A server picked with `rng`; nil when none is live.
    public func pick(_ rng: inout FastRandom) -> Int? {
        servers.isEmpty ? nil : Int(servers[rng.below(servers.count)])
    }
}
