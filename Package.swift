// swift-tools-version:6.0
import PackageDescription

/// One settings array for every Swift target: Swift 6 language mode everywhere; in release,
/// cross-module optimisation (small hot helpers in Common inline into the binaries) and no
/// dynamic exclusivity checks (they were 4% of the proxy's CPU in the request/response
/// benchmark; debug and test builds keep them, so the tests still catch violations).
let swiftSettings: [SwiftSetting] = [
    .unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "proxies",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tcp-proxy", targets: ["TcpProxy"]),
        .executable(name: "udp-proxy", targets: ["UdpProxy"]),
        .executable(name: "http-proxy", targets: ["HttpProxy"]),
        .executable(name: "redis-proxy", targets: ["RedisProxy"]),
        .executable(name: "health-checker", targets: ["HealthChecker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // System libraries (Debian -dev packages, installed by scripts/install-deps.sh).
        .systemLibrary(name: "CLibevent", pkgConfig: "libevent_pthreads", providers: [.apt(["libevent-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        // hiredis' .pc adds -D_FILE_OFFSET_BITS=64, which SwiftPM rejects: no pkgConfig here.
        .systemLibrary(name: "CHiredis", providers: [.apt(["libhiredis-dev"])]),
        // Route regexes (http-proxy): PCRE2 with JIT, compiled once per config generation.
        .systemLibrary(name: "CPcre2", pkgConfig: "libpcre2-8", providers: [.apt(["libpcre2-dev"])]),
        // What Swift cannot import (function-like macros, _GNU_SOURCE-only calls, relaxed
        // atomics on raw memory), as small prefixed C functions.
        .target(name: "CShim", dependencies: ["CLibevent", "COpenSSL", "CNghttp2", "CHiredis"]),
        .target(
            name: "Common",
            dependencies: [
                "CShim", "CLibevent", "COpenSSL", "CNghttp2", "CHiredis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "TcpProxy", dependencies: ["Common"], path: "Sources/tcp-proxy", swiftSettings: swiftSettings),
        .executableTarget(name: "UdpProxy", dependencies: ["Common"], path: "Sources/udp-proxy", swiftSettings: swiftSettings),
        .executableTarget(name: "HttpProxy", dependencies: ["Common", "CPcre2", "CNghttp2"], path: "Sources/http-proxy", swiftSettings: swiftSettings),
        // redis-proxy's protocol layer (RESP parsing, command table, reply reader) is a library so
        // the fuzz harnesses can link it; it lives under the binary's folder.
        .target(name: "RedisProtocol", dependencies: ["Common", "CHiredis"], path: "Sources/redis-proxy/Protocol", swiftSettings: swiftSettings),
        .executableTarget(name: "RedisProxy", dependencies: ["Common", "RedisProtocol"], path: "Sources/redis-proxy", exclude: ["Protocol"], swiftSettings: swiftSettings),
        .executableTarget(name: "HealthChecker", dependencies: ["Common"], path: "Sources/health-checker", swiftSettings: swiftSettings),
        // Load-balancer placement and microbenchmarks (benchmarks/RESULTS.md; not a test).
        .executableTarget(name: "lbtool", dependencies: ["Common"], path: "benchmarks/lbtool", swiftSettings: swiftSettings),
        // libFuzzer harnesses: built only by scripts/fuzz.sh (-sanitize=fuzzer -parse-as-library).
        .executableTarget(name: "FuzzListenerFilters", dependencies: ["Common"], path: "Fuzz/FuzzListenerFilters", swiftSettings: swiftSettings),
        .executableTarget(name: "FuzzConfig", dependencies: ["Common"], path: "Fuzz/FuzzConfig", swiftSettings: swiftSettings),
        .executableTarget(name: "FuzzHttp1Request", dependencies: ["Common"], path: "Fuzz/FuzzHttp1Request", swiftSettings: swiftSettings),
        .executableTarget(name: "FuzzHttp1Response", dependencies: ["Common"], path: "Fuzz/FuzzHttp1Response", swiftSettings: swiftSettings),
        .executableTarget(name: "FuzzRespRequest", dependencies: ["Common", "RedisProtocol"], path: "Fuzz/FuzzRespRequest", swiftSettings: swiftSettings),
        .executableTarget(name: "FuzzRespReply", dependencies: ["Common", "RedisProtocol"], path: "Fuzz/FuzzRespReply", swiftSettings: swiftSettings),
        .testTarget(name: "CommonTests", dependencies: ["Common", "TcpProxy", "HttpProxy", "RedisProxy", "RedisProtocol"], swiftSettings: swiftSettings),
    ]
)
