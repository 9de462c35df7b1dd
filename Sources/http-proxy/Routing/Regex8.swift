import CPcre2
import Glibc

/// A PCRE2 pattern compiled once (config time, main thread) with JIT, matched on raw bytes by
/// any worker. Byte semantics (no UTF mode): header and path bytes are matched as they came,
/// and a peer's invalid UTF-8 can never trip the JIT, which does no UTF checks.
///
/// Matching uses one small match data block per thread (a pthread key, created on a thread's
/// first match, freed when the thread ends): no allocation per match. The compiled code and
/// the match context are read-only after `init`, which PCRE2 allows to share across threads.
final class Regex8: @unchecked Sendable {  // C boundary: PCRE2 code and match context are read-only after init; match data is per thread
    /// Longest pattern accepted (config text is untrusted too).
    static let maxPatternLength = 4096
    /// PCRE2's match limit (backtracking steps, also honoured by the JIT): a pathological
    /// pattern fails to match instead of spinning a worker.
    static let matchLimit: UInt32 = 100_000

    let pattern: String
    /// Anchored at both ends (Envoy's `safe_regex`: the whole value must match).
    let fullMatch: Bool
    private let code: OpaquePointer
    private let context: OpaquePointer
    /// Capturing groups in the pattern (`\N` in a substitution must not exceed it).
    let captureCount: Int

    struct CompileError: Error, CustomStringConvertible { let description: String }

    /// Compiles `pattern`; `fullMatch` anchors it at both ends (`safe_regex` matching), false
    /// finds matches anywhere (`regex_rewrite`).
    init(_ pattern: String, fullMatch: Bool) throws(CompileError) {
        guard pattern.utf8.count <= Regex8.maxPatternLength else {
            throw CompileError(description: "pattern longer than \(Regex8.maxPatternLength) bytes")
        }
        self.pattern = pattern
        self.fullMatch = fullMatch
        var err: Int32 = 0
        var offset = 0
        let options: UInt32 = fullMatch ? (PCRE2_ANCHORED | PCRE2_ENDANCHORED) : 0
        let compiled = pattern.utf8CString.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: UInt8.self) { u in
                pcre2_compile_8(u.baseAddress, pattern.utf8.count, options, &err, &offset, nil)
            }
        }
        guard let compiled else {
            throw CompileError(description: "\(Regex8.message(err)) at offset \(offset)")
        }
        // JIT failure (an unsupported platform) is not an error: the interpreter still matches.
        _ = pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE)
        guard let ctx = pcre2_match_context_create_8(nil) else {
            pcre2_code_free_8(compiled)
            throw CompileError(description: "out of memory")
        }
        pcre2_set_match_limit_8(ctx, Regex8.matchLimit)
        pcre2_set_depth_limit_8(ctx, Regex8.matchLimit)
        var captures: UInt32 = 0
        pcre2_pattern_info_8(compiled, UInt32(PCRE2_INFO_CAPTURECOUNT), &captures)
        code = compiled
        context = ctx
        captureCount = Int(captures)
    }

    deinit {
        pcre2_code_free_8(code)
        pcre2_match_context_free_8(context)
    }

    /// Whether `subject` matches (the whole of it when `fullMatch`). A match that hits the
    /// match limit counts as no match.
    func matches(_ subject: UnsafeRawBufferPointer) -> Bool {
        // A zero-length buffer may have no base address; PCRE2 wants a pointer anyway.
        let base = subject.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? Regex8.emptySubject
        return pcre2_match_8(code, base, subject.count, 0, 0, Regex8.threadMatchData(), context) >= 0
    }

    /// Whether `s` matches (tests and config-time checks).
    func matches(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { matches(UnsafeRawBufferPointer($0)) }
    }

    /// Every match in `subject` replaced by `substitution` in PCRE2 syntax (`$1`, `$$`; see
    /// `pcreSubstitution(envoy:)`). Nil when matching failed (the match limit). Allocates: only
    /// for routes with `regex_rewrite`, whose result is a new path anyway.
    func replaceAll(in subject: UnsafeRawBufferPointer, with substitution: [UInt8]) -> [UInt8]? {
        let base = subject.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? Regex8.emptySubject
        var capacity = subject.count + substitution.count * 4 + 64
        let options = PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH
        for _ in 0..<2 {
            var out = [UInt8](repeating: 0, count: capacity)
            var outLength = capacity
            let rc = substitution.withUnsafeBufferPointer { sub in
                out.withUnsafeMutableBufferPointer { o in
                    pcre2_substitute_8(code, base, subject.count, 0, options, nil, context,
                                       sub.baseAddress ?? Regex8.emptySubject, sub.count, o.baseAddress, &outLength)
                }
            }
            if rc >= 0 { out.removeSubrange(outLength...); return out }
            if rc == PCRE2_ERROR_NOMEMORY { capacity = outLength + 1; continue }
            return nil
        }
        return nil
    }

    /// Envoy's (RE2's) substitution syntax, `\1` for a group and `\\` for a backslash, as
    /// PCRE2's (`$1`, with `$` itself doubled). Nil for a group beyond `captureCount` or a
    /// dangling backslash.
    func pcreSubstitution(envoy: String) -> [UInt8]? {
        var out: [UInt8] = []
        let b = Array(envoy.utf8)
        var i = 0
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "$") { out += [c, c]; i += 1; continue }
            guard c == UInt8(ascii: "\\") else { out.append(c); i += 1; continue }
            guard i + 1 < b.count else { return nil }
            let n = b[i + 1]
            if n == UInt8(ascii: "\\") { out.append(n); i += 2; continue }
            guard n >= UInt8(ascii: "0") && n <= UInt8(ascii: "9"), Int(n - UInt8(ascii: "0")) <= captureCount else { return nil }
            out += Array("${\(n - UInt8(ascii: "0"))}".utf8)
            i += 2
        }
        return out
    }

    /// A valid pointer for an empty subject: a static literal (never written, Sendable).
    private static let emptyLiteral: StaticString = ""
    private static var emptySubject: UnsafePointer<UInt8> { emptyLiteral.utf8Start }

    /// One match data block per thread (one ovector pair: a match only needs to be found).
    private static let matchDataKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { p in
            if let p { pcre2_match_data_free_8(OpaquePointer(p)) }
        }
        return key
    }()

    private static func threadMatchData() -> OpaquePointer {
        if let p = pthread_getspecific(matchDataKey) { return OpaquePointer(p) }
        guard let md = pcre2_match_data_create_8(1, nil) else { preconditionFailure("out of memory") }
        pthread_setspecific(matchDataKey, UnsafeRawPointer(md))
        return md
    }

    private static func message(_ code: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = pcre2_get_error_message_8(code, &buf, buf.count)
        return n > 0 ? String(decoding: buf[0..<Int(n)], as: UTF8.self) : "error \(code)"
    }
}
