import Foundation
import Testing
@testable import Common
@testable import RedisProtocol

/// The fixture written by Tests/Fixtures/redis/gen_twemproxy_vectors.py from a running
/// nutcracker 0.5.0: per key, the server nutcracker chose in each run.
private struct Placement {
    var runs: [(distribution: String, hash: String, weights: [Int])] = []
    var keys: [([UInt8], [Int])] = []

    init() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../Fixtures/redis/twemproxy_placement.txt").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var weightSets: [String: [Int]] = [:]
        var runNames: [String] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: " ").map(String.init)
            switch f[0] {
            case "runs": runNames = Array(f.dropFirst())
            case "weights": weightSets[f[1]] = f[2].split(separator: ",").compactMap { Int($0) }
            default:
                var key: [UInt8] = []
                var hex = f[0][...]
                while hex.count >= 2 { key.append(UInt8(hex.prefix(2), radix: 16) ?? 0); hex = hex.dropFirst(2) }
                keys.append((key, f.dropFirst().compactMap { Int($0) }))
            }
        }
        runs = runNames.map { name in
            let p = name.split(separator: "/").map(String.init)
            return (p[0], p[1], weightSets[p[2]] ?? [])
        }
    }
}

@Test func everyTwemproxyHashPlacesKeysAsNutcrackerDoes() throws {
    let fixture = try Placement()
    #expect(fixture.runs.count == 48 && fixture.keys.count >= 290)
    let tag = try #require(HashTag("{}"))
    for (r, run) in fixture.runs.enumerated() {
        let hash = try #require(TwemproxyHash(rawValue: run.hash), "\(run.hash)")
        let pick: (UInt32) -> Int?
        switch run.distribution {
        case "modula":
            let m = TwemproxyModula(weights: run.weights)
            pick = { m.lookup($0) }
        default:
            let hosts = try run.weights.enumerated().map { i, w in
                Host(address: try SocketAddress.parse("127.0.0.1:\(7000 + i)"), weight: w, hashKey: "s\(i)",
                     healthy: true, stats: HostStats(threads: 1))
            }
            let ring = KetamaRing(hosts: hosts)
            pick = { ring.lookup($0) }
        }
        var wrong = 0
        for (key, expected) in fixture.keys {
            let got = key.withUnsafeBytes { pick(hash.poolHash(tag.hashedPart(of: $0))) }
            if got != expected[r] { wrong += 1 }
        }
        #expect(wrong == 0, "\(run.distribution)/\(run.hash)/\(run.weights): \(wrong) of \(fixture.keys.count) keys elsewhere")
    }
}

@Test func twemproxyHashesOfKnownStrings() {
    // Standard values where the function is a standard one (CRC-32 check value, FNV test vectors).
    func h(_ f: TwemproxyHash, _ s: String) -> UInt32 { Array(s.utf8).withUnsafeBytes { f.hash($0) } }
    #expect(h(.crc32a, "123456789") == 0xCBF4_3926)
    #expect(h(.crc16, "1") == 0x2672)  // CRC-16/XMODEM of one byte (the register grows past 16 bits after that)
    #expect(h(.fnv1a_32, "a") == 0xe40c_292c)
    #expect(h(.fnv1_32, "a") == 0x050c_5d7e)
    #expect(h(.md5, "") == 0xd98c_1dd4)  // d41d8cd9... read little-endian
    #expect(twemproxyFnv1a64(Array("a".utf8)) == h(.fnv1a_64, "a"))
    #expect(Array<UInt8>().withUnsafeBytes { TwemproxyHash.fnv1a_64.poolHash($0) } == 0)
}

@Test func modulaSkipsDeadServersAndRandomIgnoresWeights() {
    let m = TwemproxyModula(weights: [1, 2, 1], live: [true, false, true])
    #expect(m.slots == [0, 2])
    #expect(TwemproxyModula(weights: [1, 1], live: [false, false]).lookup(7) == nil)
    let r = TwemproxyRandom(count: 3, live: [false, true, true])
    var rng = FastRandom(seed: 1)
    var seen = Set<Int>()
    for _ in 0..<100 { if let i = r.pick(&rng) { seen.insert(i) } }
    #expect(seen == [1, 2])
}
