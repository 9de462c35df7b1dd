import CLibevent
import CShim
import Glibc
import Logging

/// Small file helpers (config, ready file), off the data path.
public func readFile(_ path: String) -> String? {
    readFileBytes(path).map { String(decoding: $0, as: UTF8.self) }
}

/// A file's bytes (at most 64 MiB; nil when it cannot be read or is larger).
public func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { break }
        bytes += chunk[0..<n]
        if bytes.count > 64 << 20 { return nil }
    }
    return bytes
}

/// Replaces the file at `path` with `text` (main thread, off the data path): the ready file,
/// `endpoints_out`. The bytes go to a fresh temp file in the same directory, created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name (a new name on a clash), which is then
/// renamed over `path`. So a reader sees the old file or the new one, never half of one, and
/// a symlink another local user planted at a predictable name (`path.tmp`) is never written
/// through. A symlink at `path` itself is replaced, not followed. On failure the temp file is
/// removed and `path` is unchanged. No fsync: after a power loss the file may be the old one.
public func writeFile(_ path: String, _ text: String) -> Bool {
    let slash = path.lastIndex(of: "/")
    let dir = slash.map { String(path[...$0]) } ?? ""
    let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
    var tmp = ""
    var fd: Int32 = -1
    for _ in 0..<16 {
        tmp = dir + "." + base + ".tmp-" + String(UInt64.random(in: 0 ... .max), radix: 36)
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        if fd >= 0 || errno != EEXIST { break }
    }
    guard fd >= 0 else { return false }
    var ok = true
    var t = text
    t.withUTF8 { p in
        var off = 0
        while off < p.count {
            let n = write(fd, p.baseAddress! + off, p.count - off)
            if n <= 0 { if n < 0 && errno == EINTR { continue }; ok = false; return }
            off += n
        }
    }
    if close(fd) != 0 { ok = false }
    if ok && rename(tmp, path) == 0 { return true }
    _ = unlink(tmp)
    return false
}

/// stdout/stderr writes without Foundation.
public enum FileHandleOut {
    public static func stdout(_ s: String) { var t = s; t.withUTF8 { _ = write(1, $0.baseAddress, $0.count) } }
    public static func stderr(_ s: String) { var t = s; t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }
}
